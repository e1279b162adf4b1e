"""Administrative actions behind ``codesync token``, ``codesync user`` and ``migrate``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import jwt
from sqlalchemy import update
from sqlmodel import col, select

from codesync import db

from . import sessions
from codesync.models import ServiceToken, User, utcnow
from .passwords import MAX_LENGTH, MIN_LENGTH, hash_password
from codesync.settings import Settings
from .tokens import SERVICE_SCOPES, TokenService

# `codesync token` prints a service's *bootstrap* token; the running service trades it for
# fresh CODESYNC_SERVICE_TOKEN_TTL tokens long before it expires, so this lifetime only
# bounds how long a freshly made token may sit unused (in a secret store, a .env file).
CLI_TOKEN_TTL = 30 * 24 * 3600


class AdminError(Exception):
    pass


@dataclass(frozen=True)
class ServiceTokenInfo:
    id: str
    scope: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


async def migrate_only(settings: Settings) -> None:
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()


def _check_scope(scope: str) -> None:
    if scope not in SERVICE_SCOPES:
        raise AdminError(f"unknown scope {scope!r}; use one of {', '.join(SERVICE_SCOPES)}")


async def create_service_credential(settings: Settings, scope: str, name: str = "") -> str:
    """A new ``service_tokens`` row; its id (tokens for it are minted with :func:`mint_service_token`)."""
    _check_scope(scope)
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            row = ServiceToken(scope=scope, name=name)
            session.add(row)
            await session.commit()
            return row.id
    finally:
        await engine.dispose()


def mint_service_token(settings: Settings, token_id: str, scope: str, ttl: int | None = None) -> str:
    """A signed token for an existing credential (needs the signing key: supervisor, CLI only)."""
    _check_scope(scope)
    ttl = settings.service_token_ttl if ttl is None else ttl
    if ttl <= 0:
        raise AdminError("--ttl must be a positive number of seconds")
    return TokenService(settings.effective_secret_key).issue_service(token_id, scope, ttl)


async def create_service_token(settings: Settings, scope: str, name: str = "", ttl: int | None = None) -> str:
    """``codesync token --scope``: a new credential and a token for it valid ``ttl`` seconds."""
    _check_scope(scope)
    ttl = CLI_TOKEN_TTL if ttl is None else ttl
    if ttl <= 0:
        raise AdminError("--ttl must be a positive number of seconds")
    token_id = await create_service_credential(settings, scope, name)
    return mint_service_token(settings, token_id, scope, ttl)


def token_id_of(value: str) -> str:
    """A credential id, or the id inside a service token (read, not verified: it only names a row)."""
    value = value.strip()
    if value.count(".") == 2:
        try:
            claims = jwt.decode(value, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise AdminError("that is neither a service token id nor a service token") from None
        if claims.get("typ") != "service" or not isinstance(claims.get("jti"), str):
            raise AdminError("that is not a service token")
        return claims["jti"]
    if not value or len(value) > 32:
        raise AdminError("that is not a service token id")
    return value


async def list_service_tokens(settings: Settings) -> list[ServiceTokenInfo]:
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            rows = (await session.exec(select(ServiceToken).order_by(col(ServiceToken.created_at)))).all()
            return [ServiceTokenInfo(r.id, r.scope, r.name, r.created_at, r.revoked_at) for r in rows]
    finally:
        await engine.dispose()


async def revoke_service_tokens(settings: Settings, token: str | None = None, scope: str | None = None) -> list[str]:
    """Revoke one credential (id or token) or every live one of ``scope``; the ids revoked.

    Their tokens are refused from now on and their ``/signal`` sockets closed: at once when
    the nodes share Redis (a notice on the bus), else at the nodes' next session re-check.
    """
    if (token is None) == (scope is None):
        raise AdminError("name a token (id or token) or --scope, not both")
    if scope is not None:
        _check_scope(scope)
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            query = select(ServiceToken).where(col(ServiceToken.revoked_at).is_(None))
            if token is not None:
                token_id = token_id_of(token)
                row = await session.get(ServiceToken, token_id)
                if row is None:
                    raise AdminError(f"no service token {token_id}")
                query = query.where(col(ServiceToken.id) == token_id)
            else:
                query = query.where(col(ServiceToken.scope) == scope)
            revoked = [row.id for row in (await session.exec(query)).all()]
            if revoked:
                await session.exec(
                    update(ServiceToken).where(col(ServiceToken.id).in_(revoked)).values(revoked_at=utcnow())
                )
                await session.commit()
    finally:
        await engine.dispose()
    if revoked and settings.redis_url:
        await sessions.publish_notice(settings.redis_url, settings.redis_prefix, [sessions.service_key(i) for i in revoked])
    return revoked


async def create_user(settings: Settings, email: str, name: str | None, password: str, is_admin: bool = False) -> str:
    """An account made by the operator: its address counts as verified (the operator vouches
    for it), whatever the registration mode."""
    email = email.strip().lower()
    if "@" not in email:
        raise AdminError("that is not an email address")
    if not (MIN_LENGTH <= len(password) <= MAX_LENGTH):
        raise AdminError(f"password must be {MIN_LENGTH} to {MAX_LENGTH} characters")
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            existing = (await session.exec(select(User).where(User.email == email))).first()
            if existing is not None:
                raise AdminError(f"an account for {email} already exists")
            user = User(
                email=email, name=name or email.split("@")[0], password_hash=await hash_password(password),
                email_verified=True, is_admin=is_admin,
            )
            session.add(user)
            await session.commit()
            return user.id
    finally:
        await engine.dispose()
