"""Driver (INSIDE a private network namespace, see tests/netns.py): the browser's mesh rules for
big rooms (docs/protocol.md "Mesh", web/src/topology.js) between real browsers — real
signaling, four users in four headless Chromium contexts running the real web client, later the
real persistence peer and one raw /signal client.

Part 1, a full mesh of four browsers (no service peers; Carol is a viewer): each keystroke
reaches every other browser exactly once and nobody forwards; one update dropped on its way to
one browser is repaired by anti-entropy alone; the viewer's malformed, oversized and flooding
links messages (type 103) are dropped without harm. Part 2, four fresh browsers limited to two links each
(localStorage ``codesync.maxConns``) with the persistence peer (service links do not count):
the limit holds, a full browser refuses a mesh peer's offer explicitly and the refused browser
frees its slot at once and backs off, a pending link to a peer that never answers is closed after
10 s, and the room converges although not every pair is linked. Part 3, a room where Bob and
Carol are viewers: the two viewers do not link (nor count each other as missing) yet both get
Alice's edits and Carol's cursor does not reach Bob; promoting Bob links them, demoting him again
closes their link.

Prints one RESULT line: ``{"steps": {...}, "console": [...], "logs": {...}}``. Config:
``workdir``; optional ``web_dist`` (serve another build of the client, e.g. main's, to show the
steps fail there).
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
from tests.helpers.netns import emit_result, launch_chromium, namespace_stack, read_config, setup_interfaces  # noqa: E402

PASSWORD = "correct horse battery"
T = 30_000  # ms, Playwright waits
USERS = ("alice", "bob", "carol", "dave", "erin")
BROWSERS = ("alice", "bob", "carol", "dave")
WRITERS = ("alice", "bob", "dave")  # Carol is a viewer in the full-mesh room
CAPS = ["chunk", "app", "docs", "roles", "mesh"]
# Anti-entropy rounds run every 5 s ± 20 % after a change: a repair is due within 6 s, plus the page's own latency.
REPAIR_BOUND_S = 8.0

HAS_TEXT = "(t) => window.codesync.doc.getText('source').toString().includes(t)"
STATS = "() => ({...window.codesync.provider.stats})"
# A full mesh of n others, and every link has told us its own links (n each).
MESHED = """(n) => { const open = window.codesync.provider.connectedPeers().filter(c => !c.service)
  return open.length === n && open.every(c => c.links && c.links.size === n) }"""
PER_LINK = """() => window.codesync.provider.connectedPeers().map(c => ({
  user: c.sender && c.sender.user_id, service: c.sender && c.sender.service, updates: c.received.updates,
  duplicates: c.received.duplicates, links: c.links ? c.links.size : null }))"""
PEOPLE_LINKS = "() => window.codesync.provider.connectedPeers().filter(c => !c.service).map(c => c.sender && c.sender.user_id)"
SLOTS = "() => window.codesync.provider.slotsUsed()"
PEER_ID = "() => window.codesync.provider.peerId"


async def open_page(browser, url: str, tokens: dict, route: str, max_conns: int | None = None):
    ctx = await browser.new_context()
    session = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "user": tokens["user"]}
    # The session as the client stores it, valid for 10 minutes: no refresh (which rotates the
    # refresh token these contexts share) while the driver runs.
    script = f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({{...{json.dumps(session)}, expires_at: Date.now() + 600000}}));"
    if max_conns is not None:
        script += f"localStorage.setItem('codesync.maxConns', '{max_conns}');"
    await ctx.add_init_script(script)
    page = await ctx.new_page()
    page.set_default_timeout(T)
    await page.goto(f"{url}/{route}")
    try:
        await page.wait_for_selector(".cm-content")
    except Exception as exc:  # noqa: BLE001 - say what the page shows instead
        raise AssertionError(f"no editor for {tokens['user'].get('email')}: {(await page.inner_text('body'))[:500]!r}") from exc
    return ctx, page


async def wait_js(page, expr: str, arg=None, timeout: int = T):
    return await page.wait_for_function(expr, arg=arg, timeout=timeout)


def links_frame(text: str) -> list[int]:
    """A type-103 frame: varUint 103, varString ``text``."""
    body = text.encode()
    n, length = len(body), []
    while n > 127:
        length.append(0x80 | (n & 0x7F))
        n >>= 7
    length.append(n)
    return [103, *length, *body]


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if isinstance(after[k], (int, float))}


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    extra = {"CODESYNC_WEB_DIST": cfg["web_dist"]} if cfg.get("web_dist") else {}
    stack = namespace_stack(Path(cfg["workdir"]), extra_env=extra)
    steps = Steps()
    state: dict = {"logs": []}
    ghost_ws = None
    session = None
    try:
        await stack.start_signaling()
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in USERS:
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            owner = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            rooms = {}
            for key in ("mesh", "small", "viewers"):
                rooms[key] = (await http.post("/api/rooms", json={"name": key, "language": "python"}, headers=owner)).json()
                for name in USERS[1:]:
                    viewer = (key, name) == ("mesh", "carol") or (key == "viewers" and name in ("bob", "carol"))
                    role = "viewer" if viewer else "editor"
                    inv = (await http.post(f"/api/rooms/{rooms[key]['id']}/invites", json={"role": role}, headers=owner)).json()
                    r = await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users[name]['access_token']}"})
                    r.raise_for_status()
        ids = {n: users[n]["user"]["id"] for n in USERS}

        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            pages: dict = {}
            ctxs: dict = {}

            def watch(name: str, page) -> None:
                page.on("console", lambda m, n=name: state["logs"].append(f"{n}: {m.type}: {m.text}") if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e, n=name: state["logs"].append(f"{n}: pageerror: {e}"))

            # ------------------------------------------------------------ part 1: full mesh
            async def full_mesh_setup():
                route = f"#/room/{rooms['mesh']['id']}"
                for name in BROWSERS:
                    ctxs[name], pages[name] = await open_page(browser, stack.url, users[name], route)
                    watch(name, pages[name])
                for page in pages.values():
                    await wait_js(page, MESHED, len(BROWSERS) - 1)
                # Every writer has written (the first file, a line): the documents agree.
                for name in WRITERS:
                    await type_into_editor(pages[name], f"# {name} is here\n", delay=5)
                    for other in BROWSERS:
                        await wait_js(pages[other], HAS_TEXT, f"# {name} is here")
                return {}

            await steps.run("full_mesh_setup", full_mesh_setup)

            async def one_copy_per_keystroke():
                a = pages["alice"]
                others = [n for n in BROWSERS if n != "alice"]
                before = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                links_before = {n: await pages[n].evaluate(PER_LINK) for n in others}
                text = "print('one copy per keystroke')"
                await type_into_editor(a, text + "\n", delay=40)
                for n in others:
                    await wait_js(pages[n], HAS_TEXT, text)
                # A barrier through every link (data channels are ordered): Bob and Dave each type a
                # marker everyone receives, so any forwarded copy of Alice's keystrokes has arrived.
                for n in ("bob", "dave"):
                    await type_into_editor(pages[n], f"# {n} done\n", delay=5)
                    for m in BROWSERS:
                        await wait_js(pages[m], HAS_TEXT, f"# {n} done")
                after = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                d = {n: delta(after[n], before[n]) for n in BROWSERS}
                texts = {n: await doc_text(pages[n]) for n in BROWSERS}
                per_link = {n: await pages[n].evaluate(PER_LINK) for n in others}
                sent_by_alice = d["alice"]["localUpdates"]
                markers = {n: d[n]["localUpdates"] for n in ("bob", "dave")}
                assert sent_by_alice >= len(text), f"Alice sent {sent_by_alice} update messages for {len(text) + 1} keystrokes"
                for n in others:
                    expected = sent_by_alice + sum(v for m, v in markers.items() if m != n)
                    assert d[n]["updatesReceived"] == expected, f"{n} received {d[n]['updatesReceived']} update messages, {expected} were sent to it: {d[n]}"
                    assert d[n]["duplicateUpdates"] == 0, f"{n} got {d[n]['duplicateUpdates']} duplicates"
                    from_alice = [
                        (x["updates"] - next((y["updates"] for y in links_before[n] if y["user"] == x["user"]), 0))
                        for x in per_link[n] if x["user"] == ids["alice"]
                    ]
                    assert from_alice == [sent_by_alice], f"{n}: from Alice's link {from_alice}, Alice sent {sent_by_alice}"
                for n in BROWSERS:
                    assert d[n]["updatesForwarded"] == 0, f"{n} forwarded {d[n]['updatesForwarded']} updates in a full mesh"
                assert len(set(texts.values())) == 1, texts
                return {
                    "keystrokes": len(text) + 1, "alice_update_messages": sent_by_alice,
                    "received": {n: d[n]["updatesReceived"] for n in others}, "markers": markers,
                    "skipped_forwards": {n: d[n]["forwardsSkipped"] for n in BROWSERS},
                    "copies_per_update_per_member": 1.0,
                }

            await steps.run("full_mesh_one_copy_per_keystroke", one_copy_per_keystroke, ("full_mesh_setup",))

            async def dropped_update_repaired():
                a, b, c, d = (pages[n] for n in BROWSERS)
                # Dave loses exactly one update message from Alice on its way in (as a lossy
                # relay or a bug would); nobody forwards in a full mesh, so only anti-entropy helps.
                await d.evaluate("""(alice) => { const p = window.codesync.provider; const orig = p.handleMessage.bind(p)
                    window.dropped = null
                    p.handleMessage = (conn, buf, allow) => {
                      if (window.dropped === null && conn.sender && conn.sender.user_id === alice && buf[0] === 0 && buf[1] === 2) {
                        window.dropped = performance.timeOrigin + performance.now(); return }
                      return orig(conn, buf, allow) } }""", ids["alice"])
                before = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                # Start right after one of Dave's anti-entropy ticks (a round, or one skipped as
                # nothing changed): Dave must go without the text for a while (nobody else sends
                # it). Dave's own document does not change, so it is the others' rounds after
                # their change that make Dave ask them back — the repair under test.
                await wait_js(d, "(n) => { const s = window.codesync.provider.stats; return s.antiEntropyRounds + s.antiEntropySkipped > n }",
                              before["dave"]["antiEntropyRounds"] + before["dave"]["antiEntropySkipped"], timeout=10_000)
                before = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                marker = "lost-and-found"
                await type_into_editor(a, f"# {marker}\n", delay=20)
                await wait_js(b, HAS_TEXT, marker)
                await wait_js(c, HAS_TEXT, marker)
                dave_had_it = await d.evaluate(HAS_TEXT, marker)
                t0 = time.monotonic()
                await wait_js(d, HAS_TEXT, marker, timeout=int(REPAIR_BOUND_S * 2 * 1000))
                waited = time.monotonic() - t0
                repaired_after_ms = await d.evaluate("() => performance.timeOrigin + performance.now() - window.dropped")
                after = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                dd = {n: delta(after[n], before[n]) for n in BROWSERS}
                texts = {n: await doc_text(pages[n]) for n in BROWSERS}
                assert await d.evaluate("() => window.dropped !== null"), "no update from Alice was dropped"
                assert not dave_had_it, "Dave had the text before any anti-entropy round"
                # Only anti-entropy brought it: a SyncStep2 answer with new content (a repair).
                assert dd["dave"]["repairs"] >= 1, dd["dave"]
                assert repaired_after_ms / 1000 <= REPAIR_BOUND_S, f"repaired after {repaired_after_ms} ms"
                assert all(dd[n]["updatesForwarded"] == 0 for n in BROWSERS), dd
                assert len(set(texts.values())) == 1, texts
                return {"repaired_after_ms": round(repaired_after_ms), "waited_s": round(waited, 2), "dave_had_it_with_bob": dave_had_it, "dave": dd["dave"]}

            await steps.run("dropped_update_repaired_by_anti_entropy", dropped_update_repaired, ("full_mesh_setup",))

            async def viewer_junk_links():
                a, c = pages["alice"], pages["carol"]
                peer_ids = [await pages[n].evaluate(PEER_ID) for n in BROWSERS if n != "carol"]  # her true links
                junk = [
                    links_frame("not json"), links_frame('{"links": [1, 2]}'), links_frame('{"links": "all"}'),
                    links_frame(json.dumps({"links": [f"p{i}" for i in range(1001)]})),
                    links_frame(json.dumps({"links": ["x" * 129]})),
                    [103, 0xFF, 0xFF, 0xFF, 0x0F], [103, 3, 0xFF, 0xFE, 0xFD], [103],
                ]
                # ...and a flood of well-formed ones (the link takes a burst of 40, then 20/s).
                flood = [links_frame(json.dumps({"links": [p for p in peer_ids if p]}))] * 120
                before = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                errors_before = sum(1 for line in state["logs"] if "pageerror" in line)
                sent = await c.evaluate("""(frames) => { let sent = 0
                    for (const conn of window.codesync.provider.conns.values()) {
                      if (!conn.connected || conn.service) continue
                      for (const f of frames) { conn.send(new Uint8Array(f)); sent++ } }
                    return sent }""", junk + flood)
                # ...and a "forwarded" update (type 104) of her own making: writers apply type 104
                # only from a link whose stamped principal may write, so it is dropped and counted.
                await c.evaluate("""() => { const doc = window.codesync.doc; let update = null
                    const grab = (u) => { update = u }; doc.on('update', grab)
                    doc.getMap('forged').set('by', 'the viewer'); doc.off('update', grab)
                    const len = []; let n = update.length
                    while (n > 127) { len.push((n & 127) | 128); n >>>= 7 } len.push(n)
                    const frame = new Uint8Array([104, ...len, ...update])
                    for (const conn of window.codesync.provider.conns.values()) if (conn.connected && !conn.service) conn.send(frame) }""")
                # Barrier: Carol's awareness arrives after her junk (ordered channels).
                await c.evaluate("() => window.codesync.awareness.setLocalStateField('probe', 'after-junk')")
                for n in WRITERS:
                    await wait_js(pages[n], """() => Array.from(window.codesync.awareness.getStates().values()).some(s => s && s.probe === 'after-junk')""")
                text = "print('after the junk')"
                await type_into_editor(a, text + "\n", delay=20)
                for n in BROWSERS:
                    await wait_js(pages[n], HAS_TEXT, text)
                await type_into_editor(pages["bob"], "# barrier after the junk\n", delay=5)
                for n in BROWSERS:
                    await wait_js(pages[n], HAS_TEXT, "# barrier after the junk")
                after = {n: await pages[n].evaluate(STATS) for n in BROWSERS}
                d = {n: delta(after[n], before[n]) for n in BROWSERS}
                linked = {n: await pages[n].evaluate(MESHED, len(BROWSERS) - 1) for n in BROWSERS}
                errors = sum(1 for line in state["logs"] if "pageerror" in line) - errors_before
                for n in WRITERS:
                    assert d[n]["droppedLinks"] >= len(junk) + 60, f"{n} dropped only {d[n]['droppedLinks']} bad or excess links messages"
                    assert d[n]["droppedUpdates"] >= 1, f"{n} did not drop the viewer's type-104 update: {d[n]}"
                    assert await pages[n].evaluate("() => window.codesync.doc.getMap('forged').get('by') === undefined"), n
                assert all(linked.values()), f"links lost over junk: {linked}"
                assert errors == 0, state["logs"][-10:]
                expected = d["alice"]["localUpdates"] + d["bob"]["localUpdates"]
                assert d["carol"]["updatesReceived"] == expected and d["carol"]["duplicateUpdates"] == 0, (d["carol"], expected)
                return {"frames_sent": sent, "dropped": {n: d[n]["droppedLinks"] for n in WRITERS}}

            await steps.run("viewer_junk_links_dropped", viewer_junk_links, ("full_mesh_setup",))

            for name in list(ctxs):
                await ctxs.pop(name).close()
            pages.clear()

            # ------------------------------------------------------------ part 2: two links each
            async def small_setup():
                await stack.start_service("persist", "persistence")
                route = f"#/room/{rooms['small']['id']}"
                # One after another: Alice-Bob, then Carol takes both their free slots; Dave finds
                # every browser full and has only the persistence peer.
                expect = {"alice": 0, "bob": 1, "carol": 2, "dave": 0}
                for name in BROWSERS:
                    ctxs[name], pages[name] = await open_page(browser, stack.url, users[name], route, max_conns=2)
                    watch(name, pages[name])
                    await wait_js(pages[name], "() => window.codesync.provider.connectedPeers().some(c => c.service === true && c.sender.service === 'persistence')", timeout=45_000)
                    if expect[name]:
                        await wait_js(pages[name], f"() => window.codesync.provider.connectedPeers().filter(c => !c.service).length >= {expect[name]}")
                links = {n: await pages[n].evaluate(PEOPLE_LINKS) for n in BROWSERS}
                slots = {n: await pages[n].evaluate(SLOTS) for n in BROWSERS}
                assert all(v <= 2 for v in slots.values()), slots
                return {"people_links": {n: len(v) for n, v in links.items()}}

            await steps.run("small_limit_setup", small_setup)

            async def refused_when_full():
                a, d = pages["alice"], pages["dave"]
                assert await a.evaluate(SLOTS) == 2, "Alice is not full"
                free = await d.evaluate("() => window.codesync.provider.maxConns - window.codesync.provider.slotsUsed()")
                assert free >= 1, "Dave has no free slot"
                alice_id = await a.evaluate(PEER_ID)
                before_a, before_d = await a.evaluate(STATS), await d.evaluate(STATS)
                # An announce from Alice although she is full (as one sent just before she filled up):
                # Dave offers, Alice refuses explicitly, Dave gives the attempt up at once.
                await a.evaluate("() => window.codesync.provider.publish({type: 'announce', from: window.codesync.provider.peerId})")
                await wait_js(d, "(n) => window.codesync.provider.stats.refusedBy > n", before_d["refusedBy"])
                pending_left = await d.evaluate("(id) => window.codesync.provider.conns.has(id)", alice_id)
                after_a = await a.evaluate(STATS)
                # Within the back-off Dave does not offer again.
                await a.evaluate("() => window.codesync.provider.publish({type: 'announce', from: window.codesync.provider.peerId})")
                await a.evaluate("() => window.codesync.provider.publish({type: 'announce', from: window.codesync.provider.peerId})")
                offered_again = await d.evaluate("""(id) => new Promise(resolve => { const p = window.codesync.provider
                    const t0 = Date.now(); const tick = () => { if (p.conns.has(id)) return resolve(true)
                      if (Date.now() - t0 > 1500) return resolve(false); setTimeout(tick, 20) }; tick() })""", alice_id)
                assert after_a["refusedOffers"] - before_a["refusedOffers"] >= 1, after_a
                assert not pending_left, "Dave kept the refused attempt"
                assert not offered_again, "Dave offered to Alice again within the back-off"
                assert await a.evaluate(SLOTS) == 2, "Alice took a third link"
                return {"alice_refused": after_a["refusedOffers"] - before_a["refusedOffers"]}

            await steps.run("full_browser_refuses_explicitly", refused_when_full, ("small_limit_setup",))

            async def pending_link_times_out():
                nonlocal ghost_ws, session
                d = pages["dave"]
                before = await d.evaluate(STATS)
                session = aiohttp.ClientSession()
                ghost_ws = await session.ws_connect(f"ws://{stack.url.split('://')[1]}/signal?token={users['erin']['access_token']}")
                await ghost_ws.send_json({"type": "subscribe", "topics": [rooms["small"]["id"]]})
                ghost = "ghost-peer-never-answers"
                await ghost_ws.send_json({"type": "publish", "topic": rooms["small"]["id"], "data": {"type": "announce", "from": ghost, "caps": CAPS}})
                await wait_js(d, "(id) => window.codesync.provider.conns.has(id)", ghost)
                t0 = time.monotonic()
                await wait_js(d, "(id) => !window.codesync.provider.conns.has(id)", ghost, timeout=25_000)
                held = time.monotonic() - t0
                after = await d.evaluate(STATS)
                assert after["pendingTimeouts"] - before["pendingTimeouts"] >= 1, after
                assert 8.0 <= held <= 14.0, f"the pending link was held {held:.1f} s"
                return {"held_s": round(held, 2)}

            await steps.run("pending_link_times_out", pending_link_times_out, ("small_limit_setup",))

            async def small_room_converges():
                dave_before = await pages["dave"].evaluate(STATS)
                for name in BROWSERS:
                    await type_into_editor(pages[name], f"# {name} with two links\n", delay=5)
                for name in BROWSERS:
                    for other in BROWSERS:
                        await wait_js(pages[other], HAS_TEXT, f"# {name} with two links", timeout=20_000)
                texts = {n: await doc_text(pages[n]) for n in BROWSERS}
                slots = {n: await pages[n].evaluate(SLOTS) for n in BROWSERS}
                links = {n: await pages[n].evaluate(PEOPLE_LINKS) for n in BROWSERS}
                assert len(set(texts.values())) == 1, texts
                assert all(v <= 2 for v in slots.values()), slots
                unlinked_pairs = sum(1 for n in BROWSERS for m in BROWSERS if n < m and ids[m] not in links[n])
                assert unlinked_pairs >= 1, f"every pair is linked: {links}"
                # Dave is linked to the persistence peer only: the others' typing reached him
                # forwarded, as type 104 (so he would never forward it again)
                dave = delta(await pages["dave"].evaluate(STATS), dave_before)
                assert dave["relayedReceived"] >= 1, dave
                return {"slots": slots, "unlinked_pairs": unlinked_pairs, "dave_relayed": dave["relayedReceived"]}

            await steps.run("small_limit_room_converges", small_room_converges, ("small_limit_setup",))

            for name in list(ctxs):
                await ctxs.pop(name).close()
            pages.clear()

            # ------------------------------------------------------------ part 3: two viewers
            trio = ("alice", "bob", "carol")
            viewer_room = rooms["viewers"]["id"]
            linked_to = "(uid) => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id === uid)"
            has_state_of = """(clientId) => window.codesync.awareness.getStates().has(clientId)"""

            async def set_role(name: str, role: str) -> None:
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    r = await http.put(f"/api/rooms/{viewer_room}/members/{ids[name]}", json={"role": role},
                                       headers={"Authorization": f"Bearer {users['alice']['access_token']}"})
                    r.raise_for_status()

            async def viewers_apart():
                for name in trio:
                    ctxs[name], pages[name] = await open_page(browser, stack.url, users[name], f"#/room/{viewer_room}")
                    watch(name, pages[name])
                a, b, c = (pages[n] for n in trio)
                for p in (b, c):
                    await wait_js(p, linked_to, ids["alice"])
                    await wait_js(p, "() => window.codesync.provider.role === 'viewer'")
                # each knows the other from presence and its own signaling frames, and does not
                # count it as missing (so it never re-announces for it)
                for p, other in ((b, "carol"), (c, "bob")):
                    other_id = await pages[other].evaluate(PEER_ID)
                    await wait_js(p, "(id) => window.codesync.provider.viewerPair(id)", other_id)
                    assert await p.evaluate("() => window.codesync.provider.unlinkedMembers()") == []
                await c.evaluate("() => window.codesync.awareness.setLocalStateField('probe', 'carol-cursor')")
                carol_client = await c.evaluate("() => window.codesync.doc.clientID")
                await wait_js(a, has_state_of, carol_client)
                text = "print('for both viewers')"
                await type_into_editor(a, text + "\n", delay=5)
                for p in (b, c):
                    await wait_js(p, HAS_TEXT, text)
                assert not await b.evaluate(linked_to, ids["carol"]) and not await c.evaluate(linked_to, ids["bob"])
                assert not await b.evaluate(has_state_of, carol_client), "Carol's cursor reached Bob"
                return {"bob_links": await b.evaluate(PEOPLE_LINKS), "carol_links": await c.evaluate(PEOPLE_LINKS)}

            await steps.run("two_viewers_apart", viewers_apart)

            async def viewers_promoted_and_demoted():
                b, c = pages["bob"], pages["carol"]
                t0 = time.monotonic()
                await set_role("bob", "editor")
                await wait_js(b, linked_to, ids["carol"], timeout=20_000)
                await wait_js(c, linked_to, ids["bob"], timeout=20_000)
                linked_after = time.monotonic() - t0
                carol_client = await c.evaluate("() => window.codesync.doc.clientID")
                await wait_js(b, has_state_of, carol_client)
                await type_into_editor(b, "# bob promoted\n", delay=5)
                await wait_js(c, HAS_TEXT, "# bob promoted")
                await set_role("bob", "viewer")
                await wait_js(b, f"(uid) => !({linked_to})(uid)", ids["carol"], timeout=20_000)
                await wait_js(c, f"(uid) => !({linked_to})(uid)", ids["bob"], timeout=20_000)
                text = "print('after the demotion')"
                await type_into_editor(pages["alice"], text + "\n", delay=5)
                for p in (b, c):
                    await wait_js(p, HAS_TEXT, text)
                assert not await b.evaluate(linked_to, ids["carol"]) and not await c.evaluate(linked_to, ids["bob"])
                return {"linked_after_promotion_s": round(linked_after, 2)}

            await steps.run("viewers_promoted_and_demoted", viewers_promoted_and_demoted, ("two_viewers_apart",))
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        steps.results["driver"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    finally:
        if ghost_ws is not None:
            await ghost_ws.close()
        if session is not None:
            await session.close()
        stack.stop()
        emit_result({
            "steps": steps.results, "console": state["logs"][-80:],
            "logs": {n: p.tail(3000) for n, p in stack.procs.items()},
        })


if __name__ == "__main__":
    asyncio.run(main())
