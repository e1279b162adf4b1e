"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): the account screens in a real
browser, with a real SMTP server (aiosmtpd on the namespace's loopback) the server mails to.

Story: register (the "confirm your address" banner), open the mailed verification link; a
reused link is refused; the account page (name, colour; a wrong current password refused, then
a password change); forgot password → mailed link → new password → signed in; an administrator
disables a user whose room page is open: the socket closes and that page lands on the sign-in
page saying the account is disabled; re-enabled, they sign in again; deleting an account with
a room decision; a second server with closed registration says so on its sign-in page and
refuses registration. Screenshots go to docs/screenshots/. Prints one RESULT line.
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

from tests.helpers.stack import Stack  # noqa: E402
from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402
from tests.helpers.smtp import smtp_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
PASSWORD = "correct horse battery"
T = 30_000


async def open_as(browser, url: str, tokens: dict, route: str):
    ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
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
    setup_interfaces()
    result: dict = {"steps": {}}
    steps = result["steps"]
    logs: list[str] = []
    stacks: list[Stack] = []
    with smtp_server("127.0.0.1") as smtp:
        stack = namespace_stack(Path(cfg["workdir"]) / "open", extra_env={
            "CODESYNC_SMTP_URL": smtp.url, "CODESYNC_UNVERIFIED_ACCOUNTS": "limited",
            "CODESYNC_MAIL_FROM": "CodeSync <noreply@codesync.test>", "CODESYNC_SESSION_RECHECK": "3600",
        })
        closed = namespace_stack(Path(cfg["workdir"]) / "closed", extra_env={"CODESYNC_REGISTRATION": "closed"})
        stacks += [stack, closed]
        for s in stacks:
            s.base_env()  # makes the work dir (and picks the port) before anything is spawned
        try:
            await stack.start_signaling()
            await closed.start_signaling()
            from signaling import admin

            await admin.create_user(stack.settings(), "root@example.com", "Root", PASSWORD, is_admin=True)
            SHOTS.mkdir(parents=True, exist_ok=True)
            async with async_playwright() as pw:
                browser = await launch_chromium(pw)
                ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
                a = await ctx.new_page()
                a.set_default_timeout(T)
                a.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))

                # -- register: banner, then the mailed verification link (once)
                await a.goto(f"{stack.url}/#/register")
                await a.fill("[data-testid=name]", "Alice")
                await a.fill("[data-testid=email]", "alice@example.com")
                await a.fill("[data-testid=password]", PASSWORD)
                await a.click("[data-testid=register-submit]")
                banner = await (await a.wait_for_selector("[data-testid=verify-banner]")).inner_text()
                mail = await smtp.wait_for("alice@example.com", kind="verify_email")
                token = smtp.token_in(mail, "verify-email")
                link = next(x for x in mail.links() if "/#/verify-email/" in x)
                await a.goto(link)
                ok_text = await (await a.wait_for_selector("[data-testid=verify-ok]")).inner_text()
                await a.screenshot(path=str(SHOTS / "verify-email.png"))
                await a.goto(f"{stack.url}/#/verify-email/{token}")
                reused = await (await a.wait_for_selector("[data-testid=verify-error]")).inner_text()
                await a.goto(f"{stack.url}/#/rooms")
                await a.wait_for_selector("[data-testid=room-list]")
                await a.wait_for_function("() => !document.querySelector('[data-testid=verify-banner]')")
                steps["verify_email"] = {
                    "ok": "Confirm your email" in banner and "alice@example.com is confirmed" in ok_text and "already been used" in reused,
                    "banner": banner, "ok_text": ok_text, "reused": reused, "from": str(mail.message["From"]),
                }

                # -- account page: profile, a wrong current password, a password change
                await a.click("[data-testid=me]")
                await a.wait_for_selector("[data-testid=profile-section]")
                await a.fill("[data-testid=profile-name]", "Alice Liddell")
                await a.eval_on_selector("[data-testid=profile-color]", "(el) => { el.value = '#d9480f'; el.dispatchEvent(new Event('input')) }")
                await a.click("[data-testid=profile-submit]")
                saved = await (await a.wait_for_selector("[data-testid=profile-message]:not([hidden])")).inner_text()
                await a.fill("[data-testid=password-current]", "not my password")
                await a.fill("[data-testid=password-new]", "a brand new password")
                await a.click("[data-testid=password-change-submit]")
                wrong = await (await a.wait_for_selector("[data-testid=password-change-message].error")).inner_text()
                await a.fill("[data-testid=password-current]", PASSWORD)
                await a.fill("[data-testid=password-new]", "a brand new password")
                await a.click("[data-testid=password-change-submit]")
                changed = await (await a.wait_for_selector("[data-testid=password-change-message].ok")).inner_text()
                header_name = await a.inner_text("[data-testid=me]")
                await a.evaluate("() => window.scrollTo(0, 0)")
                await a.screenshot(path=str(SHOTS / "account.png"), full_page=True)
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    me = (await http.post("/api/auth/login", json={"email": "alice@example.com", "password": "a brand new password"})).json()["user"]
                steps["account_page"] = {
                    "ok": "Saved" in saved and "not correct" in wrong and "Every other session" in changed
                    and me["name"] == "Alice Liddell" and me["color"] == "#d9480f" and header_name == "Alice Liddell",
                    "saved": saved, "wrong": wrong, "changed": changed, "me": me,
                }

                # -- forgot password, from a signed-out browser
                ctx_f = await browser.new_context(viewport={"width": 1280, "height": 860})
                f = await ctx_f.new_page()
                f.set_default_timeout(T)
                await f.goto(f"{stack.url}/#/login")
                await f.click("[data-testid=to-forgot]")
                await f.fill("[data-testid=email]", "alice@example.com")
                await f.click("[data-testid=forgot-submit]")
                sent = await (await f.wait_for_selector("[data-testid=forgot-message].ok")).inner_text()
                await f.screenshot(path=str(SHOTS / "forgot-password.png"))
                reset_mail = await smtp.wait_for("alice@example.com", kind="reset_password")
                reset_link = next(x for x in reset_mail.links() if "/#/reset-password/" in x)
                await f.goto(reset_link)
                await f.wait_for_selector("[data-testid=reset-submit]")
                await f.screenshot(path=str(SHOTS / "reset-password.png"))
                await f.fill("[data-testid=password]", "the reset password")
                await f.fill("[data-testid=password2]", "the reset password")
                await f.click("[data-testid=reset-submit]")
                flash = await (await f.wait_for_selector("[data-testid=flash]")).inner_text()
                await f.goto(reset_link)
                await f.fill("[data-testid=password]", "yet another password")
                await f.fill("[data-testid=password2]", "yet another password")
                await f.click("[data-testid=reset-submit]")
                reused_reset = await (await f.wait_for_selector("[data-testid=reset-error]:not([hidden])")).inner_text()
                # The password change ended Alice's first browser's session too.
                await a.goto(f"{stack.url}/#/rooms")
                msg_a = await (await a.wait_for_selector("[data-testid=auth-message]")).inner_text()
                steps["forgot_password"] = {
                    "ok": "If this address has an account" in sent and "password is changed" in flash
                    and "already been used" in reused_reset and "expired" in msg_a,
                    "sent": sent, "flash": flash, "reused": reused_reset, "first_browser": msg_a,
                }

                # -- administrator disables Bob while his room page is open
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    bob = (await http.post("/api/auth/register", json={"email": "bob@example.com", "password": PASSWORD, "name": "Bob"})).json()
                    carol = (await http.post("/api/auth/register", json={"email": "carol@example.com", "password": PASSWORD, "name": "Carol"})).json()
                    room = (await http.post("/api/rooms", json={"name": "Bob's notes", "language": "python"},
                                            headers={"Authorization": f"Bearer {bob['access_token']}"})).json()
                    await http.post("/api/rooms", json={"name": "Carol's lab", "language": "python"},
                                    headers={"Authorization": f"Bearer {carol['access_token']}"})
                    root = (await http.post("/api/auth/login", json={"email": "root@example.com", "password": PASSWORD})).json()
                b = await open_as(browser, stack.url, bob, f"#/room/{room['id']}")
                await b.wait_for_selector(".cm-content")
                await b.wait_for_selector("[data-testid=status-signaling].ok")
                r = await open_as(browser, stack.url, root, "#/admin")
                await r.wait_for_selector("[data-testid=admin-user][data-email='bob@example.com']")
                await r.wait_for_function("() => document.querySelector('[data-testid=stat-users] .value').textContent === '1'")
                await r.click("[data-testid=admin-user][data-email='bob@example.com'] [data-testid=admin-disable]")
                await r.wait_for_selector("[data-testid=admin-users-message].ok")
                # The list reloads after the change: wait for the row to say so.
                await r.wait_for_function("() => document.querySelector(\"[data-testid=admin-user][data-email='bob@example.com'] [data-testid=admin-user-state]\").innerText === 'disabled'")
                state_text = await r.inner_text("[data-testid=admin-user][data-email='bob@example.com'] [data-testid=admin-user-state]")
                bob_msg = await (await b.wait_for_selector("[data-testid=auth-message]", timeout=20_000)).inner_text()
                # Its socket is gone from the live numbers too.
                await r.wait_for_function("() => document.querySelector('[data-testid=stat-users] .value').textContent === '0'")
                await r.screenshot(path=str(SHOTS / "admin.png"), full_page=True)
                await b.fill("[data-testid=email]", "bob@example.com")
                await b.fill("[data-testid=password]", PASSWORD)
                await b.click("[data-testid=login-submit]")
                bob_login = await (await b.wait_for_selector("[data-testid=auth-error]:not([hidden])")).inner_text()
                await r.click("[data-testid=admin-user][data-email='bob@example.com'] [data-testid=admin-enable]")
                await r.wait_for_function("() => document.querySelector(\"[data-testid=admin-user][data-email='bob@example.com'] [data-testid=admin-user-state]\").innerText === 'active'")
                await b.click("[data-testid=login-submit]")
                await b.wait_for_selector("[data-testid=room-list]")
                sizes = await r.eval_on_selector_all("[data-testid=admin-room]", "(rows) => rows.map(r => r.innerText)")
                steps["admin_disables_a_user"] = {
                    "ok": state_text == "disabled" and "disabled by an administrator" in bob_msg and "disabled" in bob_login
                    and any("Bob's notes" in s for s in sizes),
                    "state": state_text, "bob_page": bob_msg, "bob_login": bob_login, "rooms": sizes,
                }

                # -- Carol deletes her account, deciding for her room
                c = await open_as(browser, stack.url, carol, "#/account")
                await c.wait_for_selector("[data-testid=delete-room-choice]")
                await c.select_option("[data-testid=delete-room-choice]", "delete")
                await c.fill("[data-testid=delete-password]", PASSWORD)
                await c.click("[data-testid=delete-account-submit]")
                gone = await (await c.wait_for_selector("[data-testid=auth-message]")).inner_text()
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    login = await http.post("/api/auth/login", json={"email": "carol@example.com", "password": PASSWORD})
                steps["delete_account"] = {"ok": "deleted" in gone and login.status_code == 401, "text": gone}

                # -- a server with closed registration says so, and refuses
                d_ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
                d = await d_ctx.new_page()
                d.set_default_timeout(T)
                await d.goto(f"{closed.url}/#/login")
                policy = await (await d.wait_for_selector("[data-testid=registration-policy]")).inner_text()
                create_links = await d.locator("[data-testid=to-register]").count()
                await d.screenshot(path=str(SHOTS / "sign-in-closed.png"))
                await d.goto(f"{closed.url}/#/register")
                reg_policy = await (await d.wait_for_selector("[data-testid=registration-policy]:not([hidden])")).inner_text()
                disabled_submit = await d.eval_on_selector("[data-testid=register-submit]", "(b) => b.disabled")
                async with httpx.AsyncClient(base_url=closed.url, timeout=10) as http:
                    refused = await http.post("/api/auth/register", json={"email": "x@example.com", "password": PASSWORD, "name": "X"})
                steps["closed_registration"] = {
                    "ok": "closed" in policy and create_links == 0 and "closed" in reg_policy and disabled_submit
                    and refused.status_code == 403 and refused.json()["error"]["code"] == "registration_closed",
                    "policy": policy, "register_page": reg_policy,
                }
                await browser.close()
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["trace"] = traceback.format_exc()[-3000:]
        finally:
            for s in stacks:
                s.stop()
            result["logs"] = {f"{i}:{n}": p.tail(2500) for i, s in enumerate(stacks) for n, p in s.procs.items()}
            result["page_errors"] = logs
            emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
