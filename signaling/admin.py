"""Administrative actions behind ``codesync token``, ``codesync user`` and ``migrate``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

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
    """A clear message for the operator; ``codesync`` prints it and exits ``exit_code``."""

    exit_code = 2


class TokenInvalid(AdminError):
    """``codesync token --check``: the token is not one a service could use (exit 1, not 2)."""

    exit_code = 1


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


@dataclass(frozen=True)
class ServiceTokenCheck:
    id: str
    scope: str
    expires_at: datetime


def read_token_argument(value: str) -> str:
    """``FILE|TOKEN``: a value with a ``/`` is a file (``./persistence``) and stands for its
    first line; anything else is the token (or id) itself — tokens and ids never hold a ``/``.

    A missing or empty file is an invalid token (exit 1), not a usage error: deploy/bootstrap.sh
    checks a token file that may not be there yet.
    """
    value = value.strip()
    if "/" not in value:
        return value
    try:
        with open(value, encoding="utf-8", errors="replace") as handle:
            token = handle.readline(8192).strip()
    except FileNotFoundError:
        raise TokenInvalid(f"no token file {value}") from None
    except OSError as exc:
        raise AdminError(f"cannot read {value}: {exc.strerror or exc}") from None
    if not token:
        raise TokenInvalid(f"{value} is empty")
    return token


async def check_service_token(settings: Settings, token: str, scope: str | None = None) -> ServiceTokenCheck:
    """Whether ``token`` would be accepted now: our signature, a service token (of ``scope``),
    not expired, and its ``service_tokens`` row present and not revoked — the checks signaling
    makes (``signaling.principal``). Raises :class:`TokenInvalid` saying which one failed."""
    from .tokens import TokenError

    if scope is not None:
        _check_scope(scope)
    try:
        claims = TokenService(settings.effective_secret_key).decode_service(token)
    except TokenError as exc:
        if exc.code == "token_expired":
            raise TokenInvalid("the service token has expired") from None
        raise TokenInvalid(f"not a valid service token: {exc.message}") from None
    if scope is not None and claims.scope != scope:
        raise TokenInvalid(f"a {claims.scope} token, not a {scope} one")
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            row = await session.get(ServiceToken, claims.token_id)
    finally:
        await engine.dispose()
    if row is None or row.scope != claims.scope:
        raise TokenInvalid(f"service token {claims.token_id} is unknown to this database")
    if row.revoked_at is not None:
        raise TokenInvalid(f"service token {claims.token_id} was revoked {row.revoked_at:%Y-%m-%d %H:%M} UTC")
    return ServiceTokenCheck(claims.token_id, claims.scope, datetime.fromtimestamp(claims.expires_at, timezone.utc))


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
    Both: that one credential, only if it is of ``scope`` (deploy/bootstrap.sh replacing the
    runner's token file must never end the persistence peer's credential).

    Their tokens are refused from now on and their ``/signal`` sockets closed: at once when
    the nodes share Redis (a notice on the bus), else at the nodes' next session re-check.
    """
    if token is None and scope is None:
        raise AdminError("name a token (id or token) or --scope")
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
                if scope is not None and row.scope != scope:
                    raise AdminError(f"service token {token_id} is a {row.scope} token, not a {scope} one; not revoked")
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
