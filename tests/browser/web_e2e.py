"""Driver (runs INSIDE a private network namespace, see tests/helpers/netns.py): the whole stack and
headless Chromium; two users collaborate through the real web client. Prints one RESULT line:
``{"steps": {name: {"ok": bool, ...}}, "services": {...}}``. Steps run in order and later
steps that need an earlier one are reported as blocked rather than run on a broken state.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.helpers.components import ROOT  # noqa: E402
from tests.helpers.netns import NS_ADDR, namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery"
T = 20_000  # ms, Playwright waits


class Steps:
    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    async def run(self, name: str, fn, needs: tuple[str, ...] = ()) -> bool:
        missing = [n for n in needs if not self.results.get(n, {}).get("ok")]
        if missing:
            self.results[name] = {"ok": False, "blocked": True, "error": f"blocked by {', '.join(missing)}"}
            return False
        t0 = time.monotonic()
        try:
            info = await fn() or {}
            if info.get("skipped"):
                self.results[name] = {"ok": False, **info}
                return False
            self.results[name] = {"ok": True, "seconds": round(time.monotonic() - t0, 2), **info}
            return True
        except Exception as exc:  # noqa: BLE001 - reported to the pytest side
            self.results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            return False


async def doc_text(page) -> str:
    return await page.evaluate("() => window.codesync ? window.codesync.doc.getText('source').toString() : null")


async def wait_js(page, expr: str, arg=None, timeout: int = T):
    return await page.wait_for_function(expr, arg=arg, timeout=timeout)


async def type_into_editor(page, text: str, delay: float = 15) -> None:
    await page.click(".cm-content")
    await page.keyboard.press("Control+End")
    await page.keyboard.type(text, delay=delay)


async def type_at_start(page, text: str, delay: float = 15) -> None:
    await page.click(".cm-content")
    await page.keyboard.press("Control+Home")
    await page.keyboard.type(text, delay=delay)


async def doc_state(page) -> dict:
    """What a failure message needs: the text, the links and what the provider dropped."""
    return await page.evaluate("""() => { const p = window.codesync.provider; return {
        text: window.codesync.doc.getText('source').toString(), role: p.role, stats: p.stats,
        links: Array.from(p.conns.values()).map(c => [c.remotePeerId, c.connected, c.sender, c.synced]) } }""")


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    # A configured OAuth provider, so the sign-in screen shows its button (never clicked: no internet).
    stack = namespace_stack(Path(cfg["workdir"]), extra_env={"CODESYNC_OAUTH_GITHUB_CLIENT_ID": "test-client", "CODESYNC_OAUTH_GITHUB_CLIENT_SECRET": "s"})
    steps = Steps()
    services: dict[str, str] = {}
    state: dict = {}
    try:
        await stack.start_signaling()
        for command, scope in (("persist", "persistence"), ("runner", "runner")):
            try:
                await stack.start_service(command, scope)
                services[command] = "started"
            except Exception as exc:  # noqa: BLE001
                services[command] = f"unavailable: {exc}"
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            phone = cfg.get("viewport", {"width": 1280, "height": 800})
            ctx_a = await browser.new_context(viewport=phone)
            ctx_b = await browser.new_context(viewport=phone)
            ctx_a.set_default_timeout(T)
            ctx_b.set_default_timeout(T)
            a = await ctx_a.new_page()
            b = await ctx_b.new_page()
            logs: list[str] = []
            for name, p in (("alice", a), ("bob", b)):
                p.on("console", lambda m, n=name: logs.append(f"{n}: {m.type}: {m.text}") if m.type in ("error", "warning") else None)
                p.on("pageerror", lambda e, n=name: logs.append(f"{n}: pageerror: {e}"))
            state["logs"] = logs

            # ---------------------------------------------------------------- sign in screen
            async def sign_in_page():
                await a.goto(stack.url + "/")
                await a.wait_for_selector("[data-testid=login-submit]")
                await a.wait_for_selector("[data-testid=oauth-github]")
                SHOTS.mkdir(parents=True, exist_ok=True)
                await a.screenshot(path=str(SHOTS / "sign-in.png"))
                await a.fill("[data-testid=email]", "nobody@example.com")
                await a.fill("[data-testid=password]", "wrong password here")
                await a.click("[data-testid=login-submit]")
                err = await a.wait_for_selector("[data-testid=auth-error]:not([hidden])")
                return {"wrong_password_message": await err.inner_text()}

            await steps.run("sign_in_page", sign_in_page)

            async def register(page, name: str, email: str):
                await page.click("[data-testid=to-register]")
                await page.fill("[data-testid=name]", name)
                await page.fill("[data-testid=email]", email)
                await page.fill("[data-testid=password]", PASSWORD)
                await page.click("[data-testid=register-submit]")

            # ---------------------------------------------------------------- register + room
            async def create_room():
                await register(a, "Alice", "alice@example.com")
                await a.wait_for_selector("[data-testid=room-list]")
                await a.fill("[data-testid=room-name]", "Demo room")
                await a.select_option("[data-testid=room-language]", "python")
                await a.click("[data-testid=create-room]")
                await a.wait_for_selector(".cm-content")
                state["room_id"] = a.url.split("#/room/")[1]
                await a.wait_for_selector("[data-testid=status-signaling].ok")
                return {"room_id": state["room_id"]}

            await steps.run("register_and_create_room", create_room, ("sign_in_page",))

            async def invite_link(role: str) -> str:
                await a.select_option("[data-testid=invite-role]", role)
                before = await a.input_value("[data-testid=invite-link]")
                await a.click("[data-testid=make-invite]")
                await wait_js(a, "(old) => { const v = document.querySelector('[data-testid=invite-link]').value; return v !== old && v.includes('#/invite/') }", before)
                return await a.input_value("[data-testid=invite-link]")

            async def invite_bob():
                link = await invite_link("editor")
                await b.goto(link)
                await b.wait_for_selector("[data-testid=auth-message]")
                await register(b, "Bob", "bob@example.com")
                await b.wait_for_selector(".cm-content")
                assert b.url.endswith(state["room_id"]), b.url
                return {"link_host": link.split("/#/")[0]}

            await steps.run("invite_accepted", invite_bob, ("register_and_create_room",))

            # ---------------------------------------------------------------- converge
            async def converge():
                await wait_js(a, "() => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id)")
                await wait_js(b, "() => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.user_id)")
                ta = "# alice was here\nprint('alice')\n"
                tb = "# bob typed this\nprint('bob')\n"
                # Both type at once, at different places: typed at the same spot, a remote insert can
                # land at the local cursor and the two runs interleave (then no `includes` matches).
                seed = "# between the two\n"
                await type_into_editor(a, seed, delay=5)
                await wait_js(b, "(t) => window.codesync.doc.getText('source').toString().includes(t)", seed)
                await asyncio.gather(type_into_editor(a, ta), type_at_start(b, tb))
                check = "([x, y]) => { const t = window.codesync.doc.getText('source').toString(); return t.includes(x) && t.includes(y) }"
                try:
                    await wait_js(a, check, [ta, tb])
                    await wait_js(b, check, [ta, tb])
                except Exception as exc:
                    raise AssertionError(f"not converged: alice {await doc_state(a)!r}\nbob {await doc_state(b)!r}") from exc
                t1, t2 = await doc_text(a), await doc_text(b)
                assert t1 == t2, (t1, t2)
                e1 = await a.evaluate("() => document.querySelector('.cm-content').innerText")
                return {"text": t1, "editor_has_bob": "bob typed this" in e1}

            await steps.run("two_browsers_converge", converge, ("invite_accepted",))

            async def presence():
                await a.wait_for_selector("[data-testid=presence] >> text=Bob")
                await b.wait_for_selector("[data-testid=presence] >> text=Alice")
                pa = await a.inner_text("[data-testid=presence]")
                pb = await b.inner_text("[data-testid=presence]")
                assert "editor" in pa and "owner" in pb, (pa, pb)
                return {"alice_sees": pa, "bob_sees": pb}

            await steps.run("presence_list", presence, ("invite_accepted",))

            async def cursors():
                await a.wait_for_selector(".cm-ySelectionInfo >> text=Bob")
                await b.wait_for_selector(".cm-ySelectionInfo >> text=Alice")
                return {}

            await steps.run("remote_cursor", cursors, ("two_browsers_converge",))

            async def language():
                await a.select_option("[data-testid=language]", "javascript")
                await wait_js(b, "() => document.querySelector('[data-testid=language]').value === 'javascript'")
                meta = await b.evaluate("() => window.codesync.doc.getMap('meta').toJSON()")
                await a.select_option("[data-testid=language]", "python")
                await wait_js(b, "() => document.querySelector('[data-testid=language]').value === 'python'")
                return {"meta": meta}

            await steps.run("language_change", language, ("invite_accepted",))

            async def phone_layout():
                await b.set_viewport_size({"width": 390, "height": 844})
                try:
                    editor = await b.locator(".editor-pane").bounding_box()
                    side = await b.locator(".side").bounding_box()
                    await b.screenshot(path=str(SHOTS / "room-phone.png"))
                    assert side["y"] >= editor["y"] + editor["height"] - 1, (editor, side)
                    assert editor["width"] <= 390 and side["width"] <= 390, (editor, side)
                finally:
                    await b.set_viewport_size(phone)
                return {}

            await steps.run("phone_layout", phone_layout, ("invite_accepted",))

            # ---------------------------------------------------------------- run
            async def run_output():
                if "runner" not in stack.procs or not stack.procs["runner"].alive():
                    return {"skipped": True, "error": f"runner: {services.get('runner')} {stack.procs.get('runner') and stack.procs['runner'].tail(1500)}"}
                await wait_js(a, "() => !!window.codesync.provider.runnerPeer()", timeout=30_000)
                # A long run, stopped by the other user mid-run.
                await a.click(".cm-content")
                await a.keyboard.press("Control+a")
                await a.keyboard.type("import time\nprint('started', flush=True)\ntime.sleep(60)\n", delay=2)
                await a.keyboard.press("Control+Enter")
                for p in (a, b):
                    await p.wait_for_selector("[data-testid=output] >> text=started", timeout=30_000)
                await b.wait_for_selector("[data-testid=stop]:not([disabled])")
                await b.click("[data-testid=stop]")
                for p in (a, b):
                    await p.wait_for_selector("[data-testid=run-state] >> text=killed", timeout=30_000)
                # The run whose output everyone sees in the screenshot.
                await a.click(".cm-content")
                await a.keyboard.press("Control+a")
                await a.keyboard.type("import sys\nprint('hello from the runner')\nprint('to stderr', file=sys.stderr)\n", delay=2)
                await a.keyboard.press("Control+Enter")
                for p in (a, b):
                    await p.wait_for_selector("[data-testid=output] >> text=hello from the runner", timeout=30_000)
                    await p.wait_for_selector("[data-testid=output] .stderr >> text=to stderr", timeout=30_000)
                    await p.wait_for_selector("[data-testid=exit-code]", timeout=30_000)
                exit_a = await a.inner_text("[data-testid=exit-code]")
                exit_b = await b.inner_text("[data-testid=exit-code]")
                out_a = await a.inner_text("[data-testid=output]")
                out_b = await b.inner_text("[data-testid=output]")
                assert out_a == out_b, (out_a, out_b)
                assert "0" in exit_a, exit_a
                # Both cursors visible, then the screenshot of a working room.
                await b.click(".cm-content")
                await b.keyboard.press("Control+Home")
                await b.keyboard.press("ArrowDown")
                await b.keyboard.press("End")
                await a.wait_for_selector(".cm-ySelectionInfo >> text=Bob")
                await a.screenshot(path=str(SHOTS / "room.png"))
                recent = await b.inner_text("[data-testid=recent-runs]")
                assert "killed" in recent and "finished" in recent, recent
                return {"output": out_a, "exit": exit_a, "exit_b": exit_b, "recent": recent}

            ran = await steps.run("run_streams_output", run_output, ("two_browsers_converge",))
            if not ran:
                # Still produce a screenshot of the collaborating room (without run output).
                try:
                    await a.screenshot(path=str(SHOTS / "room.png"))
                except Exception:  # noqa: BLE001
                    pass

            # ---------------------------------------------------------------- viewer
            async def viewer():
                link = await invite_link("viewer")
                ctx_c = await browser.new_context(viewport=phone)
                c = await ctx_c.new_page()
                state["ctx_c"] = ctx_c
                await c.goto(link)
                await register(c, "Carol", "carol@example.com")
                await c.wait_for_selector(".cm-content")
                before = await doc_text(a)
                await wait_js(c, "(t) => window.codesync && window.codesync.doc.getText('source').toString() === t", before)
                editable = await c.get_attribute(".cm-content", "contenteditable")
                await c.click(".cm-content")
                await c.keyboard.type("VIEWER WAS HERE")
                run_buttons = await c.locator("[data-testid=run]").count()
                lang_disabled = await c.is_disabled("[data-testid=language]")
                await a.wait_for_selector("[data-testid=presence] >> text=Carol")
                after_c = await doc_text(c)
                after_a = await doc_text(a)
                assert "VIEWER" not in after_c and "VIEWER" not in after_a
                assert editable == "false" and run_buttons == 0 and lang_disabled
                return {"contenteditable": editable, "run_buttons": run_buttons, "language_disabled": lang_disabled}

            await steps.run("viewer_read_only", viewer, ("two_browsers_converge",))

            # ---------------------------------------------------------------- stock y-webrtc
            async def stock():
                bundle = build_stock_bundle(Path(cfg["workdir"]))
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    r = await http.post("/api/auth/register", json={"email": "dave@example.com", "password": PASSWORD, "name": "Dave"})
                    r.raise_for_status()
                    token = r.json()["access_token"]
                    owner = await a.evaluate("() => JSON.parse(localStorage.getItem('codesync.session')).access_token")
                    inv = await http.post(f"/api/rooms/{state['room_id']}/invites", json={"role": "editor"}, headers={"Authorization": f"Bearer {owner}"})
                    inv.raise_for_status()
                    acc = await http.post(f"/api/invites/{inv.json()['token']}/accept", headers={"Authorization": f"Bearer {token}"})
                    acc.raise_for_status()
                ctx_d = await browser.new_context()
                d = await ctx_d.new_page()
                d.on("console", lambda m: logs.append(f"stock: {m.type}: {m.text}"))
                d.on("pageerror", lambda e: logs.append(f"stock: pageerror: {e}"))
                from urllib.parse import urlencode

                # Same origin as the app (Chromium's local-network checks block a routed page), any
                # small document will do: /healthz, then the stock bundle is injected into it.
                await d.goto(f"{stack.url}/healthz#" + urlencode({"room": state["room_id"], "signaling": f"ws://{NS_ADDR}:{stack.port}/signal?token={token}"}))
                await d.add_script_tag(content=bundle)
                target = await doc_text(a)
                try:
                    await wait_js(d, "(t) => window.stock && window.stock.doc.getText('source').toString() === t", target, timeout=30_000)
                except Exception:
                    info = await d.evaluate("""() => window.stock ? ({room: !!window.stock.provider.room,
                        conns: window.stock.provider.room ? Array.from(window.stock.provider.room.webrtcConns.values()).map(c => [c.connected, c.synced]) : null,
                        sig: window.stock.provider.signalingConns.map(c => c.connected), text: window.stock.doc.getText('source').toString()}) : 'no stock'""")
                    mine = await a.evaluate("() => Array.from(window.codesync.provider.conns.values()).map(c => [c.remotePeerId, c.connected, c.caps, c.sender])")
                    raise AssertionError(f"stock did not converge: {info} alice conns: {mine}")
                await d.evaluate("() => window.stock.doc.getText('source').insert(0, '# stock y-webrtc says hi\\n')")
                for p in (a, b):
                    await wait_js(p, "() => window.codesync.doc.getText('source').toString().startsWith('# stock y-webrtc says hi')")
                await type_into_editor(a, "# alice answers stock\n", delay=5)
                await wait_js(d, "() => window.stock.doc.getText('source').toString().includes('# alice answers stock')")
                final = await d.evaluate("() => window.stock.doc.getText('source').toString()")
                await ctx_d.close()
                return {"stock_text_len": len(final)}

            await steps.run("stock_y_webrtc_converges", stock, ("two_browsers_converge",))

            # ---------------------------------------------------------------- reload (persistence peer)
            async def reload_from_persistence():
                if "persist" not in stack.procs or not stack.procs["persist"].alive():
                    return {"skipped": True, "error": f"persistence peer: {services.get('persist')} {stack.procs.get('persist') and stack.procs['persist'].tail(1500)}"}
                # A 300 KB paste: one update far above the channels' 64 KiB limit, so it must travel
                # chunked to Bob and to the persistence peer, and come back chunked in SyncStep2.
                big = "".join(f"# filler line {i:06d} ........................................\n" for i in range(5000))
                await a.evaluate("(t) => { const s = window.codesync.doc.getText('source'); s.insert(s.length, t) }", big)
                await wait_js(b, "(n) => window.codesync.doc.getText('source').length >= n", len(big))
                await wait_js(a, "() => document.querySelector('[data-testid=status-saved]').textContent === 'saved'", timeout=30_000)
                expected = await doc_text(a)
                # Every browser leaves; a fresh context (empty IndexedDB) can only get the text from the persistence peer.
                if state.get("ctx_c"):
                    await state["ctx_c"].close()
                await b.goto("about:blank")
                await a.goto("about:blank")
                ctx_e = await browser.new_context()
                e = await ctx_e.new_page()
                await e.goto(stack.url + "/")
                await e.fill("[data-testid=email]", "alice@example.com")
                await e.fill("[data-testid=password]", PASSWORD)
                await e.click("[data-testid=login-submit]")
                await e.wait_for_selector("[data-testid=room-link]")
                await e.screenshot(path=str(SHOTS / "rooms.png"))
                await e.click("[data-testid=room-link]")
                await wait_js(e, "(t) => window.codesync && window.codesync.doc.getText('source').toString() === t", expected, timeout=30_000)
                # Remove the filler again so the later steps work on a small document.
                await e.evaluate("(t) => { const s = window.codesync.doc.getText('source'); const i = s.toString().indexOf(t); if (i >= 0) s.delete(i, t.length) }", big)
                await wait_js(e, "() => document.querySelector('[data-testid=status-saved]').textContent === 'saved'", timeout=30_000)
                expected = await doc_text(e)
                await ctx_e.close()
                await a.goto(f"{stack.url}/#/room/{state['room_id']}")
                await b.goto(f"{stack.url}/#/room/{state['room_id']}")
                return {"chars": len(expected), "big_chars": len(big)}

            await steps.run("reload_from_persistence_peer", reload_from_persistence, ("two_browsers_converge",))
            if "rooms.png" not in [p.name for p in SHOTS.glob("*.png")]:
                try:
                    await a.goto(f"{stack.url}/#/rooms")
                    await a.wait_for_selector("[data-testid=room-link]")
                    await a.screenshot(path=str(SHOTS / "rooms.png"))
                    await a.goto(f"{stack.url}/#/room/{state['room_id']}")
                except Exception:  # noqa: BLE001
                    pass

            # ---------------------------------------------------------------- signaling down
            async def signaling_killed():
                for p in (a, b):
                    await p.wait_for_selector(".cm-content")
                await wait_js(a, "() => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.name === 'Bob')", timeout=30_000)
                await wait_js(b, "() => window.codesync.provider.connectedPeers().some(c => c.sender && c.sender.name === 'Alice')", timeout=30_000)
                stack.procs["signaling"].kill(9)
                await b.wait_for_selector("[data-testid=conn-message]:not([hidden])")
                message = await b.inner_text("[data-testid=conn-message]")
                await type_into_editor(a, "# typed while signaling is down\n", delay=5)
                await wait_js(b, "() => window.codesync.doc.getText('source').toString().includes('typed while signaling is down')")
                await type_into_editor(b, "# bob answers offline\n", delay=5)
                await wait_js(a, "() => window.codesync.doc.getText('source').toString().includes('bob answers offline')")
                state["offline_text"] = await doc_text(b)
                return {"message": message}

            await steps.run("signaling_down_p2p_continues", signaling_killed, ("two_browsers_converge",))

            async def signaling_restart():
                await stack.start_signaling()
                for p in (a, b):
                    await p.wait_for_selector("[data-testid=status-signaling].ok", timeout=30_000)
                    await p.wait_for_selector("[data-testid=conn-message]", state="hidden")
                return {}

            await steps.run("signaling_restart_reconnects", signaling_restart, ("signaling_down_p2p_continues",))

            async def reload_from_local():
                # Bob's signaling is cut (mocked socket: no peers can reach him), so after a reload
                # the text, including what he typed while signaling was down, comes from IndexedDB.
                expected = state["offline_text"]
                cut = {"on": True}

                def signal_route(ws):
                    # While cut: a socket that opens but never delivers anything. Afterwards: the real server.
                    if not cut["on"]:
                        ws.connect_to_server()

                await ctx_b.route_web_socket("**/signal*", signal_route)
                await b.reload()
                await wait_js(b, "(t) => window.codesync && window.codesync.doc.getText('source').toString() === t", expected)
                peers = await b.evaluate("() => window.codesync.provider.connectedPeers().length")
                assert peers == 0, peers
                # Both edit while apart; when Bob's connection returns the edits merge.
                await type_into_editor(b, "# bob edited offline\n", delay=5)
                await type_into_editor(a, "# alice edited meanwhile\n", delay=5)
                cut["on"] = False
                await b.reload()
                both = "(t) => { const s = window.codesync && window.codesync.doc.getText('source').toString(); return !!s && s.includes('# bob edited offline') && s.includes('# alice edited meanwhile') }"
                await wait_js(b, both, None, timeout=30_000)
                await wait_js(a, both, None, timeout=30_000)
                ta, tb = await doc_text(a), await doc_text(b)
                assert ta == tb, (ta, tb)
                return {}

            await steps.run("reload_from_local_storage", reload_from_local, ("signaling_restart_reconnects",))
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        steps.results["driver"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    finally:
        stack.stop()
        emit_result({
            "steps": steps.results, "services": services, "console": state.get("logs", [])[-60:],
            "logs": {n: p.tail(3000) for n, p in stack.procs.items()},
        })


def build_stock_bundle(workdir: Path) -> str:
    """Bundle tests/browser/stock_client.js with the web project's esbuild + node_modules."""
    out = workdir / "stock.js"
    web = ROOT / "web"
    subprocess.run(
        [str(web / "node_modules" / ".bin" / "esbuild"), str(ROOT / "tests" / "browser" / "stock_client.js"),
         "--bundle", "--format=iife", f"--outfile={out}", "--log-level=warning"],
        check=True, cwd=web, env={"NODE_PATH": str(web / "node_modules"), "PATH": "/usr/bin:/bin"}, timeout=60,
    )
    return out.read_text()


if __name__ == "__main__":
    asyncio.run(main())
