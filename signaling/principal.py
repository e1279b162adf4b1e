"""Who is calling: resolves a bearer / query token into a user or a service principal.

The HTTP API and the ``/signal`` WebSocket share this, so both accept exactly the same tokens
and refuse the same ones (expired, forged, revoked, wrong kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from . import revocation
from .errors import ApiError
from codesync.models import AuthSession, ServiceToken, User
from .state import AppState, get_state
from .tokens import TokenError


@dataclass(frozen=True)
class Principal:
    user_id: str | None
    name: str
    service: str | None = None  # "persistence" | "runner" for service tokens
    email: str | None = None
    expires_at: int | None = None  # unix time the token stops being valid
    session_id: str | None = None  # the sign-in an access token belongs to (``sid``)
    token_id: str | None = None  # access token ``jti``; service token: its ``service_tokens`` row
    issued_at: int = 0

    @property
    def is_service(self) -> bool:
        return self.service is not None

    @property
    def revocation_keys(self) -> frozenset[str]:
        """What revokes this principal's sockets (see ``signaling.sessions``)."""
        if self.service is not None:
            return frozenset({revocation.service_key(self.token_id or ""), revocation.scope_key(self.service)})
        keys = {revocation.user_key(self.user_id or "")}
        if self.session_id:
            keys.add(revocation.session_key(self.session_id))
        elif self.token_id:
            keys.add(revocation.token_key(self.token_id))
        return frozenset(keys)


async def principal_from_token(state: AppState, token: str, allow_service: bool = True) -> Principal:
    """Raise :class:`TokenError` unless ``token`` is a valid access (or service) token.

    Valid means: signed by us, of the right kind, not expired, and still backed by the
    database — the service credential not revoked; the user existing and the session (sign-in)
    the token belongs to not revoked. One or two primary-key reads.
    """
    typ = state.tokens.peek_type(token)
    if typ == "service" and allow_service:
        sclaims = state.tokens.decode_service(token)
        async with state.sessions() as session:
            row = await session.get(ServiceToken, sclaims.token_id)
        if row is None or row.revoked_at is not None or row.scope != sclaims.scope:
            raise TokenError("invalid_token", "service token revoked or unknown")
        return Principal(
            user_id=None,
            name=f"{sclaims.scope} service",
            service=sclaims.scope,
            expires_at=sclaims.expires_at,
            token_id=sclaims.token_id,
            issued_at=sclaims.issued_at,
        )
    claims = state.tokens.decode_access(token)
    async with state.sessions() as session:
        user = await session.get(User, claims.user_id)
        if user is None:
            raise TokenError("invalid_token", "user no longer exists")
        if user.disabled_at is not None:  # disabling also revokes the sessions; this is the belt
            raise TokenError("account_disabled", "this account has been disabled by an administrator")
        if claims.session_id is not None:
            signed_in = await session.get(AuthSession, claims.session_id)
            if signed_in is None or signed_in.user_id != user.id or signed_in.revoked_at is not None:
                raise TokenError("session_revoked", "this session has been signed out; sign in again")
        elif user.sessions_revoked_at is not None and claims.issued_at <= user.sessions_revoked_at.timestamp():
            raise TokenError("session_revoked", "this session has been signed out; sign in again")
    return Principal(
        user_id=user.id,
        name=user.name,
        email=user.email,
        expires_at=claims.expires_at,
        session_id=claims.session_id,
        token_id=claims.jti,
        issued_at=claims.issued_at,
    )


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def require_user(request: web.Request) -> Principal:
    """The calling user (401 unless a valid access token is presented)."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
    try:
        principal = await principal_from_token(get_state(request), token, allow_service=False)
    except TokenError as exc:
        raise ApiError(401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    return principal
