"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): the browser's side of the
trust model, tried as the attackers would — real signaling, a real persistence peer, four
users in four headless Chromium contexts running the real web client, and one raw /signal
client. Each attacker uses what a modified client can do from the page (``window.codesync``):
write into its own document and push the bytes down its data channels itself, set any awareness
state, craft type-102 messages. Every step also checks that legitimate use still works.

Alice owns the room; Bob and Dave are editors, Carol a viewer, Erin an editor without a browser
(she squats a peer id over a raw socket). Prints one RESULT line: ``{"steps": {...}}``.
Config: ``workdir``; optional ``web_dist`` (serve another build of the client, e.g. main's, to
show the steps fail there).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.browser.web_e2e import Steps, doc_text, type_into_editor  # noqa: E402
from tests.helpers.stack import Stack  # noqa: E402
from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

PASSWORD = "correct horse battery"
T = 30_000  # ms, Playwright waits
# After a barrier has proved that the attacker's message was processed, the page's views render
# within tens of milliseconds (run panel debounce 30 ms, status line 100 ms): a forged item that
# was accepted would show within this window.
RENDER_WINDOW_S = 1.5
USERS = ("alice", "bob", "carol", "dave", "erin")

# What a modified client does: change its own document and send the update down every open link
# itself (a CodeSync client that is read-only would not send it).
FORCE_WRITE = """(marker) => {
  const cs = window.codesync
  const varUint = (n) => { const out = []; while (n > 127) { out.push(128 | (n & 127)); n = Math.floor(n / 128) } out.push(n); return out }
  let update = null
  const grab = (u) => { update = u }
  cs.doc.on('update', grab)
  cs.doc.getText('source').insert(0, marker)
  cs.doc.off('update', grab)
  const msg = new Uint8Array([0, 2, ...varUint(update.length), ...update])
  let sent = 0
  cs.provider.conns.forEach(c => { if (c.connected) { c.send(msg); sent++ } })
  return sent
}"""

# A forged finished run: in the named document `runs` over type 102, and (the v1 way) in the main
# document's `runs` map.
FORGE_RUN = """() => {
  const cs = window.codesync
  const varUint = (n) => { const out = []; while (n > 127) { out.push(128 | (n & 127)); n = Math.floor(n / 128) } out.push(n); return out }
  const fill = (d, map, id) => {
    const YMap = d.getMap('__m').constructor
    const YText = d.getText('__t').constructor
    const run = new YMap()
    map.set(id, run)
    run.set('status', 'finished'); run.set('language', 'python'); run.set('exit_code', 0)
    run.set('requested_by_name', 'Alice'); run.set('requested_at', Date.now() + 60000)
    run.set('started_at', Date.now()); run.set('finished_at', Date.now() + 5)
    const out = new YText(); run.set('output', out); out.insert(0, 'FORGED OUTPUT')
  }
  const named = new cs.doc.constructor()
  let update = null
  named.on('update', (u) => { update = u })
  named.transact(() => fill(named, named.getMap('runs'), 'forged-run'))
  const name = Array.from(new TextEncoder().encode('runs'))
  const msg = new Uint8Array([102, ...varUint(name.length), ...name, 2, ...varUint(update.length), ...update])
  let sent = 0
  cs.provider.conns.forEach(c => { if (c.connected) { c.send(msg); sent++ } })
  cs.doc.transact(() => fill(cs.doc, cs.doc.getMap('runs'), 'forged-v1'))
  return sent
}"""

LINKED = """(ids) => ids.every(id => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id === id))"""
NOT_LINKED = """(id) => !window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id === id)"""
HAS_TEXT = "(t) => window.codesync.doc.getText('source').toString().includes(t)"
PROBE = "(n) => Array.from(window.codesync.awareness.getStates().entries()).some(([id, s]) => id !== window.codesync.doc.clientID && s && s.probe === n)"


async def open_as(browser, url: str, tokens: dict, route: str):
    ctx = await browser.new_context()
    session = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "user": tokens["user"]}
    await ctx.add_init_script(
        f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({json.dumps(session)}))"
    )
    page = await ctx.new_page()
    page.set_default_timeout(T)
    await page.goto(f"{url}/{route}")
    await page.wait_for_selector(".cm-content")
    return ctx, page


async def wait_js(page, expr: str, arg=None, timeout: int = T):
    return await page.wait_for_function(expr, arg=arg, timeout=timeout)


async def never(page, expr: str, arg=None, seconds: float = RENDER_WINDOW_S) -> bool:
    """True when ``expr`` stayed false for ``seconds`` (a negative check after a barrier)."""
    try:
        await page.wait_for_function(expr, arg=arg, timeout=int(seconds * 1000))
        return False
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError: it never became true
        return True


async def probe(sender, n: int, *receivers) -> None:
    """Barrier: ``sender`` sets an awareness field; returns when every receiver holds it. Data
    channels are ordered, so each receiver has then processed everything sent before it."""
    await sender.evaluate("(n) => window.codesync.awareness.setLocalStateField('probe', n)", n)
    for r in receivers:
        await wait_js(r, PROBE, n)


async def typed_barrier(sender, text: str, *receivers) -> None:
    """Barrier through the document: ``sender`` (a writer) types ``text``; every receiver gets it."""
    await type_into_editor(sender, text, delay=5)
    for r in receivers:
        await wait_js(r, HAS_TEXT, text)


async def stored_text(stack: Stack, room_id: str) -> str:
    """The room's text as the persistence peer stored it in the database."""
    from pycrdt import Doc, Text

    from peer.persistence.store import DocumentStore

    store = await DocumentStore.open(stack.settings())
    try:
        loaded = await store.load(room_id)
    finally:
        await store.close()
    doc = Doc()
    doc.apply_update(loaded.update)
    return str(doc.get("source", type=Text))


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    extra = {"CODESYNC_WEB_DIST": cfg["web_dist"]} if cfg.get("web_dist") else {}
    stack = namespace_stack(Path(cfg["workdir"]), extra_env=extra)
    steps = Steps()
    state: dict = {"logs": []}
    attacker_ws = None
    try:
        await stack.start_signaling()
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in USERS:
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            owner = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "trust", "language": "python"}, headers=owner)).json()
            for name, role in (("bob", "editor"), ("carol", "viewer"), ("dave", "editor"), ("erin", "editor")):
                inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": role}, headers=owner)).json()
                r = await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users[name]['access_token']}"})
                r.raise_for_status()
        ids = {n: users[n]["user"]["id"] for n in USERS}
        room_id = room["id"]
        route = f"#/room/{room_id}"

        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            pages: dict = {}
            ctxs: dict = {}

            async def setup():
                for name in ("alice", "bob", "carol", "dave"):
                    ctxs[name], pages[name] = await open_as(browser, stack.url, users[name], route)
                    pages[name].on("console", lambda m, n=name: state["logs"].append(f"{n}: {m.type}: {m.text}") if m.type in ("error", "warning") else None)
                    pages[name].on("pageerror", lambda e, n=name: state["logs"].append(f"{n}: pageerror: {e}"))
                for name, page in pages.items():
                    await wait_js(page, LINKED, [ids[o] for o in pages if o != name])
                a, b = pages["alice"], pages["bob"]
                await typed_barrier(a, "# alice starts\n", b, pages["carol"], pages["dave"])
                await typed_barrier(b, "# bob joins in\n", a, pages["carol"], pages["dave"])
                return {}

            await steps.run("setup", setup)

            # ---------------------------------------------------------------- awareness forgeries
            async def spoofed_name():
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                await a.wait_for_selector(".cm-ySelectionInfo >> text=Bob")
                bob_client = await b.evaluate("() => window.codesync.doc.clientID")
                # Bob claims another name, then (separately) to be Alice.
                await b.evaluate("() => { const a = window.codesync.awareness; a.setLocalStateField('user', {...a.getLocalState().user, name: 'Mallory the Owner'}) }")
                await typed_barrier(b, "# after the name\n", a, c)
                seen = await a.evaluate("(id) => (window.codesync.awareness.getStates().get(id) || {}).user", bob_client)
                labels = await a.evaluate("() => Array.from(document.querySelectorAll('.cm-ySelectionInfo')).map(e => e.textContent)")
                await b.evaluate(f"() => {{ const a = window.codesync.awareness; a.setLocalStateField('user', {{...a.getLocalState().user, id: {json.dumps(ids['alice'])}, name: 'Alice'}}) }}")
                await typed_barrier(b, "# after the id\n", a, c)
                claimed = await a.evaluate(
                    "([own, alice]) => Array.from(window.codesync.awareness.getStates().entries()).filter(([id, s]) => id !== own && s && s.user && s.user.id === alice).length",
                    [await a.evaluate("() => window.codesync.doc.clientID"), ids["alice"]],
                )
                # Bob honest again (his real id and name): legitimate awareness still arrives.
                await b.evaluate(f"() => {{ const a = window.codesync.awareness; a.setLocalStateField('user', {{...a.getLocalState().user, id: {json.dumps(ids['bob'])}, name: 'Bob'}}) }}")
                await probe(b, 1, a, c)
                assert seen and seen.get("name") == "Bob", seen
                assert not any("Mallory" in t for t in labels) and any("Bob" in t for t in labels), labels
                assert claimed == 0, f"{claimed} foreign awareness states claim Alice's user id"
                return {"bob_seen_as": seen, "labels": labels}

            await steps.run("spoofed_name_shows_stamped_name", spoofed_name, ("setup",))

            async def forged_saved():
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                before = {n: await p.inner_text("[data-testid=status-saved]") for n, p in (("alice", a), ("carol", c))}
                assert all(v != "saved" for v in before.values()), before  # no persistence peer yet
                await b.evaluate("""() => { const a = window.codesync.awareness
                    a.setLocalStateField('service', 'persistence'); a.setLocalStateField('saved', {status: 'saved', seq: 1, pending: 0}) }""")
                await typed_barrier(b, "# forged saved status sent\n", a, c)
                shown = {n: not await never(p, "() => document.querySelector('[data-testid=status-saved]').textContent === 'saved'") for n, p in (("alice", a), ("carol", c))}
                held = await a.evaluate("() => Array.from(window.codesync.awareness.getStates().values()).filter(s => s && (s.saved || s.service)).length")
                # Bob stops pretending; his ordinary state is accepted again.
                await b.evaluate("() => { const a = window.codesync.awareness; const s = {...a.getLocalState()}; delete s.saved; delete s.service; a.setLocalState(s) }")
                await probe(b, 2, a, c)
                assert not any(shown.values()), f"forged 'saved' shown: {shown}"
                assert held == 0, f"{held} awareness states with saved/service held by Alice"
                return {"before": before, "shown": shown}

            await steps.run("forged_saved_status_not_shown", forged_saved, ("setup",))

            # ---------------------------------------------------------------- persistence peer
            async def persistence_saves():
                await stack.start_service("persist", "persistence")
                for p in (pages["alice"], pages["carol"]):
                    await p.wait_for_selector("[data-testid=status-saved].ok", timeout=45_000)
                return {"status": await pages["alice"].inner_text("[data-testid=status-saved]")}

            await steps.run("persistence_saved_status_shown", persistence_saves, ("setup",))

            # ---------------------------------------------------------------- viewer writes
            async def viewer_write():
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                # Everything Bob sends to Alice is recorded: a relay of Carol's text would show there.
                await b.evaluate("""(alice) => { window.leaked = 0
                    for (const conn of window.codesync.provider.conns.values()) {
                      if (!conn.sender || conn.sender.user_id !== alice) continue
                      const send = conn.send.bind(conn)
                      conn.send = (m) => { if (new TextDecoder().decode(m).includes('VIEWER-PLANTED')) window.leaked++; return send(m) }
                    } }""", ids["alice"])
                sent = await c.evaluate(FORCE_WRITE, "VIEWER-PLANTED\n")
                await probe(c, 3, a, b)  # Alice and Bob have processed Carol's update message
                await typed_barrier(b, "# bob writes after the viewer\n", a, c)  # anything Bob relayed came before
                text_a, text_b = await doc_text(a), await doc_text(b)
                leaked = await b.evaluate("() => window.leaked")
                dropped = await b.evaluate("() => window.codesync.provider.stats && window.codesync.provider.stats.droppedUpdates")
                assert "VIEWER-PLANTED" not in text_a, "the owner's browser has the viewer's text"
                assert "VIEWER-PLANTED" not in text_b, "the editor's browser applied the viewer's text"
                assert leaked == 0, f"the editor relayed the viewer's text {leaked} times"
                # Stored: wait until the persistence peer has everything Alice has, then read the database.
                await a.wait_for_selector("[data-testid=status-saved].ok", timeout=45_000)
                stored = await stored_text(stack, room_id)
                assert "# bob writes after the viewer" in stored, stored
                assert "VIEWER-PLANTED" not in stored, "the viewer's text was stored"
                assert dropped and dropped >= 1, dropped
                return {"links_written_to": sent, "bob_dropped": dropped}

            await steps.run("viewer_write_not_applied_relayed_or_stored", viewer_write, ("persistence_saved_status_shown",))

            # ---------------------------------------------------------------- forged run
            async def forged_run():
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                sent = await b.evaluate(FORGE_RUN)
                await typed_barrier(b, "# forged run sent\n", a, c)
                shown = {}
                for n, p in (("alice", a), ("carol", c)):
                    shown[n] = not await never(p, """() => ['output', 'recent-runs', 'run-status'].some(t =>
                        (document.querySelector(`[data-testid=${t}]`) || {}).textContent.includes('FORGED') ||
                        (document.querySelector(`[data-testid=${t}]`) || {}).textContent.includes('finished'))""")
                in_docs = await a.evaluate("() => !!(window.codesync.runsDoc && window.codesync.runsDoc.getMap('runs').size)")
                assert not any(shown.values()), f"forged run shown: {shown}"
                assert not in_docs, "Alice's runs document holds a run nobody ran"
                return {"links_written_to": sent}

            await steps.run("forged_run_not_shown", forged_run, ("setup",))

            # ---------------------------------------------------------------- removal
            async def removal():
                a, b, c, d = pages["alice"], pages["bob"], pages["carol"], pages["dave"]
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    r = await http.delete(f"/api/rooms/{room_id}/members/{ids['dave']}", headers=owner)
                    r.raise_for_status()
                gone = "(id) => !window.codesync.provider.presence.some(p => p.user_id === id)"
                for p in (a, b, c):
                    await wait_js(p, gone, ids["dave"])
                await d.wait_for_selector("[data-testid=conn-message] >> text=don't have access")
                await typed_barrier(a, "# alice after the removal\n", b, c)
                text_d = await doc_text(d)
                dave_links = {n: await p.evaluate(NOT_LINKED, ids["dave"]) for n, p in (("alice", a), ("bob", b), ("carol", c))}
                assert "# alice after the removal" not in text_d, "the removed member still receives edits"
                assert all(dave_links.values()), f"links to the removed member still open: {dave_links}"
                assert await d.evaluate("() => window.codesync.provider.connectedPeers().length") == 0
                return {}

            await steps.run("removed_member_cut_off", removal, ("setup",))

            # ---------------------------------------------------------------- demotion
            async def demotion():
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    r = await http.put(f"/api/rooms/{room_id}/members/{ids['bob']}", json={"role": "viewer"}, headers=owner)
                    r.raise_for_status()
                seen = "(id) => window.codesync.provider.presence.some(p => p.user_id === id && p.role === 'viewer')"
                for p in (a, b, c):
                    await wait_js(p, seen, ids["bob"])
                await b.wait_for_selector(".cm-content[contenteditable=false]")
                await b.wait_for_selector("[data-testid=run]", state="detached")
                role_tag = await b.inner_text("[data-testid=my-role]")
                # Bob and Carol are both viewers now: their link closes (docs/protocol.md "Room
                # topology"), so Bob's write can reach Carol only through a writer that took it.
                unlinked = "(uid) => !window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id === uid)"
                await wait_js(b, unlinked, ids["carol"])
                await wait_js(c, unlinked, ids["bob"])
                sent = await b.evaluate(FORCE_WRITE, "DEMOTED-WRITE\n")
                await probe(b, 4, a)
                await typed_barrier(a, "# alice after the demotion\n", b, c)  # Bob still reads
                text_a, text_c = await doc_text(a), await doc_text(c)
                assert "DEMOTED-WRITE" not in text_a and "DEMOTED-WRITE" not in text_c, "the demoted editor's write arrived"
                assert "viewer" in role_tag, role_tag
                # The persistence peer follows presence too: the demoted write is never stored.
                await a.wait_for_selector("[data-testid=status-saved].ok", timeout=45_000)
                stored = await stored_text(stack, room_id)
                assert "# alice after the demotion" in stored, "the legitimate edit was not stored"
                assert "DEMOTED-WRITE" not in stored, "the demoted editor's write was stored"
                return {"role_tag": role_tag, "links_written_to": sent}

            await steps.run("demoted_editor_read_only_at_once", demotion, ("setup",))

            # ---------------------------------------------------------------- peer-id squatting
            async def squatting():
                nonlocal attacker_ws
                a, b, c = pages["alice"], pages["bob"], pages["carol"]
                # Bob an editor again (the demotion step made him a viewer like Carol, and two
                # viewers do not link): the pages below must reach Carol through him too.
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    r = await http.put(f"/api/rooms/{room_id}/members/{ids['bob']}", json={"role": "editor"}, headers=owner)
                    r.raise_for_status()
                for p in (a, b, c):
                    await wait_js(p, "(id) => window.codesync.provider.presence.some(p => p.user_id === id && p.role === 'editor')", ids["bob"])
                victim = await c.evaluate("() => window.codesync.provider.peerId")
                cut = {"on": True}

                async def signal_route(ws):
                    if cut["on"]:
                        await ws.close(code=1001, reason="test: network cut")
                    else:
                        ws.connect_to_server()

                await ctxs["carol"].route_web_socket("**/signal*", signal_route)
                await c.evaluate("() => window.codesync.provider.ws && window.codesync.provider.ws.close()")
                await wait_js(a, "(id) => !window.codesync.provider.presence.some(p => p.user_id === id && p.peer_ids.length)", ids["carol"])
                # Erin, another member, takes Carol's peer id on her own socket and offers under it.
                session = aiohttp.ClientSession()
                state["session"] = session
                attacker_ws = await session.ws_connect(f"ws://{stack.url.split('://')[1]}/signal?token={users['erin']['access_token']}")
                await attacker_ws.send_json({"type": "subscribe", "topics": [room_id]})
                caps = ["chunk", "app", "docs", "roles"]
                await attacker_ws.send_json({"type": "publish", "topic": room_id, "data": {"type": "announce", "from": victim, "caps": caps}})
                outcome = None
                deadline = time.monotonic() + 20
                while outcome is None and time.monotonic() < deadline:
                    msg = await attacker_ws.receive_json(timeout=20)
                    if msg.get("type") == "error" and msg.get("code") == "peer_id_taken":
                        outcome = "refused"
                    elif msg.get("type") == "publish" and (msg.get("data") or {}).get("from") == victim:
                        outcome = "claimed"
                alice_peer = await a.evaluate("() => window.codesync.provider.peerId")
                await attacker_ws.send_json({"type": "publish", "topic": room_id, "data": {
                    "type": "signal", "from": victim, "to": alice_peer, "token": 1e15, "caps": caps,
                    "signal": {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 10.99.0.1\r\ns=-\r\nt=0 0\r\n"}}})
                # Carol's network comes back.
                cut["on"] = False
                await c.evaluate("() => window.codesync.provider.reconnect()")
                await c.wait_for_selector("[data-testid=status-signaling].ok")
                listed = "([uid, pid]) => window.codesync.provider.presence.some(p => p.user_id === uid && p.peer_ids.includes(pid))"
                await wait_js(a, "(uid) => window.codesync.provider.presence.some(p => p.user_id === uid && p.peer_ids.length)", ids["carol"])
                now = await c.evaluate("() => window.codesync.provider.peerId")
                await wait_js(a, listed, [ids["carol"], now])
                await wait_js(c, LINKED, [ids["alice"], ids["bob"]])
                # A page opened after the squat reaches Carol too, and edits flow.
                await b.reload()
                await b.wait_for_selector(".cm-content")
                await wait_js(b, LINKED, [ids["carol"]])
                await typed_barrier(a, "# alice after the squat\n", c, b)
                # When the squat worked (a server without peer-id reservations), Carol moved to a fresh
                # id and nothing under the squatted one still passes for her. When the server refused
                # it, Carol took her own id back.
                stale = await a.evaluate("([pid, carol]) => Array.from(window.codesync.provider.conns.values()).filter(x => x.remotePeerId === pid && x.connected && x.sender && x.sender.user_id === carol).length", [victim, ids["carol"]])
                if outcome == "claimed":
                    assert now != victim, "the victim kept a peer id another user holds"
                    assert stale == 0, f"{stale} links under the squatted id still attributed to Carol"
                return {"attacker": outcome, "victim_old_id": victim, "victim_id_now": now, "stale_links_as_carol": stale}

            await steps.run("peer_id_squatting_does_not_strand_victim", squatting, ("setup",))
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        steps.results["driver"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    finally:
        if attacker_ws is not None:
            await attacker_ws.close()
        if state.get("session"):
            await state["session"].close()
        stack.stop()
        emit_result({
            "steps": steps.results, "console": state["logs"][-80:],
            "logs": {n: p.tail(3000) for n, p in stack.procs.items()},
        })


if __name__ == "__main__":
    asyncio.run(main())
