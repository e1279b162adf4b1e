"""Rooms, invites and members over HTTP. Every endpoint needs a user access token.

Access rules are in ``signaling.rooms``; this module validates bodies and shapes responses.
"""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from .. import rooms
from ..errors import ApiError, read_json
from codesync.models import Role, User
from ..principal import require_user
from ..state import get_state

routes = web.RouteTableDef()


def _printable(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def _known_language(value: str) -> str:
    if value not in rooms.LANGUAGES:
        raise ValueError(f"must be one of {', '.join(rooms.LANGUAGES)}")
    return value


RoomName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_printable)
]
Language = Annotated[str, StringConstraints(max_length=32), AfterValidator(_known_language)]


class CreateRoomBody(BaseModel):
    name: RoomName
    language: Language = "plaintext"


class UpdateRoomBody(BaseModel):
    name: RoomName | None = None
    language: Language | None = None


class CreateInviteBody(BaseModel):
    role: Literal["editor", "viewer"]
    expires_in: int | None = Field(default=None, ge=60, le=rooms.MAX_INVITE_TTL, description="seconds")


class SetRoleBody(BaseModel):
    role: Literal["owner", "editor", "viewer"]


async def _user_id(request: web.Request) -> str:
    principal = await require_user(request)
    assert principal.user_id is not None  # require_user refuses service tokens
    return principal.user_id


@routes.post("/api/rooms")
async def create_room(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    body = await read_json(request, CreateRoomBody)
    async with get_state(request).sessions() as session:
        room = await rooms.create_room(session, user_id, body.name, body.language)
    return web.json_response(rooms.room_json(room, Role.owner), status=201)


@routes.get("/api/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    async with get_state(request).sessions() as session:
        mine = await rooms.my_rooms(session, user_id)
    return web.json_response({"rooms": [rooms.room_json(room, role) for room, role in mine]})


@routes.get("/api/rooms/{room_id}")
async def get_room(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    async with get_state(request).sessions() as session:
        room, role = await rooms.member_room(session, request.match_info["room_id"], user_id)
    return web.json_response(rooms.room_json(room, role))


@routes.patch("/api/rooms/{room_id}")
async def update_room(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    body = await read_json(request, UpdateRoomBody)
    async with get_state(request).sessions() as session:
        room, role = await rooms.update_room(session, request.match_info["room_id"], user_id, body.name, body.language)
    return web.json_response(rooms.room_json(room, role))


@routes.delete("/api/rooms/{room_id}")
async def delete_room(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    state = get_state(request)
    async with state.sessions() as session:
        await rooms.delete_room(state, session, request.match_info["room_id"], user_id)
    return web.Response(status=204)


@routes.post("/api/rooms/{room_id}/invites")
async def create_invite(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    body = await read_json(request, CreateInviteBody)
    state = get_state(request)
    async with state.sessions() as session:
        await _may_invite(state, session, user_id)
        invite = await rooms.create_invite(
            state, session, request.match_info["room_id"], user_id, body.role, body.expires_in
        )
    return web.json_response(invite, status=201)


@routes.get("/api/rooms/{room_id}/invites")
async def list_invites(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    state = get_state(request)
    async with state.sessions() as session:
        invites = await rooms.list_invites(state, session, request.match_info["room_id"], user_id)
    return web.json_response({"invites": invites})


@routes.delete("/api/rooms/{room_id}/invites/{invite_id}")
async def revoke_invite(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    async with get_state(request).sessions() as session:
        await rooms.revoke_invite(session, request.match_info["room_id"], user_id, request.match_info["invite_id"])
    return web.Response(status=204)


async def _may_invite(state, session, user_id: str) -> None:
    """Unverified accounts mint no invites unless ``CODESYNC_UNVERIFIED_ACCOUNTS=full``: an
    invite spreads access, so it needs someone whose address is known (docs/accounts.md)."""
    if state.settings.unverified_accounts == "full":
        return
    user = await session.get(User, user_id)
    if user is not None and not user.email_verified:
        raise ApiError(403, "email_unverified", "confirm your email address before inviting people (see your account page)")


class AcceptInviteBody(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


@routes.post("/api/invites/accept")
async def accept_invite(request: web.Request) -> web.Response:
    """Join a room with an invite token sent in the body (never in a URL, so never in a log)."""
    user_id = await _user_id(request)
    body = await read_json(request, AcceptInviteBody)
    return await _accept(request, user_id, body.token)


@routes.post("/api/invites/{token}/accept")
async def accept_invite_in_path(request: web.Request) -> web.Response:
    """The older form, kept for existing clients. Proxies log request paths: prefer the body form."""
    user_id = await _user_id(request)
    return await _accept(request, user_id, request.match_info["token"])


async def _accept(request: web.Request, user_id: str, token: str) -> web.Response:
    state = get_state(request)
    async with state.sessions() as session:
        room, role = await rooms.accept_invite(state, session, token, user_id)
    return web.json_response(rooms.room_json(room, role))


@routes.get("/api/rooms/{room_id}/members")
async def list_members(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    async with get_state(request).sessions() as session:
        members = await rooms.list_members(session, request.match_info["room_id"], user_id)
    return web.json_response({"members": members})


@routes.put("/api/rooms/{room_id}/members/{user_id}")
async def set_member_role(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    body = await read_json(request, SetRoleBody)
    state = get_state(request)
    async with state.sessions() as session:
        member = await rooms.set_member_role(
            state, session, request.match_info["room_id"], user_id, request.match_info["user_id"], Role(body.role)
        )
    return web.json_response(member)


@routes.delete("/api/rooms/{room_id}/members/{user_id}")
async def remove_member(request: web.Request) -> web.Response:
    user_id = await _user_id(request)
    state = get_state(request)
    async with state.sessions() as session:
        await rooms.remove_member(state, session, request.match_info["room_id"], user_id, request.match_info["user_id"])
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app.add_routes(routes)
