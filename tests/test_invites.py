"""Invites are only as good as their creator's right to make them, and their tokens stay out of
logs: a removed (or demoted) editor's viewer invite is refused, also when the creator's role
changed behind the API's back; the token is accepted from the request body, the older path
form keeps working, and neither shows up in the server's log.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from codesync.models import Membership
from signaling.state import STATE
from tests.helpers.api import Api, account
from tests.helpers.stack import signaling_stack
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(90)


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


async def _call(api: Api, who: dict, method: str, path: str, **kw) -> httpx.Response:
    return await api.client.request(method, path, headers=api.auth(who), **kw)


async def _accept(api: Api, who: dict, token: str) -> httpx.Response:
    return await _call(api, who, "POST", "/api/invites/accept", json={"token": token})


async def _invite(api: Api, who: dict, room_id: str, role: str) -> dict:
    r = await _call(api, who, "POST", f"/api/rooms/{room_id}/invites", json={"role": role})
    assert r.status_code == 201, r.text
    return r.json()


async def test_a_removed_or_demoted_editors_invites_are_refused(api):
    owner, eddie, edna, mallory = [await account(api, n) for n in ("Owner", "Eddie", "Edna", "Mallory")]
    room = (await _call(api, owner, "POST", "/api/rooms", json={"name": "class"})).json()
    rid = room["id"]
    for editor in (eddie, edna):
        r = await _accept(api, editor, (await _invite(api, owner, rid, "editor"))["token"])
        assert r.status_code == 200 and r.json()["role"] == "editor", r.text

    # Each editor mints viewer invites while they may.
    eddie_invite = await _invite(api, eddie, rid, "viewer")
    edna_invite = await _invite(api, edna, rid, "viewer")
    owner_invite = await _invite(api, owner, rid, "viewer")

    # Eddie is removed; he tries to rejoin with the invite he made earlier, and so does Mallory.
    r = await _call(api, owner, "DELETE", f"/api/rooms/{rid}/members/{eddie['user']['id']}")
    assert r.status_code == 204
    assert_error(await _accept(api, eddie, eddie_invite["token"]), 410, "invite_revoked")
    assert_error(await _accept(api, mallory, eddie_invite["token"]), 410, "invite_revoked")
    assert_error(await _call(api, eddie, "GET", f"/api/rooms/{rid}"), 404, "not_found")

    # Edna is demoted to viewer: she may no longer invite, so her invite dies too.
    r = await _call(api, owner, "PUT", f"/api/rooms/{rid}/members/{edna['user']['id']}", json={"role": "viewer"})
    assert r.status_code == 200
    assert_error(await _accept(api, mallory, edna_invite["token"]), 410, "invite_revoked")
    listed = (await _call(api, owner, "GET", f"/api/rooms/{rid}/invites")).json()["invites"]
    ids = {i["id"] for i in listed}
    assert owner_invite["id"] in ids and not ids & {eddie_invite["id"], edna_invite["id"]}  # dead ones are not offered

    # The owner's own invite is untouched and works.
    r = await _accept(api, mallory, owner_invite["token"])
    assert r.status_code == 200 and r.json()["role"] == "viewer"


async def test_an_owner_demoted_to_editor_keeps_only_viewer_invites(api):
    first, second, newcomer = [await account(api, n) for n in ("First", "Second", "New")]
    room = (await _call(api, first, "POST", "/api/rooms", json={"name": "two owners"})).json()
    rid = room["id"]
    r = await _accept(api, second, (await _invite(api, first, rid, "editor"))["token"])
    assert r.status_code == 200
    r = await _call(api, first, "PUT", f"/api/rooms/{rid}/members/{second['user']['id']}", json={"role": "owner"})
    assert r.status_code == 200
    editor_invite = await _invite(api, first, rid, "editor")
    viewer_invite = await _invite(api, first, rid, "viewer")
    r = await _call(api, second, "PUT", f"/api/rooms/{rid}/members/{first['user']['id']}", json={"role": "editor"})
    assert r.status_code == 200
    assert_error(await _accept(api, newcomer, editor_invite["token"]), 410, "invite_revoked")
    r = await _accept(api, newcomer, viewer_invite["token"])
    assert r.status_code == 200 and r.json()["role"] == "viewer"


async def test_accept_checks_the_creators_current_role(api):
    """A role changed without the API (an admin's SQL, a restore): accepting still checks."""
    owner, eddie, mallory = [await account(api, n) for n in ("Owner", "Eddie", "Mallory")]
    rid = (await _call(api, owner, "POST", "/api/rooms", json={"name": "r"})).json()["id"]
    assert (await _accept(api, eddie, (await _invite(api, owner, rid, "editor"))["token"])).status_code == 200
    invite = await _invite(api, eddie, rid, "viewer")
    state = api.server.app[STATE]
    async with state.sessions() as session:
        await session.exec(
            update(Membership)
            .where(Membership.room_id == rid, Membership.user_id == eddie["user"]["id"])
            .values(role="viewer")
        )
        await session.commit()
    assert_error(await _accept(api, mallory, invite["token"]), 410, "invite_revoked")


async def test_accept_from_the_body_and_the_older_path(api):
    owner, a, b = [await account(api, n) for n in ("Owner", "A", "B")]
    rid = (await _call(api, owner, "POST", "/api/rooms", json={"name": "r"})).json()["id"]
    invite = await _invite(api, owner, rid, "editor")
    r = await _accept(api, a, invite["token"])
    assert r.status_code == 200 and r.json()["id"] == rid and r.json()["role"] == "editor"
    r = await _call(api, b, "POST", f"/api/invites/{invite['token']}/accept")  # existing clients
    assert r.status_code == 200 and r.json()["role"] == "editor"
    assert_error(await _call(api, a, "POST", "/api/invites/accept", json={}), 422, "invalid")
    assert_error(await _call(api, a, "POST", "/api/invites/accept", json={"token": 5}), 422, "invalid")
    assert_error(await _accept(api, a, "not-a-token"), 400, "invalid_invite")
    r = await api.client.post("/api/invites/accept", json={"token": invite["token"]})
    assert_error(r, 401, "unauthorized")


async def test_invite_tokens_never_reach_the_server_log(tmp_path):
    """A real `codesync signaling` logging at DEBUG: neither accept form writes the token."""
    async with signaling_stack(tmp_path, CODESYNC_LOG_LEVEL="DEBUG") as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            users = []
            for name in ("owner", "a", "b"):
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": "correct horse battery", "name": name})
                users.append(r.json())
            owner, a, b = users

            def auth(u: dict) -> dict:
                return {"Authorization": f"Bearer {u['access_token']}"}

            rid = (await http.post("/api/rooms", json={"name": "r"}, headers=auth(owner))).json()["id"]
            tokens = []
            for who, path_form in ((a, False), (b, True)):
                token = (await http.post(f"/api/rooms/{rid}/invites", json={"role": "viewer"}, headers=auth(owner))).json()["token"]
                tokens.append(token)
                if path_form:
                    r = await http.post(f"/api/invites/{token}/accept", headers=auth(who))
                else:
                    r = await http.post("/api/invites/accept", json={"token": token}, headers=auth(who))
                assert r.status_code == 200, r.text
            forged = tokens[0][:-6] + "AAAAAA"
            assert (await http.post(f"/api/invites/{forged}/accept", headers=auth(a))).status_code == 400
        node = stack.nodes[0]
        await wait_for(lambda: "signaling listening" in node.log(), timeout=10, what="the node's log")
        text = node.log()
        import jwt

        invite_ids = [jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens]
        assert all(i in text for i in invite_ids)  # the accepts were logged (SQL at DEBUG) ...
        for token in (*tokens, forged):  # ... their tokens were not
            assert token not in text and token.split(".")[2] not in text
