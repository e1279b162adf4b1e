"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): browser-to-browser edit
latency through the real web client. Alice types N characters one key at a time; for each
keystroke the time from the keydown in Alice's page to the character appearing in Bob's
document (Y.Text observer) is measured with both pages' high-resolution epoch clocks
(same machine, same Chromium). Prints one RESULT line with the latencies in ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

PASSWORD = "correct horse battery"
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


async def sign_in(browser, url: str, tokens: dict, room_id: str):
    ctx = await browser.new_context()
    # The signed-in session, as the client stores it, present before the app's script runs.
    session = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "user": tokens["user"]}
    await ctx.add_init_script(
        f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({{...{json.dumps(session)}, expires_at: Date.now() + 600000}}))"
    )
    page = await ctx.new_page()
    await page.goto(f"{url}/#/room/{room_id}")
    await page.wait_for_selector(".cm-content", timeout=30_000)
    return page


async def main() -> None:
    cfg = read_config()
    keys = int(cfg.get("keystrokes", 300))
    delay = float(cfg.get("delay_ms", 25))
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]))
    result: dict = {}
    try:
        await stack.start_signaling()
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            alice = (await http.post("/api/auth/register", json={"email": "a@example.com", "password": PASSWORD, "name": "Alice"})).json()
            bob = (await http.post("/api/auth/register", json={"email": "b@example.com", "password": PASSWORD, "name": "Bob"})).json()
            auth = {"Authorization": f"Bearer {alice['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "latency", "language": "python"}, headers=auth)).json()
            inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=auth)).json()
            r = await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {bob['access_token']}"})
            r.raise_for_status()
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            a = await sign_in(browser, stack.url, alice, room["id"])
            b = await sign_in(browser, stack.url, bob, room["id"])
            for p in (a, b):
                await p.wait_for_function("() => window.codesync.provider.connectedPeers().length > 0", timeout=30_000)
            # Bob: timestamp every inserted character. Alice: timestamp every keydown.
            await b.evaluate("""() => { window.arrivals = [];
                window.codesync.doc.getText('source').observe(ev => { const t = performance.timeOrigin + performance.now();
                  for (const op of ev.delta) if (typeof op.insert === 'string') for (const ch of op.insert) window.arrivals.push([ch, t]) }) }""")
            await a.evaluate("""() => { window.sent = []; window.local = [];
                document.addEventListener('keydown', ev => { if (ev.key.length === 1) window.sent.push([ev.key, performance.timeOrigin + performance.now()]) }, true);
                window.codesync.doc.getText('source').observe(ev => { const t = performance.timeOrigin + performance.now();
                  for (const op of ev.delta) if (typeof op.insert === 'string') for (const ch of op.insert) window.local.push([ch, t]) }) }""")
            await a.click(".cm-content")
            text = "".join(ALPHABET[i % 26] for i in range(keys))
            await a.keyboard.type(text, delay=delay)
            await b.wait_for_function("(n) => window.arrivals.length >= n", arg=keys, timeout=60_000)
            sent = await a.evaluate("() => window.sent")
            arrivals = await b.evaluate("() => window.arrivals")
            assert len(sent) == keys, (len(sent), keys)
            assert "".join(c for c, _ in arrivals[:keys]) == text
            local = await a.evaluate("() => window.local")
            result["latencies_ms"] = [round(arr[1] - s[1], 3) for s, arr in zip(sent, arrivals)]
            # Part of it spent in the typing page before anything is sent (keydown -> local Y.Text change).
            result["local_ms"] = [round(loc[1] - s[1], 3) for s, loc in zip(sent, local)]
            result["keystrokes"] = keys
            result["delay_ms"] = delay
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()[-3000:]
        result["logs"] = {n: p.tail(2000) for n, p in stack.procs.items()}
    finally:
        stack.stop()
        emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
