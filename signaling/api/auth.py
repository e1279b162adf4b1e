"""Email + password accounts over HTTP: register, login, refresh, logout, ``/api/me``.

The rules live in ``signaling.accounts`` (shared with OAuth) and ``signaling.ratelimit``;
this module only validates bodies and maps outcomes to status codes.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from .. import accounts
from ..clientaddr import client_address
from ..errors import ApiError, read_json
from codesync.models import User
from ..passwords import MAX_LENGTH, MIN_LENGTH
from ..principal import require_user
from ..ratelimit import RateLimited, login_throttle
from ..state import get_state

routes = web.RouteTableDef()


def _printable(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(_printable)
]
Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]


class RegisterBody(BaseModel):
    email: Email
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    name: DisplayName


class LoginBody(BaseModel):
    email: Annotated[str, StringConstraints(max_length=320)]
    password: str = Field(max_length=MAX_LENGTH)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutBody(BaseModel):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)
    all: bool = False  # with a Bearer token: sign out every session of the user


def _refused(exc: accounts.AccountError) -> ApiError:
    status = {"email_taken": 409, "invalid_email": 422}.get(exc.code, 401)
    return ApiError(status, exc.code, exc.message)


def _rate_limited(exc: RateLimited) -> ApiError:
    return ApiError(429, "rate_limited", str(exc), {"Retry-After": str(exc.retry_after)})


@routes.post("/api/auth/register")
async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterBody)
    state = get_state(request)
    try:  # each registration costs an Argon2 hash: bound them per address like logins
        await login_throttle(state).register_attempt(client_address(request))
    except RateLimited as exc:
        raise _rate_limited(exc) from None
    async with state.sessions() as session:
        try:
            user = await accounts.register(session, body.email, body.password, body.name)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
        tokens = await accounts.issue_tokens(state, session, user)
    return web.json_response(tokens, status=201)


@routes.post("/api/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginBody)
    state = get_state(request)
    throttle = login_throttle(state)
    email = accounts.normalize_email(body.email)
    source = client_address(request)
    try:  # before the password is looked at: a refused attempt learns nothing
        await throttle.attempt(email, source)
    except RateLimited as exc:
        raise _rate_limited(exc) from None
    async with state.sessions() as session:
        user = await accounts.authenticate(session, email, body.password)
        if user is None:
            raise ApiError(401, "invalid_credentials", "email or password is incorrect")
        await throttle.succeeded(email, source)
        tokens = await accounts.issue_tokens(state, session, user)
    return web.json_response(tokens)


@routes.post("/api/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    state = get_state(request)
    async with state.sessions() as session:
        try:
            tokens = await accounts.rotate(state, session, body.refresh_token)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
    return web.json_response(tokens)


@routes.post("/api/auth/logout")
async def logout(request: web.Request) -> web.Response:
    """Revoke the presented refresh token's session, or with ``all`` every session of the caller.

    Their access tokens stop working at once and their ``/signal`` sockets are closed.
    Unknown refresh tokens are not an error: logging out twice is harmless.
    """
    body = await read_json(request, LogoutBody)
    state = get_state(request)
    if not body.all and body.refresh_token is None:
        raise ApiError(422, "invalid", "send refresh_token, or all: true with a Bearer token")
    # The refresh token alone is enough to revoke its sign-in; a stale Bearer header sent
    # along (clients often do) must not stand in the way. "all" needs a valid one.
    user_id = (await require_user(request)).user_id if body.all else None
    async with state.sessions() as session:
        if body.refresh_token is not None:
            await accounts.logout(state, session, body.refresh_token)
        if body.all and user_id is not None:
            await accounts.revoke_all(state, session, user_id)
    return web.Response(status=204)


@routes.get("/api/me")
async def me(request: web.Request) -> web.Response:
    principal = await require_user(request)
    state = get_state(request)
    async with state.sessions() as session:
        user = await session.get(User, principal.user_id)
    if user is None:  # deleted between the token check and now
        raise ApiError(401, "invalid_token", "user no longer exists")
    return web.json_response(accounts.user_json(user))


def setup(app: web.Application) -> None:
    app.add_routes(routes)
