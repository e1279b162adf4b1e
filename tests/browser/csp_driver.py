"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py; run by tests/test_web_csp.py):
the built web client under the server's Content-Security-Policy.

Alice opens her room; Bob opens an invite link (the client accepts it with the token in the
request body) and lands in the room; both edit over WebRTC. Every ``securitypolicyviolation``
event is recorded; one deliberate inline script proves the policy is enforced. Prints one
RESULT line.
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
T = 30_000
WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile || ''}:${e.lineNumber || ''}`));
"""


async def open_as(browser, url: str, tokens: dict, route: str):
    ctx = await browser.new_context()
    session = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "user": tokens["user"]}
    await ctx.add_init_script(
        f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({json.dumps(session)}));"
        + WATCH
    )
    page = await ctx.new_page()
    page.set_default_timeout(T)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
    response = await page.goto(f"{url}/{route}")
    return page, response, console


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]))
    result: dict = {}
    try:
        await stack.start_signaling()
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in ("alice", "bob"):
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            auth = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "csp", "language": "python"}, headers=auth)).json()
            invite = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=auth)).json()
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            a, a_resp, a_console = await open_as(browser, stack.url, users["alice"], f"#/room/{room['id']}")
            result["csp_header"] = (await a_resp.all_headers()).get("content-security-policy", "")
            await a.wait_for_selector(".cm-content")
            b, _, b_console = await open_as(browser, stack.url, users["bob"], f"#/invite/{invite['token']}")
            await b.wait_for_function(f"() => location.hash === '#/room/{room['id']}'")
            await b.wait_for_selector(".cm-content")
            for p in (a, b):
                await p.wait_for_function("() => window.codesync.provider.connectedPeers().length > 0")
            await a.click(".cm-content")
            await a.keyboard.type("typed under CSP\n", delay=5)
            await b.wait_for_function("() => window.codesync.doc.getText('source').toString().includes('typed under CSP')")
            result["bob_joined"] = True
            result["synced"] = True
            # The policy is enforced: an inline script is refused (and reported).
            try:
                await a.add_script_tag(content="window.__inline = 1")
            except Exception:  # noqa: BLE001 - Playwright reports the refused tag as an error
                pass
            result["inline_ran"] = await a.evaluate("() => window.__inline === 1")
            await a.wait_for_function("() => window.__csp.some(v => v.startsWith('script-src'))", timeout=5000)
            violations = await a.evaluate("() => window.__csp") + await b.evaluate("() => window.__csp")
            result["violations"] = violations
            result["console"] = a_console + b_console
            await browser.close()
    except Exception as exc:  # noqa: BLE001 - reported to the pytest side
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()
        result["logs"] = {name: p.tail(3000) for name, p in stack.procs.items()}
    finally:
        stack.stop()
    emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
