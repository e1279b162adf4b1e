"""Emailed account flows against a real SMTP server (aiosmtpd on loopback, with AUTH) and real
databases (SQLite and PostgreSQL): verification, password reset, change password, change email.
Each refusal has its test: expired, reused and foreign links, a wrong current password, an
unverified account minting an invite; and the answers that must not reveal whether an address
has an account.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import jwt
import pytest
from sqlalchemy import update

from signaling import mail, selfservice
from codesync.models import AccountToken, utcnow
from signaling.state import STATE
from tests.helpers.api import Api, in_process_api
from tests.helpers.smtp import MailSink, smtp_server
from tests.helpers.stack import SignalClient
from tests.helpers.components import free_port

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"
SENDER = "CodeSync Test <noreply@codesync.test>"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def bearer(body: dict | str) -> dict[str, str]:
    token = body if isinstance(body, str) else body["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def smtp():
    with smtp_server(username="mailer", password="s3cret pass") as sink:
        yield sink


def _settings(make_settings, database_url: str, smtp: MailSink | None, **kw):
    values = dict(database_url=database_url, unverified_accounts="limited", mail_from=SENDER)
    if smtp is not None:
        values["smtp_url"] = smtp.url
    values.update(kw)
    return make_settings(**values)


@pytest.fixture
async def api(make_settings, database_url, smtp):
    async with in_process_api(_settings(make_settings, database_url, smtp)) as a:
        yield a


async def settle(api: Api) -> None:
    """Wait for the background jobs and mails of the app (bounded): after this, a mail that
    was going to be sent has reached the SMTP server."""
    state = api.server.app[STATE]
    await selfservice.flush_jobs(state)
    await mail.flush(state)


async def register(api: Api, email: str, name: str = "Test") -> dict:
    r = await api.client.post("/api/auth/register", json={"email": email, "password": PASSWORD, "name": name})
    assert r.status_code == 201, r.text
    return r.json()


async def room_of(api: Api, owner: dict) -> str:
    r = await api.client.post("/api/rooms", json={"name": "r"}, headers=bearer(owner))
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ----------------------------------------------------------------------------- verification
async def test_verification_link_verifies_once_and_only_its_own_account(api: Api, smtp: MailSink):
    alice = await register(api, "alice@example.com", "Alice")
    bob = await register(api, "bob@example.com", "Bob")
    assert alice["user"]["email_verified"] is False
    mail_a = await smtp.wait_for("alice@example.com", kind="verify_email")
    # A real SMTP conversation: the configured sender, AUTH with the URL's credentials.
    assert mail_a.message["From"] == SENDER and "mailer" in smtp.auth_seen
    assert "Confirm your email address" in mail_a.subject
    token_a = smtp.token_in(mail_a, "verify-email")
    assert any(link.startswith(f"{api.settings.base_url}/#/verify-email/") for link in mail_a.links())

    # Unverified: signs in and edits, but mints no invites.
    room = await room_of(api, alice)
    r = await api.client.post(f"/api/rooms/{room}/invites", json={"role": "viewer"}, headers=bearer(alice))
    assert_error(r, 403, "email_unverified")

    # Bob, signed in, presents Alice's link: refused, and the link is not spent by it.
    r = await api.client.post("/api/auth/verify-email", json={"token": token_a}, headers=bearer(bob))
    assert_error(r, 403, "other_account")
    me_b = (await api.client.get("/api/me", headers=bearer(bob))).json()
    assert me_b["email_verified"] is False
    # Bob's own link does not verify Alice either (it names Bob's account and address).
    token_b = smtp.token_in(await smtp.wait_for("bob@example.com", kind="verify_email"), "verify-email")
    r = await api.client.post("/api/auth/verify-email", json={"token": token_b}, headers=bearer(alice))
    assert_error(r, 403, "other_account")

    # Alice's link works signed out (the mail may be opened on another device) — once.
    r = await api.client.post("/api/auth/verify-email", json={"token": token_a})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email_verified"] is True and r.json()["user"]["id"] == alice["user"]["id"]
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": token_a}), 410, "link_used")
    assert (await api.client.get("/api/me", headers=bearer(alice))).json()["email_verified"] is True
    r = await api.client.post(f"/api/rooms/{room}/invites", json={"role": "viewer"}, headers=bearer(alice))
    assert r.status_code == 201, r.text
    assert (await api.client.get("/api/me", headers=bearer(bob))).json()["email_verified"] is False

    # Forged and foreign-kind tokens are refused.
    forged = jwt.encode({"typ": "verify_email", "sub": bob["user"]["id"], "aud": "codesync", "iat": 1, "exp": 2**31,
                         "jti": "x" * 32}, "not the server key" * 3, algorithm="HS256")
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": forged}), 400, "invalid_link")
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": bob["access_token"]}), 400, "invalid_link")


async def test_expired_verification_links_are_refused(api: Api, smtp: MailSink):
    user = await register(api, "carol@example.com")
    token = smtp.token_in(await smtp.wait_for("carol@example.com", kind="verify_email"), "verify-email")
    state = api.server.app[STATE]
    # The row's expiry passed (the link's signature is still fine) ...
    async with state.sessions() as session:
        await session.exec(update(AccountToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": token}), 410, "link_expired")
    # ... and a link whose own expiry passed (signed by the server, naming a live row).
    r = await api.client.post("/api/auth/verify-email/resend", json={}, headers=bearer(user))
    assert r.status_code == 202, r.text
    fresh = smtp.token_in(await smtp.wait_for("carol@example.com", kind="verify_email", count=2), "verify-email")
    row_id = jwt.decode(fresh, options={"verify_signature": False})["jti"]
    stale = state.tokens.issue_link("verify_email", row_id, user["user"]["id"], int(utcnow().timestamp()) - 60)
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": stale}), 410, "link_expired")
    assert (await api.client.post("/api/auth/verify-email", json={"token": fresh})).status_code == 200


# ----------------------------------------------------------------------------- password reset
async def test_password_reset_answers_alike_works_once_and_ends_every_session(api: Api, smtp: MailSink):
    dave = await register(api, "dave@example.com")
    other = (await api.client.post("/api/auth/login", json={"email": "dave@example.com", "password": PASSWORD})).json()

    known = await api.client.post("/api/auth/password-reset", json={"email": "Dave@Example.com"})
    unknown = await api.client.post("/api/auth/password-reset", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()  # nothing tells the two apart
    await settle(api)
    assert smtp.mails("nobody@example.com") == []
    reset_mail = await smtp.wait_for("dave@example.com", kind="reset_password")
    assert "Reset your CodeSync password" in reset_mail.subject
    token = smtp.token_in(reset_mail, "reset-password")

    r = await api.client.post("/api/auth/password-reset/confirm", json={"token": token, "password": "short"})
    assert_error(r, 422, "invalid")  # too short: nothing spent
    r = await api.client.post("/api/auth/password-reset/confirm", json={"token": token, "password": "a new long password"})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email_verified"] is True  # the mailbox was proven
    fresh = r.json()
    # Every earlier session is over; the new password signs in, the old one does not.
    for old in (dave, other):
        assert_error(await api.client.get("/api/me", headers=bearer(old)), 401, "session_revoked")
    assert (await api.client.get("/api/me", headers=bearer(fresh))).status_code == 200
    assert_error(await api.client.post("/api/auth/login", json={"email": "dave@example.com", "password": PASSWORD}),
                 401, "invalid_credentials")
    assert (await api.client.post("/api/auth/login", json={"email": "dave@example.com", "password": "a new long password"})).status_code == 200
    # Twice: refused.
    r = await api.client.post("/api/auth/password-reset/confirm", json={"token": token, "password": "yet another password"})
    assert_error(r, 410, "link_used")
    await smtp.wait_for("dave@example.com", kind="password_changed")


async def test_a_reset_spends_the_other_reset_links(api: Api, smtp: MailSink):
    await register(api, "erin@example.com")
    for _ in range(2):
        assert (await api.client.post("/api/auth/password-reset", json={"email": "erin@example.com"})).status_code == 202
    first = smtp.token_in(await smtp.wait_for("erin@example.com", kind="reset_password", count=1), "reset-password")
    second = smtp.token_in(await smtp.wait_for("erin@example.com", kind="reset_password", count=2), "reset-password")
    r = await api.client.post("/api/auth/password-reset/confirm", json={"token": second, "password": "the second password"})
    assert r.status_code == 200, r.text
    r = await api.client.post("/api/auth/password-reset/confirm", json={"token": first, "password": "the first password"})
    assert_error(r, 410, "link_used")
    assert (await api.client.post("/api/auth/login", json={"email": "erin@example.com", "password": "the second password"})).status_code == 200


async def test_reset_requests_are_limited_per_source_and_per_address(make_settings, sqlite_url, smtp: MailSink):
    settings = _settings(make_settings, sqlite_url, smtp, mail_per_ip=3, mail_per_account=2, trusted_proxies="127.0.0.1")
    async with in_process_api(settings) as api:
        await register(api, "frank@example.com")
        await settle(api)
        # Per address: three requests from three sources all get the usual answer; two mails go out.
        for i in range(3):
            r = await api.client.post("/api/auth/password-reset", json={"email": "frank@example.com"},
                                      headers={"X-Forwarded-For": f"198.51.100.{i}"})
            assert r.status_code == 202, r.text
        for i in range(3):  # the same for an address without an account
            r = await api.client.post("/api/auth/password-reset", json={"email": "ghost@example.com"},
                                      headers={"X-Forwarded-For": f"198.51.100.{10 + i}"})
            assert r.status_code == 202, r.text
        await settle(api)
        assert len(smtp.mails("frank@example.com", "reset_password")) == 2
        # Per source: the fourth request from one address is refused, whatever it asks about.
        source = {"X-Forwarded-For": "203.0.113.7"}
        for email in ("frank@example.com", "ghost@example.com", "frank@example.com"):
            assert (await api.client.post("/api/auth/password-reset", json={"email": email}, headers=source)).status_code == 202
        for email in ("frank@example.com", "ghost@example.com"):
            r = await api.client.post("/api/auth/password-reset", json={"email": email}, headers=source)
            assert_error(r, 429, "rate_limited")
            assert int(r.headers["Retry-After"]) >= 1
        # Another source is not held back by that.
        r = await api.client.post("/api/auth/password-reset", json={"email": "frank@example.com"},
                                  headers={"X-Forwarded-For": "203.0.113.8"})
        assert r.status_code == 202


# ----------------------------------------------------------------------------- change password / email
async def test_change_password_needs_the_old_one_and_ends_the_other_sessions(api: Api, smtp: MailSink):
    here = await register(api, "gina@example.com")
    there = (await api.client.post("/api/auth/login", json={"email": "gina@example.com", "password": PASSWORD})).json()
    r = await api.client.post("/api/me/password", json={"current_password": "wrong password", "new_password": "a new long password"},
                              headers=bearer(here))
    assert_error(r, 403, "wrong_password")
    assert (await api.client.get("/api/me", headers=bearer(there))).status_code == 200  # nothing happened
    ws = api.base_url.replace("http://", "ws://") + "/signal?token="
    async with SignalClient.connect(ws + here["access_token"]) as ws_here, SignalClient.connect(ws + there["access_token"]) as ws_there:
        for client in (ws_here, ws_there):
            await client.send({"type": "ping"})
            await client.expect("pong")
        r = await api.client.post("/api/me/password", json={"current_password": PASSWORD, "new_password": "a new long password"},
                                  headers=bearer(here))
        assert r.status_code == 204, r.text
        assert await ws_there.wait_closed(timeout=10) == 4003  # the other session's socket closes at once
        await ws_here.send({"type": "ping"})
        await ws_here.expect("pong", timeout=10)  # this one stays
    assert (await api.client.get("/api/me", headers=bearer(here))).status_code == 200  # this session stays
    assert (await api.client.post("/api/auth/refresh", json={"refresh_token": here["refresh_token"]})).status_code == 200
    assert_error(await api.client.get("/api/me", headers=bearer(there)), 401, "session_revoked")
    assert_error(await api.client.post("/api/auth/refresh", json={"refresh_token": there["refresh_token"]}), 401,
                 "invalid_refresh_token")
    assert_error(await api.client.post("/api/auth/login", json={"email": "gina@example.com", "password": PASSWORD}),
                 401, "invalid_credentials")
    await smtp.wait_for("gina@example.com", kind="password_changed")


async def test_change_email_reverifies_the_new_address(api: Api, smtp: MailSink):
    hana = await register(api, "hana@example.com")
    await register(api, "taken@example.com")
    body = {"email": "hana@new.example.com", "password": "wrong password"}
    assert_error(await api.client.post("/api/me/email", json=body, headers=bearer(hana)), 403, "wrong_password")
    # A taken address gets the same answer, and no link.
    r = await api.client.post("/api/me/email", json={"email": "taken@example.com", "password": PASSWORD}, headers=bearer(hana))
    assert r.status_code == 202, r.text
    taken_answer = r.json()
    r = await api.client.post("/api/me/email", json={"email": "hana@new.example.com", "password": PASSWORD}, headers=bearer(hana))
    assert r.status_code == 202 and r.json() == taken_answer
    await settle(api)
    assert smtp.mails("taken@example.com", "change_email") == []
    assert len(smtp.mails("hana@example.com", "email_change_requested")) == 2  # the owner hears of both
    token = smtp.token_in(await smtp.wait_for("hana@new.example.com", kind="change_email"), "verify-email")
    # Until confirmed, nothing changed.
    assert (await api.client.get("/api/me", headers=bearer(hana))).json()["email"] == "hana@example.com"
    r = await api.client.post("/api/auth/verify-email", json={"token": token}, headers=bearer(hana))
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == "hana@new.example.com" and r.json()["user"]["email_verified"] is True
    assert_error(await api.client.post("/api/auth/verify-email", json={"token": token}), 410, "link_used")
    assert_error(await api.client.post("/api/auth/login", json={"email": "hana@example.com", "password": PASSWORD}),
                 401, "invalid_credentials")
    assert (await api.client.post("/api/auth/login", json={"email": "hana@new.example.com", "password": PASSWORD})).status_code == 200
    changed = await smtp.wait_for("hana@example.com", kind="email_changed")
    assert "hana@new.example.com" in changed.text
    # The old address's verification link (from registration) no longer verifies anything.
    old_link = smtp.token_in(await smtp.wait_for("hana@example.com", kind="verify_email"), "verify-email")
    assert (await api.client.post("/api/auth/verify-email", json={"token": old_link})).status_code in (400, 410)


# ----------------------------------------------------------------------------- blocked mode
async def test_blocked_unverified_accounts_register_without_revealing_addresses(make_settings, database_url, smtp: MailSink):
    async with in_process_api(_settings(make_settings, database_url, smtp, unverified_accounts="blocked")) as api:
        first = await api.client.post("/api/auth/register", json={"email": "ivan@example.com", "password": PASSWORD, "name": "I"})
        await settle(api)  # (two at once: whichever is made first owns the address)
        again = await api.client.post("/api/auth/register", json={"email": "ivan@example.com", "password": "other password", "name": "X"})
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json() and "access_token" not in first.json()
        token = smtp.token_in(await smtp.wait_for("ivan@example.com", kind="verify_email"), "verify-email")
        await smtp.wait_for("ivan@example.com", kind="account_exists")
        # Not signed in before the address is confirmed — and only the right password learns that.
        assert_error(await api.client.post("/api/auth/login", json={"email": "ivan@example.com", "password": "other password"}),
                     401, "invalid_credentials")
        assert_error(await api.client.post("/api/auth/login", json={"email": "ivan@example.com", "password": PASSWORD}),
                     403, "email_unverified")
        # The signed-out "send it again" answers alike for any address.
        a = await api.client.post("/api/auth/verify-email/resend", json={"email": "ivan@example.com"})
        b = await api.client.post("/api/auth/verify-email/resend", json={"email": "nobody@example.com"})
        assert a.status_code == b.status_code == 202 and a.json() == b.json()
        await settle(api)
        assert smtp.mails("nobody@example.com") == []
        assert len(smtp.mails("ivan@example.com", "verify_email")) == 2
        assert (await api.client.post("/api/auth/verify-email", json={"token": token})).status_code == 200
        assert (await api.client.post("/api/auth/login", json={"email": "ivan@example.com", "password": PASSWORD})).status_code == 200


# ----------------------------------------------------------------------------- without SMTP
async def test_without_smtp_the_link_goes_to_the_log_clearly_marked(make_settings, sqlite_url, caplog):
    caplog.set_level(logging.WARNING, logger="codesync.mail")
    async with in_process_api(_settings(make_settings, sqlite_url, None)) as api:
        await register(api, "judy@example.com")
        await settle(api)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "codesync.mail")
    assert "MAIL NOT SENT (CODESYNC_SMTP_URL is not set)" in logged
    assert "To: judy@example.com" in logged
    assert f"LINK: {api.settings.base_url}/#/verify-email/" in logged


async def test_an_unreachable_smtp_server_changes_no_answer(make_settings, sqlite_url, caplog):
    caplog.set_level(logging.ERROR, logger="codesync.mail")
    settings = _settings(make_settings, sqlite_url, None, smtp_url=f"smtp://127.0.0.1:{free_port()}", smtp_timeout=3)
    async with in_process_api(settings) as api:
        await register(api, "kim@example.com")
        r = await api.client.post("/api/auth/password-reset", json={"email": "kim@example.com"})
        assert r.status_code == 202
        await settle(api)
    assert any("could not send" in r.getMessage() for r in caplog.records)


async def test_a_bad_smtp_url_stops_the_server_from_starting(make_settings, sqlite_url):
    from signaling.app import create_app
    from signaling.mail import MailConfigError

    with pytest.raises(MailConfigError):
        create_app(make_settings(database_url=sqlite_url, smtp_url="http://mail.example.com"))


# ----------------------------------------------------------------------------- migration
async def test_migration_0005_keeps_accounts_and_what_references_them(database_url, tmp_path):
    """A database at 0003 with a user, a room, a membership and a session upgrades to head:
    nothing that references users is lost (plain ADD COLUMNs), nobody becomes verified or an
    administrator by the upgrade, the new tables are there and empty."""
    from alembic import command
    from sqlalchemy import text

    from codesync import db
    from codesync.settings import Settings

    engine = db.create_engine(Settings(database_url=database_url, data_dir=tmp_path / "data"))

    def upgrade_to(revision: str):
        def run(connection) -> None:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

        return run

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("0003"))
            await conn.execute(text(
                "INSERT INTO users (id, email, name, email_verified, created_at) VALUES ('u1', 'a@example.com', 'A', false, '2026-11-01 10:00:00')"))
            await conn.execute(text(
                "INSERT INTO rooms (id, name, language, owner_id, created_at) VALUES ('r1', 'R', 'python', 'u1', '2026-11-01 10:00:00')"))
            await conn.execute(text(
                "INSERT INTO memberships (room_id, user_id, role, created_at) VALUES ('r1', 'u1', 'owner', '2026-11-01 10:00:00')"))
            await conn.execute(text(
                "INSERT INTO auth_sessions (id, user_id, created_at) VALUES ('s1', 'u1', '2026-11-01 10:00:00')"))
        await db.migrate(engine)
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT email_verified, is_admin, disabled_at, color FROM users WHERE id = 'u1'"))).one()
            assert tuple(row) == (False, False, None, None)
            for table, n in (("rooms", 1), ("memberships", 1), ("auth_sessions", 1), ("account_tokens", 0),
                             ("signup_invites", 0), ("deleted_accounts", 0)):
                assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == n, table
    finally:
        await engine.dispose()
