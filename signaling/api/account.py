"""The signed-in user's own account over HTTP: profile, password, address, sign-in providers,
deletion. Rules in ``signaling.selfservice`` and ``signaling.deletion``.

Every change that could lock the owner out or hand the account to someone else asks for the
current password (accounts that have one): a stolen access token alone cannot change the
password or the address, nor delete the account.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from sqlmodel import col, select

from .. import accounts, deletion, selfservice
from ..api.auth import DisplayName, account_error
from ..errors import ApiError, read_json
from codesync.models import OAuthIdentity, User
from ..passwords import MAX_LENGTH, MIN_LENGTH
from ..principal import Principal, require_user
from ..state import get_state
from .oauth import COOKIE_PATH, LINK_COOKIE, service

routes = web.RouteTableDef()


class ProfileBody(BaseModel):
    name: DisplayName | None = None
    color: Annotated[str, StringConstraints(max_length=7)] | None = None  # "#rrggbb", or null to clear


class PasswordBody(BaseModel):
    current_password: str = Field(max_length=MAX_LENGTH)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class EmailChangeBody(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
    password: str | None = Field(default=None, max_length=MAX_LENGTH)


def _room_choice(value: str) -> str:
    if value != deletion.DELETE and not (1 <= len(value) <= 32):
        raise ValueError('each room: "delete" or the new owner\'s user id')
    return value


class DeleteBody(BaseModel):
    password: str | None = Field(default=None, max_length=MAX_LENGTH)
    confirm_email: str | None = Field(default=None, max_length=320)  # accounts without a password
    rooms: dict[Annotated[str, StringConstraints(max_length=32)], Annotated[str, AfterValidator(_room_choice)]] = Field(
        default_factory=dict, max_length=10_000
    )


async def _me(request: web.Request) -> tuple[Principal, User]:
    principal = await require_user(request)
    async with get_state(request).sessions() as session:
        user = await session.get(User, principal.user_id)
    if user is None:
        raise ApiError(401, "invalid_token", "user no longer exists")
    return principal, user


@routes.patch("/api/me")
async def update_profile(request: web.Request) -> web.Response:
    principal = await require_user(request)
    body = await read_json(request, ProfileBody)
    state = get_state(request)
    async with state.sessions() as session:
        user = await session.get(User, principal.user_id)
        assert user is not None
        try:
            user = await selfservice.update_profile(
                state, session, user, body.name, body.color, clear_color="color" in body.model_fields_set and body.color is None
            )
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    return web.json_response(selfservice.me_json(state, user))


@routes.post("/api/me/password")
async def change_password(request: web.Request) -> web.Response:
    """Needs the current password; ends every *other* session (their sockets close)."""
    principal = await require_user(request)
    body = await read_json(request, PasswordBody)
    state = get_state(request)
    async with state.sessions() as session:
        user = await session.get(User, principal.user_id)
        assert user is not None
        try:
            await selfservice.change_password(
                state, session, user, body.current_password, body.new_password, principal.session_id
            )
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    return web.Response(status=204)


@routes.post("/api/me/email")
async def change_email(request: web.Request) -> web.Response:
    """202: a confirmation link goes to the new address (the same answer if it is taken)."""
    principal = await require_user(request)
    body = await read_json(request, EmailChangeBody)
    state = get_state(request)
    async with state.sessions() as session:
        user = await session.get(User, principal.user_id)
        assert user is not None
        try:
            await selfservice.request_email_change(state, session, user, body.email, body.password)
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    return web.json_response(
        {"status": "confirmation_sent", "message": "open the link we mailed to the new address to switch to it"}, status=202
    )


# ----------------------------------------------------------------------------- sign-in providers
def _ways_in(user: User, identities: list[OAuthIdentity], configured: set[str]) -> int:
    return (1 if user.password_hash else 0) + sum(1 for i in identities if i.provider in configured)


@routes.get("/api/me/identities")
async def list_identities(request: web.Request) -> web.Response:
    principal, user = await _me(request)
    state = get_state(request)
    providers = service(request).providers()
    async with state.sessions() as session:
        rows = list((await session.exec(select(OAuthIdentity).where(OAuthIdentity.user_id == user.id).order_by(col(OAuthIdentity.created_at)))).all())
    linked = {r.provider for r in rows}
    return web.json_response({
        "identities": [
            {"id": r.id, "provider": r.provider, "label": providers[r.provider].label if r.provider in providers else r.provider,
             "email": r.email, "created_at": r.created_at.isoformat(), "configured": r.provider in providers}
            for r in rows
        ],
        "has_password": user.password_hash is not None,
        "available": [{"name": p.name, "label": p.label} for p in providers.values() if p.name not in linked],
    })


@routes.delete("/api/me/identities/{identity_id}")
async def unlink_identity(request: web.Request) -> web.Response:
    """Refused (409 ``last_sign_in_method``) when it is the account's last way in."""
    principal = await require_user(request)
    state = get_state(request)
    configured = set(service(request).providers())
    identity_id = request.match_info["identity_id"]
    async with state.sessions() as session:
        # Serialize with a concurrent unlink of the user's other identity (each alone would pass).
        from sqlalchemy import update

        await session.exec(update(User).where(col(User.id) == principal.user_id).values(name=User.name))
        user = await session.get(User, principal.user_id)
        rows = list((await session.exec(select(OAuthIdentity).where(OAuthIdentity.user_id == principal.user_id))).all())
        target = next((r for r in rows if r.id == identity_id), None)
        if user is None or target is None:
            raise ApiError(404, "not_found", "no such linked provider")
        rest = [r for r in rows if r.id != identity_id]
        if _ways_in(user, rest, configured) == 0:
            raise ApiError(409, "last_sign_in_method",
                           "this is your last way to sign in: set a password (\"forgot password\") or link another provider first")
        await session.delete(target)
        await session.commit()
    return web.Response(status=204)


@routes.post("/api/me/identities/{provider}/link")
async def start_link(request: web.Request) -> web.Response:
    """Sets a two-minute HttpOnly link cookie; the web client then opens ``url`` (the provider)."""
    principal = await require_user(request)
    name = request.match_info["provider"]
    provider = service(request).provider(name)
    if provider is None:
        raise ApiError(404, "unknown_provider", f"no OAuth provider named {name!r} is configured")
    assert principal.user_id is not None
    ticket = await service(request).link_ticket(principal.user_id)
    settings = get_state(request).settings
    response = web.json_response({"url": f"{settings.base_url}/api/auth/oauth/{provider.name}/start?link=1"})
    response.set_cookie(LINK_COOKIE, ticket, max_age=120, path=COOKIE_PATH, httponly=True, samesite="Lax",
                        secure=settings.base_url.startswith("https://"))
    return response


# ----------------------------------------------------------------------------- deletion
@routes.get("/api/me/deletion")
async def deletion_plan(request: web.Request) -> web.Response:
    """The rooms the caller owns; ``needs_decision`` where nobody else owns them."""
    principal = await require_user(request)
    async with get_state(request).sessions() as session:
        rooms = await deletion.owned_rooms(session, principal.user_id or "")
    return web.json_response({"rooms": rooms})


@routes.post("/api/me/delete")
async def delete_me(request: web.Request) -> web.Response:
    principal, user = await _me(request)
    body = await read_json(request, DeleteBody)
    state = get_state(request)
    if user.password_hash is not None:
        try:
            await selfservice.check_password(user, body.password)
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    elif accounts.normalize_email(body.confirm_email or "") != user.email:
        raise ApiError(403, "confirmation_required", "type your email address to confirm")
    async with state.sessions() as session:
        try:
            result = await deletion.delete_account(state, session, user.id, dict(body.rooms))
        except accounts.AccountError as exc:
            raise account_error(exc) from None
    return web.json_response(result)


def setup(app: web.Application) -> None:
    app.add_routes(routes)
