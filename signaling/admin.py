"""Administrative actions behind ``codesync token``, ``codesync user create`` and ``migrate``."""

from __future__ import annotations

from sqlmodel import select

from . import db
from .models import ServiceToken, User
from .passwords import MAX_LENGTH, MIN_LENGTH, hash_password
from .settings import Settings
from .tokens import SERVICE_SCOPES, TokenService


class AdminError(Exception):
    pass


async def migrate_only(settings: Settings) -> None:
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()


async def create_service_token(settings: Settings, scope: str, name: str = "") -> str:
    if scope not in SERVICE_SCOPES:
        raise AdminError(f"unknown scope {scope!r}; use one of {', '.join(SERVICE_SCOPES)}")
    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            row = ServiceToken(scope=scope, name=name)
            session.add(row)
            await session.commit()
            return TokenService(settings.effective_secret_key).issue_service(row.id, scope)
    finally:
        await engine.dispose()


async def create_user(settings: Settings, email: str, name: str | None, password: str) -> str:
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
            user = User(email=email, name=name or email.split("@")[0], password_hash=await hash_password(password))
            session.add(user)
            await session.commit()
            return user.id
    finally:
        await engine.dispose()
