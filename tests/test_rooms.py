"""Rooms, invites and members: every endpoint for every role, refusals included.

Roles: owner, editor, viewer, non-member ("outsider") and anonymous. Non-members always get
404 (a room's existence is not revealed); members lacking the role get 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import httpx

from codesync.models import DocumentSnapshot, DocumentUpdate, Invite, Membership, Room, utcnow
from signaling.rooms import LANGUAGES, add_membership_listener
from signaling.state import STATE
from tests.helpers.api import Api, account


@dataclass
class World:
    api: Api
    owner: dict
    editor: dict
    viewer: dict
    outsider: dict
    room: dict

    @property
    def rid(self) -> str:
        return self.room["id"]

    def members(self):
        """(name, account) for every member role."""
        return (("owner", self.owner), ("editor", self.editor), ("viewer", self.viewer))

    async def call(self, who: dict | None, method: str, path: str, **kw) -> httpx.Response:
        headers = self.api.auth(who) if who is not None else {}
        return await self.api.client.request(method, path, headers=headers, **kw)


def uid(account: dict) -> str:
    return account["user"]["id"]


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


async def make_world(api: Api) -> World:
    owner = await account(api, "Olive Owner")
    editor = await account(api, "Eddie Editor")
    viewer = await account(api, "Vera Viewer")
    outsider = await account(api, "Otto Outsider")
    r = await api.client.post("/api/rooms", json={"name": "Pairing", "language": "python"}, headers=api.auth(owner))
    assert r.status_code == 201, r.text
    world = World(api, owner, editor, viewer, outsider, r.json())
    for joiner, role in ((editor, "editor"), (viewer, "viewer")):
        inv = await world.call(owner, "POST", f"/api/rooms/{world.rid}/invites", json={"role": role})
        assert inv.status_code == 201, inv.text
        acc = await world.call(joiner, "POST", f"/api/invites/{inv.json()['token']}/accept")
        assert acc.status_code == 200 and acc.json()["role"] == role, acc.text
    return world


async def test_create_and_list_rooms(api):
    a = await account(api)
    b = await account(api)
    r = await api.client.post("/api/rooms", json={"name": "  Kata  ", "language": "rust"}, headers=api.auth(a))
    assert r.status_code == 201, r.text
    room = r.json()
    assert room["name"] == "Kata" and room["language"] == "rust" and room["role"] == "owner"
    assert room["owner_id"] == uid(a) and len(room["id"]) >= 12
    default = await api.client.post("/api/rooms", json={"name": "Untyped"}, headers=api.auth(a))
    assert default.status_code == 201 and default.json()["language"] == "plaintext"

    mine = await api.client.get("/api/rooms", headers=api.auth(a))
    assert mine.status_code == 200
    assert {(x["id"], x["role"]) for x in mine.json()["rooms"]} == {(room["id"], "owner"), (default.json()["id"], "owner")}
    assert (await api.client.get("/api/rooms", headers=api.auth(b))).json() == {"rooms": []}

    assert_error(await api.client.get("/api/rooms"), 401, "unauthorized")
    assert_error(await api.client.post("/api/rooms", json={"name": "x", "language": "python"}), 401, "unauthorized")
    for bad in (
        {"name": "", "language": "python"},
        {"name": "   ", "language": "python"},
        {"name": "n" * 201, "language": "python"},
        {"name": "tab\tname", "language": "python"},
        {"name": 7, "language": "python"},
        {"name": "ok", "language": "cobol"},
        {"name": "ok", "language": ["python"]},
        {"language": "python"},
    ):
        assert_error(await api.client.post("/api/rooms", json=bad, headers=api.auth(a)), 422, "invalid")
    assert (await api.client.post("/api/rooms", json={"name": "n" * 200, "language": LANGUAGES[-1]}, headers=api.auth(a))).status_code == 201
    assert len((await api.client.get("/api/rooms", headers=api.auth(a))).json()["rooms"]) == 3


async def test_get_room_per_role(api):
    w = await make_world(api)
    for role, member in w.members():
        r = await w.call(member, "GET", f"/api/rooms/{w.rid}")
        assert r.status_code == 200, r.text
        assert r.json()["role"] == role and r.json()["name"] == "Pairing" and r.json()["language"] == "python"
        listed = (await w.call(member, "GET", "/api/rooms")).json()["rooms"]
        assert [(x["id"], x["role"]) for x in listed] == [(w.rid, role)]
    hidden = await w.call(w.outsider, "GET", f"/api/rooms/{w.rid}")
    missing = await w.call(w.outsider, "GET", "/api/rooms/doesnotexist")
    assert_error(hidden, 404, "not_found")
    assert hidden.json() == missing.json()  # a non-member cannot tell a room exists
    assert_error(await w.call(w.owner, "GET", "/api/rooms/" + "x" * 300), 404, "not_found")
    assert_error(await w.call(None, "GET", f"/api/rooms/{w.rid}"), 401, "unauthorized")


async def test_update_room_per_role(api):
    w = await make_world(api)
    path = f"/api/rooms/{w.rid}"
    r = await w.call(w.owner, "PATCH", path, json={"name": "Renamed"})
    assert r.status_code == 200 and r.json()["name"] == "Renamed" and r.json()["language"] == "python"
    r = await w.call(w.editor, "PATCH", path, json={"language": "javascript"})
    assert r.status_code == 200 and r.json()["role"] == "editor" and r.json()["language"] == "javascript"
    assert_error(await w.call(w.viewer, "PATCH", path, json={"name": "Mine"}), 403, "forbidden")
    assert_error(await w.call(w.outsider, "PATCH", path, json={"name": "Mine"}), 404, "not_found")
    assert_error(await w.call(None, "PATCH", path, json={"name": "Mine"}), 401, "unauthorized")
    for bad in ({"name": ""}, {"name": "n" * 201}, {"language": "cobol"}, {"name": 3}):
        assert_error(await w.call(w.owner, "PATCH", path, json=bad), 422, "invalid")
    room = (await w.call(w.viewer, "GET", path)).json()
    assert (room["name"], room["language"]) == ("Renamed", "javascript")


async def test_create_invite_per_role(api):
    w = await make_world(api)
    path = f"/api/rooms/{w.rid}/invites"
    for role in ("editor", "viewer"):
        r = await w.call(w.owner, "POST", path, json={"role": role})
        assert r.status_code == 201, r.text
        inv = r.json()
        assert inv["role"] == role and inv["room_id"] == w.rid
        assert inv["url"] == f"{api.settings.base_url}/#/invite/{inv['token']}"
        assert inv["token"].count(".") == 2
        claims = api.server.app[STATE].tokens.decode_invite(inv["token"])
        assert (claims.room_id, claims.role, claims.invite_id) == (w.rid, role, inv["id"])
    # Editors may hand out read access only.
    assert (await w.call(w.editor, "POST", path, json={"role": "viewer"})).status_code == 201
    assert_error(await w.call(w.editor, "POST", path, json={"role": "editor"}), 403, "forbidden")
    assert_error(await w.call(w.viewer, "POST", path, json={"role": "viewer"}), 403, "forbidden")
    assert_error(await w.call(w.outsider, "POST", path, json={"role": "viewer"}), 404, "not_found")
    assert_error(await w.call(None, "POST", path, json={"role": "viewer"}), 401, "unauthorized")
    for bad in ({"role": "owner"}, {"role": "admin"}, {}, {"role": "viewer", "expires_in": 5}, {"role": "viewer", "expires_in": "soon"}):
        assert_error(await w.call(w.owner, "POST", path, json=bad), 422, "invalid")
    short = await w.call(w.owner, "POST", path, json={"role": "viewer", "expires_in": 3600})
    assert short.status_code == 201
    assert api.server.app[STATE].tokens.decode_invite(short.json()["token"]).expires_at <= time.time() + 3601


async def test_list_and_revoke_invites_per_role(api):
    w = await make_world(api)
    made = (await w.call(w.owner, "POST", f"/api/rooms/{w.rid}/invites", json={"role": "editor"})).json()
    path = f"/api/rooms/{w.rid}/invites"
    listed = await w.call(w.owner, "GET", path)
    assert listed.status_code == 200
    assert made["id"] in {i["id"] for i in listed.json()["invites"]}
    assert_error(await w.call(w.editor, "GET", path), 403, "forbidden")
    assert_error(await w.call(w.viewer, "GET", path), 403, "forbidden")
    assert_error(await w.call(w.outsider, "GET", path), 404, "not_found")
    assert_error(await w.call(None, "GET", path), 401, "unauthorized")

    one = f"{path}/{made['id']}"
    assert_error(await w.call(w.editor, "DELETE", one), 403, "forbidden")
    assert_error(await w.call(w.viewer, "DELETE", one), 403, "forbidden")
    assert_error(await w.call(w.outsider, "DELETE", one), 404, "not_found")
    assert_error(await w.call(w.owner, "DELETE", f"{path}/nosuchinvite"), 404, "not_found")
    assert (await w.call(w.owner, "DELETE", one)).status_code == 204
    assert (await w.call(w.owner, "DELETE", one)).status_code == 204  # idempotent
    assert made["id"] not in {i["id"] for i in (await w.call(w.owner, "GET", path)).json()["invites"]}
    # The revoked link no longer works.
    assert_error(await w.call(w.outsider, "POST", f"/api/invites/{made['token']}/accept"), 410, "invite_revoked")
    assert_error(await w.call(w.outsider, "GET", f"/api/rooms/{w.rid}"), 404, "not_found")


async def test_accept_invite_never_downgrades(api):
    w = await make_world(api)
    tokens = {}
    for role in ("editor", "viewer"):
        tokens[role] = (await w.call(w.owner, "POST", f"/api/rooms/{w.rid}/invites", json={"role": role})).json()["token"]
    expect = {
        ("owner", "viewer"): "owner",
        ("owner", "editor"): "owner",
        ("editor", "viewer"): "editor",
        ("viewer", "viewer"): "viewer",
        ("viewer", "editor"): "editor",  # an upgrade is fine
    }
    by_role = dict(w.members())
    for (who, offered), result in expect.items():
        r = await w.call(by_role[who], "POST", f"/api/invites/{tokens[offered]}/accept")
        assert r.status_code == 200, r.text
        assert r.json()["role"] == result and r.json()["id"] == w.rid
        assert (await w.call(by_role[who], "GET", f"/api/rooms/{w.rid}")).json()["role"] == result
    # An invite is reusable until it expires or is revoked: a second newcomer joins too.
    r = await w.call(w.outsider, "POST", f"/api/invites/{tokens['viewer']}/accept")
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    assert_error(await w.call(None, "POST", f"/api/invites/{tokens['viewer']}/accept"), 401, "unauthorized")


async def test_accept_refuses_bad_invites(api):
    w = await make_world(api)
    state = api.server.app[STATE]
    good = (await w.call(w.owner, "POST", f"/api/rooms/{w.rid}/invites", json={"role": "editor"})).json()
    accept = lambda token: w.call(w.outsider, "POST", f"/api/invites/{token}/accept")  # noqa: E731

    head, body, sig = good["token"].split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    assert_error(await accept(forged), 400, "invalid_invite")
    assert_error(await accept("not-a-token"), 400, "invalid_invite")
    assert_error(await accept(w.outsider["access_token"]), 400, "invalid_invite")  # wrong kind
    # A validly signed token for an invite record that does not exist (or another room's).
    stray = state.tokens.issue_invite("0" * 32, w.rid, "editor", int(time.time()) + 600)
    assert_error(await accept(stray), 410, "invite_revoked")
    # Signed token says "editor", the record says "viewer": refuse.
    async with state.sessions() as session:
        viewer_inv = Invite(room_id=w.rid, role="viewer", created_by=uid(w.owner), expires_at=utcnow() + timedelta(hours=1))
        expired_inv = Invite(room_id=w.rid, role="editor", created_by=uid(w.owner), expires_at=utcnow() - timedelta(seconds=10))
        session.add(viewer_inv)
        session.add(expired_inv)
        await session.commit()
    lifted = state.tokens.issue_invite(viewer_inv.id, w.rid, "editor", int(time.time()) + 600)
    assert_error(await accept(lifted), 410, "invite_revoked")
    # Expired: by the token's own exp, and by the record even when the token claims longer.
    expired_token = state.tokens.issue_invite(expired_inv.id, w.rid, "editor", int(time.time()) - 10)
    assert_error(await accept(expired_token), 410, "invite_expired")
    outlived = state.tokens.issue_invite(expired_inv.id, w.rid, "editor", int(time.time()) + 600)
    assert_error(await accept(outlived), 410, "invite_expired")
    # A token from another deployment (other secret).
    from signaling.tokens import TokenService

    foreign = TokenService("z" * 48).issue_invite(good["id"], w.rid, "editor", int(time.time()) + 600)
    assert_error(await accept(foreign), 400, "invalid_invite")
    # None of that let the outsider in.
    assert_error(await w.call(w.outsider, "GET", f"/api/rooms/{w.rid}"), 404, "not_found")
    # Deleting the room kills its invites.
    assert (await w.call(w.owner, "DELETE", f"/api/rooms/{w.rid}")).status_code == 204
    assert_error(await accept(good["token"]), 410, "invite_revoked")


async def test_members_list_per_role(api):
    w = await make_world(api)
    path = f"/api/rooms/{w.rid}/members"
    for _, member in w.members():
        r = await w.call(member, "GET", path)
        assert r.status_code == 200, r.text
        assert [(m["user_id"], m["role"], m["name"]) for m in r.json()["members"]] == [
            (uid(w.owner), "owner", "Olive Owner"),
            (uid(w.editor), "editor", "Eddie Editor"),
            (uid(w.viewer), "viewer", "Vera Viewer"),
        ]
        assert all("email" not in m for m in r.json()["members"])
    assert_error(await w.call(w.outsider, "GET", path), 404, "not_found")
    assert_error(await w.call(None, "GET", path), 401, "unauthorized")


async def test_change_member_role_per_role(api):
    w = await make_world(api)
    changes: list[tuple[str, str | None]] = []

    async def listener(room_id: str, user_id: str | None) -> None:
        changes.append((room_id, user_id))

    add_membership_listener(api.server.app[STATE], listener)
    path = lambda who: f"/api/rooms/{w.rid}/members/{uid(who)}"  # noqa: E731

    assert_error(await w.call(w.editor, "PUT", path(w.viewer), json={"role": "editor"}), 403, "forbidden")
    assert_error(await w.call(w.editor, "PUT", path(w.editor), json={"role": "owner"}), 403, "forbidden")
    assert_error(await w.call(w.viewer, "PUT", path(w.viewer), json={"role": "editor"}), 403, "forbidden")
    assert_error(await w.call(w.outsider, "PUT", path(w.viewer), json={"role": "editor"}), 404, "not_found")
    assert_error(await w.call(None, "PUT", path(w.viewer), json={"role": "editor"}), 401, "unauthorized")
    assert_error(await w.call(w.owner, "PUT", path(w.outsider), json={"role": "editor"}), 404, "member_not_found")
    for bad in ({"role": "admin"}, {}, {"role": None}):
        assert_error(await w.call(w.owner, "PUT", path(w.viewer), json=bad), 422, "invalid")
    assert changes == []

    r = await w.call(w.owner, "PUT", path(w.viewer), json={"role": "editor"})
    assert r.status_code == 200 and r.json()["role"] == "editor" and r.json()["user_id"] == uid(w.viewer)
    assert (await w.call(w.viewer, "GET", f"/api/rooms/{w.rid}")).json()["role"] == "editor"
    assert changes == [(w.rid, uid(w.viewer))]

    # The last owner cannot step down...
    assert_error(await w.call(w.owner, "PUT", path(w.owner), json={"role": "editor"}), 409, "last_owner")
    # ...until there is another owner; then owner_id follows.
    assert (await w.call(w.owner, "PUT", path(w.editor), json={"role": "owner"})).status_code == 200
    assert (await w.call(w.owner, "PUT", path(w.owner), json={"role": "viewer"})).status_code == 200
    room = (await w.call(w.editor, "GET", f"/api/rooms/{w.rid}")).json()
    assert room["role"] == "owner" and room["owner_id"] == uid(w.editor)
    assert_error(await w.call(w.owner, "PUT", path(w.owner), json={"role": "owner"}), 403, "forbidden")


async def test_remove_member_per_role(api):
    w = await make_world(api)
    path = lambda who: f"/api/rooms/{w.rid}/members/{uid(who)}"  # noqa: E731
    assert_error(await w.call(w.editor, "DELETE", path(w.viewer)), 403, "forbidden")
    assert_error(await w.call(w.viewer, "DELETE", path(w.editor)), 403, "forbidden")
    assert_error(await w.call(w.viewer, "DELETE", path(w.owner)), 403, "forbidden")
    assert_error(await w.call(w.outsider, "DELETE", path(w.viewer)), 404, "not_found")
    assert_error(await w.call(w.outsider, "DELETE", path(w.outsider)), 404, "not_found")
    assert_error(await w.call(None, "DELETE", path(w.viewer)), 401, "unauthorized")
    assert_error(await w.call(w.owner, "DELETE", path(w.outsider)), 404, "member_not_found")
    assert_error(await w.call(w.owner, "DELETE", path(w.owner)), 409, "last_owner")

    assert (await w.call(w.viewer, "DELETE", path(w.viewer))).status_code == 204  # leaving
    assert_error(await w.call(w.viewer, "GET", f"/api/rooms/{w.rid}"), 404, "not_found")
    assert (await w.call(w.owner, "DELETE", path(w.editor))).status_code == 204  # removing
    assert_error(await w.call(w.editor, "GET", f"/api/rooms/{w.rid}/members"), 404, "not_found")
    members = (await w.call(w.owner, "GET", f"/api/rooms/{w.rid}/members")).json()["members"]
    assert [m["user_id"] for m in members] == [uid(w.owner)]
    assert (await w.call(w.editor, "GET", "/api/rooms")).json() == {"rooms": []}


async def test_delete_room_per_role(api):
    w = await make_world(api)
    state = api.server.app[STATE]
    async with state.sessions() as session:
        session.add(DocumentUpdate(room_id=w.rid, data=b"\x00\x00"))
        session.add(DocumentSnapshot(room_id=w.rid, data=b"\x00\x00"))
        await session.commit()
    gone: list[tuple[str, str | None]] = []

    async def listener(room_id: str, user_id: str | None) -> None:
        gone.append((room_id, user_id))

    add_membership_listener(state, listener)
    path = f"/api/rooms/{w.rid}"
    assert_error(await w.call(w.editor, "DELETE", path), 403, "forbidden")
    assert_error(await w.call(w.viewer, "DELETE", path), 403, "forbidden")
    assert_error(await w.call(w.outsider, "DELETE", path), 404, "not_found")
    assert_error(await w.call(None, "DELETE", path), 401, "unauthorized")
    assert (await w.call(w.owner, "GET", path)).status_code == 200  # refusals changed nothing

    assert (await w.call(w.owner, "DELETE", path)).status_code == 204
    assert gone == [(w.rid, None)]
    for _, member in w.members():
        assert_error(await w.call(member, "GET", path), 404, "not_found")
        assert (await w.call(member, "GET", "/api/rooms")).json() == {"rooms": []}
    assert_error(await w.call(w.owner, "DELETE", path), 404, "not_found")
    from sqlmodel import select

    async with state.sessions() as session:
        for table in (Room, Membership, Invite, DocumentUpdate, DocumentSnapshot):
            rows = (await session.exec(select(table).where(table.room_id == w.rid if table is not Room else Room.id == w.rid))).all()
            assert rows == [], table.__name__


async def test_two_owners_stepping_down_at_once_leave_one_owner(api):
    """The last-owner rule holds under concurrency: the room row is locked while it is checked."""
    import asyncio

    for _ in range(3):
        a = await account(api, "A")
        b = await account(api, "B")
        room = (await api.client.post("/api/rooms", json={"name": "race"}, headers=api.auth(a))).json()
        token = (
            await api.client.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=api.auth(a))
        ).json()["token"]
        await api.client.post(f"/api/invites/{token}/accept", headers=api.auth(b))
        promoted = await api.client.put(
            f"/api/rooms/{room['id']}/members/{uid(b)}", json={"role": "owner"}, headers=api.auth(a)
        )
        assert promoted.status_code == 200
        leave_a = api.client.delete(f"/api/rooms/{room['id']}/members/{uid(a)}", headers=api.auth(a))
        demote_b = api.client.put(
            f"/api/rooms/{room['id']}/members/{uid(b)}", json={"role": "viewer"}, headers=api.auth(b)
        )
        results = await asyncio.gather(leave_a, demote_b)
        assert sorted(r.status_code for r in results) in ([200, 409], [204, 409]), [r.text for r in results]
        state = api.server.app[STATE]
        from sqlmodel import select

        async with state.sessions() as session:
            owners = (
                await session.exec(
                    select(Membership).where(Membership.room_id == room["id"], Membership.role == "owner")
                )
            ).all()
            stored = await session.get(Room, room["id"])
        assert len(owners) == 1 and stored.owner_id == owners[0].user_id
