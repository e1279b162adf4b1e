"""Registration modes (open, invite-only, email domains, closed) and administrators' signup
invites, on SQLite and PostgreSQL. Refusals come before the address is looked up, so they are
the same for addresses with and without an account.
"""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.api import Api, in_process_api
from tests.helpers.smtp import MailSink, smtp_server

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def bearer(body: dict | str) -> dict[str, str]:
    token = body if isinstance(body, str) else body["access_token"]
    return {"Authorization": f"Bearer {token}"}


def reg(email: str, invite: str | None = None) -> dict:
    body = {"email": email, "password": PASSWORD, "name": email.split("@")[0]}
    if invite:
        body["invite"] = invite
    return body


@pytest.fixture
def smtp():
    with smtp_server() as sink:
        yield sink


async def make_admin(api: Api, email: str = "root@example.com") -> dict:
    """An administrator made the way an operator does (``codesync user create --admin``)."""
    from signaling import admin

    await admin.create_user(api.settings, email, "Root", PASSWORD, is_admin=True)
    r = await api.client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json()["user"]["is_admin"] is True and r.json()["user"]["email_verified"] is True
    return r.json()


async def seeded_owner_invite(api: Api, owner: dict, role: str = "editor") -> tuple[str, str]:
    room = (await api.client.post("/api/rooms", json={"name": "r"}, headers=bearer(owner))).json()["id"]
    r = await api.client.post(f"/api/rooms/{room}/invites", json={"role": role}, headers=bearer(owner))
    assert r.status_code == 201, r.text
    return room, r.json()["token"]


async def test_closed_registration_refuses_everyone_but_admin_invites(make_settings, database_url, smtp: MailSink):
    async with in_process_api(make_settings(database_url=database_url, registration="closed", smtp_url=smtp.url)) as api:
        policy = (await api.client.get("/api/auth/registration")).json()
        assert policy["mode"] == "closed"
        root = await make_admin(api)
        # Refused alike for a new address and for the administrator's own (nothing revealed).
        for email in ("new@example.com", "root@example.com"):
            assert_error(await api.client.post("/api/auth/register", json=reg(email)), 403, "registration_closed")
        # An admin's signup invite, bound to an address, mailed there.
        r = await api.client.post("/api/admin/signup-invites", json={"email": "Invited@Example.com"}, headers=bearer(root))
        assert r.status_code == 201, r.text
        invite = r.json()
        mail = await smtp.wait_for("invited@example.com", kind="signup_invite")
        assert invite["url"] in mail.text
        assert_error(await api.client.post("/api/auth/register", json=reg("other@example.com", invite["token"])),
                     403, "invite_email_mismatch")
        r = await api.client.post("/api/auth/register", json=reg("invited@example.com", invite["token"]))
        assert r.status_code == 201, r.text
        assert r.json()["user"]["email_verified"] is True  # the invitation reached this address
        # Single use.
        assert_error(await api.client.post("/api/auth/register", json=reg("invited2@example.com", invite["token"])),
                     400, "invite_invalid")
        # An open (unbound) invite, revoked before use, lets nobody in.
        r = await api.client.post("/api/admin/signup-invites", json={}, headers=bearer(root))
        open_invite = r.json()
        assert (await api.client.delete(f"/api/admin/signup-invites/{open_invite['id']}", headers=bearer(root))).status_code == 204
        assert_error(await api.client.post("/api/auth/register", json=reg("late@example.com", open_invite["token"])),
                     400, "invite_invalid")
        listed = (await api.client.get("/api/admin/signup-invites", headers=bearer(root))).json()["invites"]
        assert {i["id"] for i in listed} == {invite["id"], open_invite["id"]} and all("token" not in i for i in listed)


async def test_invite_only_registration_needs_a_live_room_invite(make_settings, database_url):
    async with in_process_api(make_settings(database_url=database_url, registration="invite")) as api:
        root = await make_admin(api)
        assert_error(await api.client.post("/api/auth/register", json=reg("a@example.com")), 403, "invite_required")
        room, token = await seeded_owner_invite(api, root)
        assert_error(await api.client.post("/api/auth/register", json=reg("a@example.com", "not-a-token")), 403,
                     "invite_required")
        r = await api.client.post("/api/auth/register", json=reg("a@example.com", token))
        assert r.status_code == 201, r.text
        # The new account is in the invited room with the invite's role.
        rooms = (await api.client.get("/api/rooms", headers=bearer(r.json()))).json()["rooms"]
        assert [(x["id"], x["role"]) for x in rooms] == [(room, "editor")]
        # A revoked room invite no longer opens the door.
        invites = (await api.client.get(f"/api/rooms/{room}/invites", headers=bearer(root))).json()["invites"]
        for inv in invites:
            await api.client.delete(f"/api/rooms/{room}/invites/{inv['id']}", headers=bearer(root))
        assert_error(await api.client.post("/api/auth/register", json=reg("b@example.com", token)), 400, "invite_invalid")


async def test_domain_allow_list(make_settings, database_url):
    settings = make_settings(database_url=database_url, registration="domain", registration_domains="Example.org, @corp.example")
    async with in_process_api(settings) as api:
        policy = (await api.client.get("/api/auth/registration")).json()
        assert policy == {"mode": "domain", "domains": ["example.org", "corp.example"],
                          "unverified_accounts": "full", "mail": "log"}
        for email in ("x@example.com", "x@sub.example.org", "x@example.org.evil.test"):
            assert_error(await api.client.post("/api/auth/register", json=reg(email)), 403, "domain_not_allowed")
        ok = await api.client.post("/api/auth/register", json=reg("Ann@EXAMPLE.org"))
        assert ok.status_code == 201, ok.text
        assert (await api.client.post("/api/auth/register", json=reg("bo@corp.example"))).status_code == 201
        # Changing the address cannot leave the allowed domains either.
        r = await api.client.post("/api/me/email", json={"email": "ann@example.com", "password": PASSWORD}, headers=bearer(ok.json()))
        assert_error(r, 403, "domain_not_allowed")
        # An administrator's invite lets an outside address in.
        root = await make_admin(api, "root@example.org")
        invite = (await api.client.post("/api/admin/signup-invites", json={"email": "guest@elsewhere.test"},
                                        headers=bearer(root))).json()
        assert (await api.client.post("/api/auth/register", json=reg("guest@elsewhere.test", invite["token"]))).status_code == 201


async def test_open_registration_still_says_when_an_address_is_taken(api_sqlite: Api):
    """Where registration signs in at once, a taken address has to be said (409); where
    unverified accounts are blocked it is not (tests/test_accounts_email.py)."""
    await api_sqlite.register(email="dup@example.com")
    assert_error(await api_sqlite.client.post("/api/auth/register", json=reg("dup@example.com")), 409, "email_taken")
    assert (await api_sqlite.client.get("/api/auth/registration")).json()["mode"] == "open"
