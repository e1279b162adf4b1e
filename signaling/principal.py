"""Who is calling: resolves a bearer / query token into a user or a service principal.

The HTTP API and the ``/signal`` WebSocket share this, so both accept exactly the same tokens
and refuse the same ones (expired, forged, revoked, wrong kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .errors import ApiError
from .models import ServiceToken, User
from .state import AppState, get_state
from .tokens import TokenError


@dataclass(frozen=True)
class Principal:
    user_id: str | None
    name: str
    service: str | None = None  # "persistence" | "runner" for service tokens
    email: str | None = None
    expires_at: int | None = None  # unix time the token stops being valid (None = no expiry)

    @property
    def is_service(self) -> bool:
        return self.service is not None


async def principal_from_token(state: AppState, token: str, allow_service: bool = True) -> Principal:
    """Raise :class:`TokenError` unless ``token`` is a valid access (or service) token."""
    typ = state.tokens.peek_type(token)
    if typ == "service" and allow_service:
        claims = state.tokens.decode_service(token)
        async with state.sessions() as session:
            row = await session.get(ServiceToken, claims.token_id)
        if row is None or row.revoked_at is not None or row.scope != claims.scope:
            raise TokenError("invalid_token", "service token revoked or unknown")
        return Principal(user_id=None, name=f"{claims.scope} service", service=claims.scope)
    claims = state.tokens.decode_access(token)
    async with state.sessions() as session:
        user = await session.get(User, claims.user_id)
    if user is None:
        raise TokenError("invalid_token", "user no longer exists")
    return Principal(user_id=user.id, name=user.name, email=user.email, expires_at=claims.expires_at)


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
