"""Profile, sign-in providers and account deletion, against real databases and a real OpenID
provider (tests/oidc, the same as tests/test_oauth.py):

- display name and colour; linking a provider from the account page and unlinking it, never
  the last way in; a provider identity already linked elsewhere is refused;
- OAuth sign-in with a verified email links to a *verified* password account (its password
  and sessions stay) and takes an *unverified* one over (its sessions end at once);
- deleting an account: the user decides for each room they alone own (transfer or delete),
  rooms shared with other owners move to them, stored document updates of surviving rooms
  stay, a tombstone records the id, its sockets close and the other members see it leave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import col, select

from codesync.models import AuthSession, DeletedAccount, DocumentUpdate, Membership, Room, User
from signaling.state import STATE
from tests.helpers.api import Api, in_process_api
from tests.helpers.stack import SignalClient
from tests.helpers.oauth import Browser, settings_for

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def bearer(body: dict | str) -> dict[str, str]:
    token = body if isinstance(body, str) else body["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def register(api: Api, name: str, domain: str = "example.com") -> dict:
    r = await api.client.post("/api/auth/register", json={"email": f"{name}@{domain}", "password": PASSWORD, "name": name.title()})
    assert r.status_code == 201, r.text
    return r.json()


async def verify_in_db(api: Api, user_id: str) -> None:
    async with api.server.app[STATE].sessions() as session:
        user = await session.get(User, user_id)
        user.email_verified = True
        session.add(user)
        await session.commit()


@pytest.fixture
async def oauth_api(make_settings, database_url, oauth_env) -> AsyncIterator[Api]:  # noqa: F811
    async with in_process_api(settings_for(make_settings, oauth_env, database_url=database_url), oauth_env.signaling_port) as a:
        yield a


# ----------------------------------------------------------------------------- profile
async def test_name_and_colour(api: Api):
    me = await register(api, "pat")
    r = await api.client.patch("/api/me", json={"name": "  Patricia ", "color": "#1A2b3C"}, headers=bearer(me))
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["color"]) == ("Patricia", "#1a2b3c")
    for bad in ({"color": "red"}, {"color": "#12345"}, {"name": ""}, {"name": "a\nb"}):
        assert r.status_code == 200
        r2 = await api.client.patch("/api/me", json=bad, headers=bearer(me))
        assert r2.status_code == 422, (bad, r2.text)
    assert (await api.client.get("/api/me", headers=bearer(me))).json()["color"] == "#1a2b3c"
    r = await api.client.patch("/api/me", json={"color": None}, headers=bearer(me))
    assert r.json()["color"] is None and r.json()["name"] == "Patricia"


# ----------------------------------------------------------------------------- providers
async def _link(api: Api, browser: Browser, tokens: dict, login: str, provider: str = "local") -> dict[str, str]:
    r = await browser.http.post(f"{api.settings.base_url}/api/me/identities/{provider}/link", headers=bearer(tokens))
    assert r.status_code == 200, r.text
    r = await browser.http.get(r.json()["url"])
    assert r.status_code == 302, r.text
    callback = await browser.authorize(r.headers["location"], login)
    r = await browser.http.get(callback)
    assert r.status_code == 302
    prefix = f"{api.settings.base_url}/#/account?"
    assert r.headers["location"].startswith(prefix), r.headers["location"]
    from urllib.parse import parse_qs

    return {k: v[0] for k, v in parse_qs(r.headers["location"][len(prefix):]).items()}


async def test_link_and_unlink_providers_never_the_last_way_in(oauth_api: Api):
    api = oauth_api
    quinn = await register(api, "quinn")
    async with Browser(api) as browser:
        assert await _link(api, browser, quinn, "quinn-at-idp") == {"linked": "local"}
    listed = (await api.client.get("/api/me/identities", headers=bearer(quinn))).json()
    assert [(i["provider"], i["email"]) for i in listed["identities"]] == [("local", "quinn-at-idp@example.test")]
    assert [p["name"] for p in listed["available"]] == ["github"] and listed["has_password"] is True
    # The linked identity signs in to Quinn's account.
    async with Browser(api) as browser:
        tokens = await browser.sign_in("quinn-at-idp")
    assert (await api.client.get("/api/me", headers=bearer(tokens["access_token"]))).json()["id"] == quinn["user"]["id"]
    # Someone else cannot link that identity to their account.
    rita = await register(api, "rita")
    async with Browser(api) as browser:
        assert (await _link(api, browser, rita, "quinn-at-idp"))["error"] == "identity_in_use"
    # Without the link cookie (another browser, or a replay) "start?link=1" links nothing.
    async with Browser(api) as stranger:
        r = await stranger.http.get(f"{api.settings.base_url}/api/auth/oauth/local/start?link=1")
        assert r.status_code == 302 and "error=link_expired" in r.headers["location"]
    # Quinn has a password: unlinking is fine.
    identity_id = listed["identities"][0]["id"]
    assert (await api.client.delete(f"/api/me/identities/{identity_id}", headers=bearer(quinn))).status_code == 204
    # An OAuth-only account cannot drop its only provider.
    async with Browser(api) as browser:
        sam = await browser.sign_in("sam")
    ids = (await api.client.get("/api/me/identities", headers=bearer(sam["access_token"]))).json()
    assert ids["has_password"] is False
    r = await api.client.delete(f"/api/me/identities/{ids['identities'][0]['id']}", headers=bearer(sam["access_token"]))
    assert_error(r, 409, "last_sign_in_method")
    # With a second provider linked, the first may go; then the second is the last.
    async with Browser(api) as browser:
        assert await _link(api, browser, sam, "sam", provider="github") == {"linked": "github"}
    ids = (await api.client.get("/api/me/identities", headers=bearer(sam["access_token"]))).json()["identities"]
    local = next(i for i in ids if i["provider"] == "local")
    github = next(i for i in ids if i["provider"] == "github")
    assert (await api.client.delete(f"/api/me/identities/{local['id']}", headers=bearer(sam["access_token"]))).status_code == 204
    assert_error(await api.client.delete(f"/api/me/identities/{github['id']}", headers=bearer(sam["access_token"])),
                 409, "last_sign_in_method")
    # Another user's identity id is not found for me.
    assert_error(await api.client.delete(f"/api/me/identities/{github['id']}", headers=bearer(rita)), 404, "not_found")


async def test_oauth_links_a_verified_account_and_takes_an_unverified_one_over(oauth_api: Api):
    api = oauth_api
    # Verified password account: the provider's verified email links to it; nothing ends.
    vera = await register(api, "vera", "example.test")
    await verify_in_db(api, vera["user"]["id"])
    async with Browser(api) as browser:
        tokens = await browser.sign_in("vera")
    assert (await api.client.get("/api/me", headers=bearer(tokens["access_token"]))).json()["id"] == vera["user"]["id"]
    assert (await api.client.get("/api/me", headers=bearer(vera))).status_code == 200
    assert (await api.client.post("/api/auth/login", json={"email": "vera@example.test", "password": PASSWORD})).status_code == 200
    # Unverified (someone registered the address first): taken over — password gone, every
    # session ended at once, its socket closed.
    squat = await register(api, "walt", "example.test")
    async with SignalClient.connect(api.base_url.replace("http://", "ws://") + f"/signal?token={squat['access_token']}") as ws:
        await ws.send({"type": "ping"})
        await ws.expect("pong")
        async with Browser(api) as browser:
            tokens = await browser.sign_in("walt")
        assert await ws.wait_closed(timeout=10) == 4003
    assert_error(await api.client.get("/api/me", headers=bearer(squat)), 401, "session_revoked")
    assert_error(await api.client.post("/api/auth/login", json={"email": "walt@example.test", "password": PASSWORD}),
                 401, "invalid_credentials")
    me = (await api.client.get("/api/me", headers=bearer(tokens["access_token"]))).json()
    assert me["id"] == squat["user"]["id"] and me["email_verified"] is True and me["has_password"] is False


async def test_a_disabled_account_cannot_sign_in_with_a_provider(oauth_api: Api):
    api = oauth_api
    async with Browser(api) as browser:
        first = await browser.sign_in("xena")
    uid = (await api.client.get("/api/me", headers=bearer(first["access_token"]))).json()["id"]
    async with api.server.app[STATE].sessions() as session:
        from codesync.models import utcnow

        user = await session.get(User, uid)
        user.disabled_at = utcnow()
        session.add(user)
        await session.commit()
    async with Browser(api) as browser:
        result = await browser.sign_in("xena")
    assert result["error"] == "account_disabled", result


async def test_oauth_registration_follows_the_registration_mode(make_settings, sqlite_url, oauth_env):  # noqa: F811
    settings = settings_for(make_settings, oauth_env, database_url=sqlite_url, registration="closed")
    async with in_process_api(settings, oauth_env.signaling_port) as api:
        async with Browser(api) as browser:
            result = await browser.sign_in("yuri")
        assert result["error"] == "registration_closed", result
        async with api.server.app[STATE].sessions() as session:
            assert (await session.exec(select(User))).all() == []


# ----------------------------------------------------------------------------- deletion
async def test_delete_account_rooms_decided_by_the_user(api: Api):
    alice, bob, carol = await register(api, "alice"), await register(api, "bob"), await register(api, "carol")
    outsider = await register(api, "dan")
    state = api.server.app[STATE]

    async def room(owner: dict, name: str, **members: str) -> str:
        rid = (await api.client.post("/api/rooms", json={"name": name}, headers=bearer(owner))).json()["id"]
        for who, role in members.items():
            token = {"bob": bob, "carol": carol, "alice": alice}[who]
            inv = (await api.client.post(f"/api/rooms/{rid}/invites", json={"role": "editor" if role == "owner" else role},
                                         headers=bearer(owner))).json()
            assert (await api.client.post("/api/invites/accept", json={"token": inv["token"]}, headers=bearer(token))).status_code == 200
            if role == "owner":
                r = await api.client.put(f"/api/rooms/{rid}/members/{token['user']['id']}", json={"role": "owner"}, headers=bearer(owner))
                assert r.status_code == 200, r.text
        return rid

    shared = await room(alice, "shared", bob="editor", carol="viewer")  # alice alone owns it
    solo = await room(alice, "solo")  # nobody else
    coowned = await room(alice, "co-owned", bob="owner")  # bob owns it too
    bobs = await room(bob, "bob's", alice="editor")
    async with state.sessions() as session:
        for rid in (shared, solo, coowned):
            session.add(DocumentUpdate(room_id=rid, data=b"update by alice"))
        await session.commit()

    plan = (await api.client.get("/api/me/deletion", headers=bearer(alice))).json()["rooms"]
    needs = {r["id"]: r for r in plan if r["needs_decision"]}
    assert set(needs) == {shared, solo} and {r["id"] for r in plan} == {shared, solo, coowned}
    assert [m["name"] for m in needs[shared]["members"]] == ["Bob", "Carol"]

    # Refusals: wrong password; undecided rooms (listed); a new owner who is not a member.
    assert_error(await api.client.post("/api/me/delete", json={"password": "nope"}, headers=bearer(alice)), 403, "wrong_password")
    r = await api.client.post("/api/me/delete", json={"password": PASSWORD, "rooms": {solo: "delete"}}, headers=bearer(alice))
    assert_error(r, 409, "rooms_need_decision")
    assert [x["id"] for x in r.json()["error"]["rooms"]] == [shared]
    r = await api.client.post("/api/me/delete", json={"password": PASSWORD, "rooms": {solo: "delete", shared: outsider["user"]["id"]}},
                              headers=bearer(alice))
    assert_error(r, 422, "invalid")
    assert (await api.client.get("/api/me", headers=bearer(alice))).status_code == 200  # nothing happened

    ws_url = api.base_url.replace("http://", "ws://") + "/signal?token="
    async with SignalClient.connect(ws_url + alice["access_token"]) as a, SignalClient.connect(ws_url + bob["access_token"]) as b:
        for client in (a, b):
            await client.subscribe(shared)
            await client.expect("presence")
        r = await api.client.post("/api/me/delete", json={"password": PASSWORD, "rooms": {solo: "delete", shared: carol["user"]["id"]}},
                                  headers=bearer(alice))
        assert r.status_code == 200, r.text
        assert r.json() == {"deleted_rooms": [solo], "transferred_rooms": [shared]}
        assert await a.wait_closed(timeout=10) == 4003
        await b.expect("presence", lambda f: [p["name"] for p in f["peers"]] == ["Bob"], timeout=10)

    assert_error(await api.client.get("/api/me", headers=bearer(alice)), 401, "invalid_token")
    assert_error(await api.client.post("/api/auth/login", json={"email": "alice@example.com", "password": PASSWORD}),
                 401, "invalid_credentials")
    async with state.sessions() as session:
        rooms = {r.id: r for r in (await session.exec(select(Room))).all()}
        assert set(rooms) == {shared, coowned, bobs}
        assert rooms[shared].owner_id == carol["user"]["id"] and rooms[coowned].owner_id == bob["user"]["id"]
        roles = {(m.room_id, m.user_id): m.role for m in (await session.exec(select(Membership))).all()}
        assert roles[(shared, carol["user"]["id"])] == "owner"
        assert not any(uid == alice["user"]["id"] for _, uid in roles)
        # Stored updates of surviving rooms stay; the deleted room's are gone.
        kept = {u.room_id for u in (await session.exec(select(DocumentUpdate))).all()}
        assert kept == {shared, coowned}
        assert (await session.get(DeletedAccount, alice["user"]["id"])) is not None
        assert (await session.exec(select(AuthSession).where(col(AuthSession.user_id) == alice["user"]["id"]))).all() == []
    # Carol can run the room now, invites included.
    r = await api.client.post(f"/api/rooms/{shared}/invites", json={"role": "editor"}, headers=bearer(carol))
    assert r.status_code == 201, r.text


async def test_an_account_without_a_password_confirms_with_its_address(oauth_api: Api):
    api = oauth_api
    async with Browser(api) as browser:
        tokens = await browser.sign_in("zoe")
    r = await api.client.post("/api/me/delete", json={"confirm_email": "someone@example.test"}, headers=bearer(tokens["access_token"]))
    assert_error(r, 403, "confirmation_required")
    r = await api.client.post("/api/me/delete", json={"confirm_email": "ZOE@example.test"}, headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    async with api.server.app[STATE].sessions() as session:
        assert (await session.exec(select(User))).all() == []


async def test_an_admin_deletes_a_user_transferring_rooms_by_default(api: Api):
    from signaling import admin

    await admin.create_user(api.settings, "root@example.com", "Root", PASSWORD, is_admin=True)
    root = (await api.client.post("/api/auth/login", json={"email": "root@example.com", "password": PASSWORD})).json()
    owner, member = await register(api, "olga"), await register(api, "mike")
    rid = (await api.client.post("/api/rooms", json={"name": "o"}, headers=bearer(owner))).json()["id"]
    lonely = (await api.client.post("/api/rooms", json={"name": "lonely"}, headers=bearer(owner))).json()["id"]
    inv = (await api.client.post(f"/api/rooms/{rid}/invites", json={"role": "viewer"}, headers=bearer(owner))).json()
    await api.client.post("/api/invites/accept", json={"token": inv["token"]}, headers=bearer(member))
    r = await api.client.post(f"/api/admin/users/{owner['user']['id']}/delete", json={}, headers=bearer(root))
    assert_error(r, 409, "rooms_need_decision")
    r = await api.client.post(f"/api/admin/users/{owner['user']['id']}/delete", json={"default": "transfer"}, headers=bearer(root))
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted_rooms": [lonely], "transferred_rooms": [rid]}
    rooms = (await api.client.get("/api/rooms", headers=bearer(member))).json()["rooms"]
    assert [(x["id"], x["role"]) for x in rooms] == [(rid, "owner")]
