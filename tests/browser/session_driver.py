"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): sessions in the browser.
Access tokens live a few seconds, so the page must refresh them silently (the refresh token
rotates) and reconnect to /signal with a fresh token each time the server closes with 4001,
without the user noticing; a revoked session ends on the sign-in page with a message; a
non-member opening a room gets a clear "no access" page. Prints one RESULT line.
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


async def open_as(browser, url: str, tokens: dict, route: str):
    ctx = await browser.new_context()
    session = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "user": tokens["user"]}
    await ctx.add_init_script(
        f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({json.dumps(session)}))"
    )
    page = await ctx.new_page()
    page.set_default_timeout(T)
    await page.goto(f"{url}/{route}")
    return page


async def main() -> None:
    cfg = read_config()
    ttl = int(cfg.get("access_ttl", 6))
    setup_interfaces()
    # A configured OAuth provider (GitHub needs no discovery, so nothing is contacted unless clicked).
    stack = namespace_stack(Path(cfg["workdir"]), access_ttl=ttl, extra_env={"CODESYNC_OAUTH_GITHUB_CLIENT_ID": "test-client", "CODESYNC_OAUTH_GITHUB_CLIENT_SECRET": "s"})
    result: dict = {"steps": {}}
    steps = result["steps"]
    try:
        await stack.start_signaling()
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in ("alice", "bob", "carol"):
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            auth = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "sessions", "language": "python"}, headers=auth)).json()
            inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=auth)).json()
            (await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users['bob']['access_token']}"})).raise_for_status()
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            route = f"#/room/{room['id']}"
            a = await open_as(browser, stack.url, users["alice"], route)
            b = await open_as(browser, stack.url, users["bob"], route)
            for p in (a, b):
                await p.wait_for_selector(".cm-content")
                await p.evaluate("""() => { window.connects = 0; const p = window.codesync.provider;
                    if (p.state === 'connected') window.connects++;
                    p.on('status', e => { if (e.state === 'connected') window.connects++ }) }""")
                await p.wait_for_function("() => window.codesync.provider.connectedPeers().length > 0")
            first_refresh = users["alice"]["refresh_token"]

            # No runner in this stack: Run explains instead of doing nothing.
            await b.click("[data-testid=run]")
            run_msg = await (await b.wait_for_selector("[data-testid=run-message]:not([hidden])")).inner_text()
            runner_status = await b.inner_text("[data-testid=status-runner]")
            steps["runner_unavailable_message"] = {"ok": "runner is not available" in run_msg and runner_status == "not connected", "text": run_msg}

            # Several token lifetimes pass: the server closes with 4001, the page reconnects each time.
            await a.wait_for_function("() => window.connects >= 3", timeout=(ttl * 3 + 20) * 1000)
            stored = await a.evaluate("() => JSON.parse(localStorage.getItem('codesync.session'))")
            await a.click(".cm-content")
            await a.keyboard.type("still editing after refreshes\n", delay=5)
            await b.wait_for_function("() => window.codesync.doc.getText('source').toString().includes('still editing after refreshes')")
            await a.wait_for_selector("[data-testid=status-signaling].ok")
            on_login = await a.locator("[data-testid=login-submit]").count()
            steps["silent_refresh_and_reconnect"] = {
                "ok": stored["refresh_token"] != first_refresh and on_login == 0,
                "connects": await a.evaluate("() => window.connects"), "rotated": stored["refresh_token"] != first_refresh,
            }

            # Member management by the owner: Bob becomes a viewer (read-only after his reload), then is removed.
            member = a.locator("[data-testid=member]", has_text="Bob")
            await member.locator("[data-testid=member-role]").select_option("viewer")
            await a.wait_for_selector("[data-testid=share-message] >> text=Bob is now a viewer")
            await b.reload()
            await b.wait_for_selector(".cm-content[contenteditable=false]")
            viewer_run_buttons = await b.locator("[data-testid=run]").count()
            await member.locator("[data-testid=member-remove]").click()
            await a.wait_for_function("() => !document.querySelector('[data-testid=members]').innerText.includes('Bob')")
            await b.reload()
            removed_text = await (await b.wait_for_selector("[data-testid=room-error]")).inner_text()
            steps["owner_manages_members"] = {"ok": viewer_run_buttons == 0 and "don't have access" in removed_text, "text": removed_text}

            # An API screen after expiry works without signing in again.
            await a.goto(f"{stack.url}/#/rooms")
            await a.wait_for_selector("[data-testid=room-link]")
            steps["api_after_expiry"] = {"ok": True}

            # No access: Carol is not a member of the room.
            c = await open_as(browser, stack.url, users["carol"], route)
            err = await c.wait_for_selector("[data-testid=room-error]")
            text = await err.inner_text()
            steps["no_access_message"] = {"ok": "don't have access" in text, "text": text}

            # Revoked session: the next refresh fails and the page asks to sign in again, saying why.
            # (Signed in afresh through the API: the page rotates its own pair every few seconds.)
            async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                fresh = await http.post("/api/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
                fresh.raise_for_status()
                r = await http.post("/api/auth/logout", json={"all": True},
                                    headers={"Authorization": f"Bearer {fresh.json()['access_token']}"})
                r.raise_for_status()
            await a.goto(f"{stack.url}/#/room/{room['id']}")
            try:
                msg = await a.wait_for_selector("[data-testid=auth-message]", timeout=(ttl * 2 + 20) * 1000)
            except Exception as exc:
                body = await a.evaluate("() => document.body.innerText.slice(0, 800)")
                stored = await a.evaluate("() => localStorage.getItem('codesync.session')")
                raise AssertionError(f"no sign-in message; page {a.url}: {body!r}; stored {stored}") from exc
            text = await msg.inner_text()
            steps["expired_session_message"] = {"ok": "expired" in text, "text": text, "logout_status": r.status_code}

            # OAuth: the configured provider's button, the #/oauth landing (tokens, `next`) and its error form.
            d_ctx = await browser.new_context()
            d = await d_ctx.new_page()
            d.set_default_timeout(T)
            await d.goto(f"{stack.url}/#/invite/some-invite-token")
            button = await d.wait_for_selector("[data-testid=oauth-github]")
            href = await button.get_attribute("href")
            label = await button.inner_text()
            await d.goto(f"{stack.url}/#/oauth?error=access_denied&message=You+cancelled+the+sign-in")
            err_text = await (await d.wait_for_selector("[data-testid=auth-message]")).inner_text()
            async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                r = await http.post("/api/auth/login", json={"email": "bob@example.com", "password": PASSWORD})
                r.raise_for_status()
                t = r.json()
            from urllib.parse import urlencode

            await d.goto(f"{stack.url}/#/oauth?" + urlencode({"access_token": t["access_token"], "refresh_token": t["refresh_token"], "expires_in": ttl, "next": "/rooms"}))
            await d.wait_for_selector("[data-testid=room-list]")
            await d.wait_for_selector("[data-testid=me] >> text=Bob")
            steps["oauth_flow_in_client"] = {
                "ok": "github" in href and "next=%2Finvite%2Fsome-invite-token" in href and "GitHub" in label
                and "cancelled" in err_text and "access_token" not in d.url,
                "href": href, "label": label, "error_text": err_text, "url": d.url,
            }
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()[-3000:]
    finally:
        stack.stop()
        result["logs"] = {n: p.tail(2500) for n, p in stack.procs.items()}
        emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
