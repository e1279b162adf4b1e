"""Email + password accounts over HTTP: register, login, refresh, logout, ``/api/me``, and the
emailed-link flows (verify an address, reset a password) that start signed out.

The rules live in ``signaling.accounts`` (shared with OAuth), ``signaling.registration``,
``signaling.selfservice`` and ``signaling.ratelimit``; this module only validates bodies and
maps outcomes to status codes.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

import logging

from .. import accounts, mailtemplates, registration, rooms, selfservice
from ..clientaddr import client_address
from ..errors import ApiError, read_json
from codesync.models import User
from ..passwords import MAX_LENGTH, MIN_LENGTH, hash_password
from ..principal import bearer_token, require_user
from ..ratelimit import RateLimited, login_throttle, mail_throttle
from ..state import get_state

log = logging.getLogger("codesync.accounts")

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
    # A room invite or an administrator's signup invite (needed on invite-only servers).
    invite: str | None = Field(default=None, min_length=1, max_length=4096)


class EmailBody(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)]


class TokenBody(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


class ResetBody(BaseModel):
    token: str = Field(min_length=1, max_length=4096)
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class ResendBody(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=320)] | None = None


class LoginBody(BaseModel):
    email: Annotated[str, StringConstraints(max_length=320)]
    password: str = Field(max_length=MAX_LENGTH)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutBody(BaseModel):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)
    all: bool = False  # with a Bearer token: sign out every session of the user


STATUS = {
    "email_taken": 409, "invalid_email": 422, "invalid": 422, "same_email": 422,
    "registration_closed": 403, "domain_not_allowed": 403, "invite_required": 403, "invite_email_mismatch": 403,
    "invite_invalid": 400, "account_disabled": 403, "email_unverified": 403, "other_account": 403,
    # Not 401: a wrong *current* password must not look like an expired session to clients.
    "wrong_password": 403, "forbidden": 403,
    "invalid_link": 400, "link_expired": 410, "link_used": 410,
    "no_password": 409, "rooms_need_decision": 409, "self": 409, "configured_admin": 409,
    "last_sign_in_method": 409, "identity_in_use": 409,
    "rate_limited": 429, "not_found": 404,
}


def _refused(exc: accounts.AccountError) -> ApiError:
    return ApiError(STATUS.get(exc.code, 401), exc.code, exc.message, details=exc.details)


account_error = _refused


def _rate_limited(exc: RateLimited) -> ApiError:
    return ApiError(429, "rate_limited", str(exc), {"Retry-After": str(exc.retry_after)})


@routes.get("/api/auth/registration")
async def registration_policy(request: web.Request) -> web.Response:
    """Who may register here (the sign-in page says it): ``{mode, domains, unverified_accounts, mail}``."""
    return web.json_response(registration.policy_json(get_state(request)))


@routes.post("/api/auth/register")
async def register(request: web.Request) -> web.Response:
    """201 with a token pair — or, where unverified accounts are ``blocked``, 202 "check your
    mail" whether or not the address already had an account (nothing to sign in to yet, so
    nothing reveals the address; the work happens after the answer)."""
    body = await read_json(request, RegisterBody)
    state = get_state(request)
    try:  # each registration costs an Argon2 hash: bound them per address like logins
        await login_throttle(state).register_attempt(client_address(request))
    except RateLimited as exc:
        raise _rate_limited(exc) from None
    async with state.sessions() as session:
        try:
            # Decided before the address is looked up: a refusal says nothing about accounts.
            admission = await registration.admit(state, session, body.email, body.invite)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
        if state.settings.unverified_accounts == "blocked" and not await _invite_proves(state, session, admission, body.email):
            selfservice.in_background(state, lambda: _register_quietly(state, body, admission), "registration")
            return web.json_response(
                {"status": "verification_sent", "email": accounts.normalize_email(body.email),
                 "message": "check your mail: the link in it confirms your address, then sign in"},
                status=202,
            )
        try:
            user = await accounts.register(session, body.email, body.password, body.name)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
        await _complete_registration(state, session, user, admission)
        tokens = await accounts.issue_tokens(state, session, user)
    return web.json_response(tokens, status=201)


async def _invite_proves(state, session, admission: registration.Admission, email: str) -> bool:
    """A signup invite bound to this address came by mail to it: the address is proven."""
    from codesync.models import SignupInvite

    if admission.signup_invite_id is None:
        return False
    row = await session.get(SignupInvite, admission.signup_invite_id)
    return row is not None and row.email == accounts.normalize_email(email)


async def _complete_registration(state, session, user: User, admission: registration.Admission) -> None:
    """Spend the signup invite, join the invited room, mail the verification link."""
    if admission.signup_invite_id is not None:
        from codesync.models import SignupInvite

        invite = await session.get(SignupInvite, admission.signup_invite_id)
        if not await registration.spend_signup_invite(session, admission.signup_invite_id, user.id):
            await session.delete(user)
            await session.commit()
            raise ApiError(400, "invite_invalid", "this invitation was used or has expired")
        if invite is not None and invite.email == user.email:
            user.email_verified = True  # the invitation was mailed to this very address
            session.add(user)
        await session.commit()
    if admission.room_invite is not None:
        try:
            await rooms.accept_invite(state, session, admission.room_invite, user.id)
        except ApiError as exc:  # the account exists; the invite page will say what is wrong
            log.info("new account could not join the invited room: %s", exc.code)
    if not user.email_verified:
        await selfservice.send_verification(state, session, user)


async def _register_quietly(state, body: RegisterBody, admission: registration.Admission) -> None:
    """The background half of a ``blocked``-mode registration."""
    from ..mail import send_later
    from ..ratelimit import mail_throttle

    async def exists(email: str) -> None:
        if await mail_throttle(state).may_mail(email, "account_exists"):
            send_later(state, mailtemplates.account_exists(state.settings, email))

    async with state.sessions() as session:
        existing = await accounts.user_by_email(session, body.email)
        if existing is not None:
            await hash_password(body.password)  # the same work either way
            await exists(existing.email)
            return
        try:
            user = await accounts.register(session, body.email, body.password, body.name)
        except accounts.AccountError as exc:
            if exc.code == "email_taken":  # a concurrent registration of the address won
                await exists(accounts.normalize_email(body.email))
            else:
                log.info("quiet registration refused: %s", exc.code)
            return
        try:
            await _complete_registration(state, session, user, admission)
        except ApiError as exc:
            log.info("quiet registration refused: %s", exc.code)


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
        try:  # only after the right password: says nothing to a guesser
            accounts.check_may_sign_in(state, user)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
        tokens = await accounts.issue_tokens(state, session, user)
    return web.json_response(tokens)


@routes.post("/api/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshBody)
    state = get_state(request)
    async with state.sessions() as session:
        try:
            tokens = await accounts.rotate(state, session, body.refresh_token)
        except accounts.AccountError as exc:  # always 401: the sign-in is over, whatever the reason
            raise ApiError(401, exc.code, exc.message) from None
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
    return web.json_response(accounts.user_json(user, state.settings.admin_email_list))


# ----------------------------------------------------------------------------- emailed links
SENT = {"status": "sent_if_exists",
        "message": "if this address has an account, a link is on its way; it works once and for a limited time"}


async def _mail_request(request: web.Request) -> None:
    try:
        await mail_throttle(get_state(request)).request(client_address(request))
    except RateLimited as exc:
        raise _rate_limited(exc) from None


@routes.post("/api/auth/password-reset")
async def request_password_reset(request: web.Request) -> web.Response:
    """Always 202 with the same body (whether or not the address has an account, and however
    the mail fares); 429 only per source address."""
    body = await read_json(request, EmailBody)
    state = get_state(request)
    await _mail_request(request)
    selfservice.in_background(state, lambda: selfservice.reset_job(state, body.email), "password-reset")
    return web.json_response(SENT, status=202)


@routes.post("/api/auth/password-reset/confirm")
async def confirm_password_reset(request: web.Request) -> web.Response:
    """Redeem a reset link: new password, every session ended, a fresh sign-in returned."""
    body = await read_json(request, ResetBody)
    state = get_state(request)
    async with state.sessions() as session:
        try:
            user = await selfservice.reset_password(state, session, body.token, body.password)
            accounts.check_may_sign_in(state, user)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
        tokens = await accounts.issue_tokens(state, session, user)
    return web.json_response(tokens)


@routes.post("/api/auth/verify-email")
async def verify_email(request: web.Request) -> web.Response:
    """Redeem a verification (or new-address) link; works signed out. Signed in as another
    account, the link is refused unspent (403 ``other_account``)."""
    body = await read_json(request, TokenBody)
    state = get_state(request)
    caller = None
    if bearer_token(request) is not None:
        caller = (await require_user(request)).user_id
    async with state.sessions() as session:
        try:
            user = await selfservice.confirm_email(state, session, body.token, caller)
        except accounts.AccountError as exc:
            raise _refused(exc) from None
    return web.json_response({"user": accounts.user_json(user, state.settings.admin_email_list)})


@routes.post("/api/auth/verify-email/resend")
async def resend_verification(request: web.Request) -> web.Response:
    """Signed in: mail the caller a new link. Signed out (``{email}``): the same answer whatever
    the address (used where unverified accounts cannot sign in)."""
    body = await read_json(request, ResendBody)
    state = get_state(request)
    await _mail_request(request)
    if bearer_token(request) is not None:
        principal = await require_user(request)
        async with state.sessions() as session:
            user = await session.get(User, principal.user_id)
            if user is not None and not user.email_verified:
                if not await mail_throttle(state).may_mail(user.email, "verify_email"):
                    raise ApiError(429, "rate_limited", "a link was mailed recently; check your mail (and its spam folder)")
                await selfservice.send_verification(state, session, user)
        return web.json_response({"status": "sent", "message": "a new link is on its way"}, status=202)
    if not body.email:
        raise ApiError(422, "invalid", "email: send the address, or sign in")
    email = body.email
    selfservice.in_background(state, lambda: selfservice.resend_verification_for(state, email), "verification")
    return web.json_response(SENT, status=202)


def setup(app: web.Application) -> None:
    app.add_routes(routes)
