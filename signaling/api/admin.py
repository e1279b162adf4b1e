"""The administrators' API (``/api/admin/…``); rules in ``signaling.administration``.

Every route needs a user access token of an administrator; anyone else gets 403 ``forbidden``
(401 without a valid token), and nothing is read or changed for them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from .. import accounts, administration, deletion, livestats, mailtemplates, registration
from ..errors import ApiError, read_json
from ..mail import send_later
from ..principal import require_user
from ..state import get_state
from .auth import account_error

routes = web.RouteTableDef()


class UserPatch(BaseModel):
    disabled: bool | None = None
    is_admin: bool | None = None


class DeleteUserBody(BaseModel):
    # Rooms the user alone owns: room id -> "delete" or the new owner's id; the rest follow
    # ``default``: "transfer" (to the member with the best role, oldest first) or "delete".
    rooms: dict[Annotated[str, StringConstraints(max_length=32)], Annotated[str, StringConstraints(max_length=32)]] = Field(
        default_factory=dict, max_length=10_000
    )
    default: Literal["transfer", "delete"] | None = None


class SignupInviteBody(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)] | None = None
    expires_in: int | None = Field(default=None, ge=60, le=30 * 24 * 3600)


async def _admin(request: web.Request) -> str:
    principal = await require_user(request)
    state = get_state(request)
    async with state.sessions() as session:
        try:
            await administration.require_admin_user(state, session, principal.user_id or "")
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    assert principal.user_id is not None
    return principal.user_id


def _page(request: web.Request) -> tuple[str | None, int, int]:
    query = (request.query.get("q") or "").strip()[:200] or None
    try:
        offset = max(0, int(request.query.get("offset", "0")))
        limit = min(200, max(1, int(request.query.get("limit", str(administration.PAGE)))))
    except ValueError:
        raise ApiError(422, "invalid", "offset and limit must be numbers") from None
    return query, offset, limit


@routes.get("/api/admin/users")
async def list_users(request: web.Request) -> web.Response:
    await _admin(request)
    query, offset, limit = _page(request)
    state = get_state(request)
    async with state.sessions() as session:
        body = await administration.list_users(state, session, query, offset, limit)
    return web.json_response(body)


@routes.patch("/api/admin/users/{user_id}")
async def patch_user(request: web.Request) -> web.Response:
    """``{disabled: true}`` ends the account's sessions and sockets on every node at once."""
    admin_id = await _admin(request)
    body = await read_json(request, UserPatch)
    state = get_state(request)
    target = request.match_info["user_id"]
    async with state.sessions() as session:
        try:
            user = None
            if body.disabled is not None:
                user = await administration.set_disabled(state, session, admin_id, target, body.disabled)
            if body.is_admin is not None:
                user = await administration.set_admin(state, session, admin_id, target, body.is_admin)
            if user is None:
                raise ApiError(422, "invalid", "send disabled and/or is_admin")
        except accounts.AccountError as exc:
            raise account_error(exc) from None
        user = await session.get(type(user), user.id, populate_existing=True)
    assert user is not None
    return web.json_response(accounts.user_json(user, state.settings.admin_email_list))


@routes.get("/api/admin/users/{user_id}/deletion")
async def user_deletion_plan(request: web.Request) -> web.Response:
    await _admin(request)
    async with get_state(request).sessions() as session:
        rooms = await deletion.owned_rooms(session, request.match_info["user_id"][:32])
    return web.json_response({"rooms": rooms})


@routes.post("/api/admin/users/{user_id}/delete")
async def delete_user(request: web.Request) -> web.Response:
    admin_id = await _admin(request)
    body = await read_json(request, DeleteUserBody)
    target = request.match_info["user_id"]
    if target == admin_id:
        raise ApiError(409, "self", "delete your own account from your account page")
    state = get_state(request)
    async with state.sessions() as session:
        try:
            result = await deletion.delete_account(state, session, target[:32], dict(body.rooms), body.default)
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    return web.json_response(result)


@routes.get("/api/admin/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    await _admin(request)
    query, offset, limit = _page(request)
    state = get_state(request)
    live = await livestats.signaling_numbers(state, _hub(request))
    async with state.sessions() as session:
        body = await administration.list_rooms(session, query, offset, limit, live["rooms"])
    return web.json_response(body)


@routes.get("/api/admin/stats")
async def stats(request: web.Request) -> web.Response:
    """Live numbers: ``{signaling: {connected_users, connected_services, active_rooms, nodes,
    source}, runner: {runs_in_progress, runs_waiting, sources…}, registration}``."""
    await _admin(request)
    state = get_state(request)
    numbers = await livestats.signaling_numbers(state, _hub(request))
    numbers.pop("rooms", None)
    return web.json_response({
        "signaling": numbers,
        "runner": await livestats.service_numbers(state),
        "registration": registration.policy_json(state),
    })


@routes.get("/api/admin/signup-invites")
async def list_signup_invites(request: web.Request) -> web.Response:
    await _admin(request)
    state = get_state(request)
    async with state.sessions() as session:
        rows = await registration.list_signup_invites(session)
    return web.json_response({"invites": [registration.signup_invite_json(state, r) for r in rows]})


@routes.post("/api/admin/signup-invites")
async def create_signup_invite(request: web.Request) -> web.Response:
    """201 with ``url`` (shown once); with ``email`` it is also mailed there and only that
    address can use it (which then counts as verified)."""
    admin_id = await _admin(request)
    body = await read_json(request, SignupInviteBody)
    state = get_state(request)
    if body.email and not accounts.valid_email(accounts.normalize_email(body.email)):
        raise ApiError(422, "invalid_email", "that is not an email address")
    async with state.sessions() as session:
        row = await registration.create_signup_invite(state, session, admin_id, body.email, body.expires_in)
    out = registration.signup_invite_json(state, row, with_link=True)
    if row.email:
        ttl = int((row.expires_at - row.created_at).total_seconds())
        send_later(state, mailtemplates.signup_invite(state.settings, row.email, out["url"], ttl))
    return web.json_response(out, status=201)


@routes.delete("/api/admin/signup-invites/{invite_id}")
async def revoke_signup_invite(request: web.Request) -> web.Response:
    await _admin(request)
    async with get_state(request).sessions() as session:
        if not await registration.revoke_signup_invite(session, request.match_info["invite_id"][:32]):
            raise ApiError(404, "not_found", "no such live invitation")
    return web.Response(status=204)


def _hub(request: web.Request):
    from ..ws.server import HUB

    return request.app[HUB]


def setup(app: web.Application) -> None:
    app.add_routes(routes)
