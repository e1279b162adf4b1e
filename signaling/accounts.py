"""Account logic shared by the password and OAuth flows: one way to end up signed in.

Whatever way a user signs in, they leave holding the same pair: a short-lived JWT access
token and an opaque, rotating refresh token (see ``signaling.tokens``). Refresh tokens of
one sign-in form a *family*: each refresh marks the presented token used and issues the next
one in the family; presenting a used token again means two parties hold it (theft), so the
whole family is revoked.

A family is a *session* (``auth_sessions``, same id): access tokens carry it as ``sid``, so
revoking the session — logout, logout everywhere, reuse, a password change, deleting the
account — refuses its access tokens at once and closes its ``/signal`` sockets on every node
(``signaling.sessions.announce``, called after the commit).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, NoReturn

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from . import emaillinks, sessions
from .accounterrors import AccountError  # noqa: F401  (re-exported: the accounts API's error)
from codesync.models import AuthSession, RefreshToken, User, utcnow
from .passwords import hash_password, needs_rehash, verify_password
from .state import AppState
from .tokens import hash_token, new_refresh_token

# Deliberately loose: one "@", something on both sides, a dot in the domain, no spaces.
# Deliverability is not ours to judge; this only catches obvious typos and junk.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def valid_email(email: str) -> bool:
    return len(email) <= 320 and bool(_EMAIL_RE.match(email))


def is_admin(user: User, admin_emails: list[str] | tuple[str, ...] = ()) -> bool:
    """An administrator: marked so (CLI, admin page), or a *verified* address listed in
    ``CODESYNC_ADMIN_EMAILS`` — never an unverified one, or whoever registers an admin's
    address first would be an administrator."""
    return bool(user.is_admin or (user.email_verified and user.email in admin_emails))


def user_json(user: User, admin_emails: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "created_at": user.created_at.isoformat(),
        "email_verified": bool(user.email_verified),
        "color": user.color,
        "is_admin": is_admin(user, admin_emails),
        "has_password": user.password_hash is not None,
        "disabled": user.disabled_at is not None,
    }


def check_may_sign_in(state: AppState, user: User) -> None:
    """Refuse a sign-in (any way: password, refresh, OAuth) of a disabled account, or of an
    unverified one where ``CODESYNC_UNVERIFIED_ACCOUNTS=blocked``."""
    if user.disabled_at is not None:
        raise AccountError("account_disabled", "this account has been disabled by an administrator")
    if state.settings.unverified_accounts == "blocked" and not user.email_verified:
        raise AccountError(
            "email_unverified", "confirm your email address first: open the link we mailed you (or ask for a new one)"
        )


async def issue_tokens(state: AppState, session: AsyncSession, user: User, family_id: str | None = None) -> dict[str, Any]:
    """Create a refresh token (in a new session unless ``family_id`` is given) and an access
    token carrying the session id; commits.

    Returns the response body shape of register/login/refresh:
    ``{user, access_token, refresh_token, token_type, expires_in}``.
    """
    if family_id is None:
        signed_in = AuthSession(user_id=user.id)
        session.add(signed_in)
        family_id = signed_in.id
    refresh, refresh_hash = new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id,
            token_hash=refresh_hash,
            expires_at=utcnow() + timedelta(seconds=state.settings.refresh_token_ttl),
        )
    )
    await session.commit()
    access, claims = state.tokens.issue_access(user.id, session_id=family_id)
    return {
        "user": user_json(user, state.settings.admin_email_list),
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": claims.expires_at - claims.issued_at,
    }


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.exec(select(User).where(User.email == normalize_email(email)))).first()


async def register(session: AsyncSession, email: str, password: str, name: str) -> User:
    """Create a password account; :class:`AccountError` ``email_taken`` if the email is in use."""
    email = normalize_email(email)
    if not valid_email(email):
        raise AccountError("invalid_email", "that is not an email address")
    if await user_by_email(session, email) is not None:
        raise AccountError("email_taken", "an account with this email already exists")
    user = User(email=email, name=name, password_hash=await hash_password(password))
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:  # a concurrent registration won the unique index
        await session.rollback()
        raise AccountError("email_taken", "an account with this email already exists") from None
    return user


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    """The user if the password matches, else None — same work whether or not the account exists."""
    user = await user_by_email(session, email)
    ok = await verify_password(user.password_hash if user else None, password)
    if not ok or user is None:
        return None
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
        session.add(user)
        await session.commit()
    return user


async def revoke_family(session: AsyncSession, family_id: str) -> None:
    """Revoke one sign-in: its session and every live refresh token of it (does not commit)."""
    now = utcnow()
    await session.exec(
        update(RefreshToken)
        .where(col(RefreshToken.family_id) == family_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    await session.exec(
        update(AuthSession)
        .where(col(AuthSession.id) == family_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )


async def revoke_all(state: AppState, session: AsyncSession, user_id: str) -> None:
    """Sign a user out everywhere (commits, then closes their sockets on every node).

    Also refuses access tokens of theirs made outside a sign-in (``sessions_revoked_at``).
    """
    now = utcnow()
    await session.exec(
        update(RefreshToken)
        .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    await session.exec(
        update(AuthSession)
        .where(col(AuthSession.user_id) == user_id, col(AuthSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    await session.exec(update(User).where(col(User.id) == user_id).values(sessions_revoked_at=now))
    await session.commit()
    await sessions.announce(state, [sessions.user_key(user_id)])


async def change_password(
    state: AppState, session: AsyncSession, user_id: str, new_password: str, keep_session: str | None = None
) -> None:
    """Set a new password and end every session of the user but ``keep_session`` (the one that
    asked, when it is a sign-in; None: all of them — the caller signs in afresh).

    Other sessions' sockets close at once (``sid:`` notices); access tokens made outside a
    sign-in stop working too (``sessions_revoked_at``, closed by the periodic re-check).
    Emailed reset links still out there stop working.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise AccountError("invalid_credentials", "no such account")
    user.password_hash = await hash_password(new_password)
    session.add(user)
    await emaillinks.spend_all(session, user_id, "reset_password")
    await session.flush()
    if keep_session is None:
        await revoke_all(state, session, user_id)
        return
    await revoke_others(state, session, user_id, keep_session)


async def revoke_others(state: AppState, session: AsyncSession, user_id: str, keep_session: str) -> None:
    """End every session of ``user_id`` except ``keep_session`` (commits, then closes sockets)."""
    now = utcnow()
    others = list(
        (
            await session.exec(
                select(AuthSession.id).where(
                    col(AuthSession.user_id) == user_id,
                    col(AuthSession.revoked_at).is_(None),
                    col(AuthSession.id) != keep_session,
                )
            )
        ).all()
    )
    await session.exec(
        update(RefreshToken)
        .where(
            col(RefreshToken.user_id) == user_id,
            col(RefreshToken.revoked_at).is_(None),
            col(RefreshToken.family_id) != keep_session,
        )
        .values(revoked_at=now)
    )
    if others:
        await session.exec(update(AuthSession).where(col(AuthSession.id).in_(others)).values(revoked_at=now))
    await session.exec(update(User).where(col(User.id) == user_id).values(sessions_revoked_at=now))
    await session.commit()
    await sessions.announce(state, [sessions.session_key(sid) for sid in others])


async def _refresh_row(session: AsyncSession, token: str) -> RefreshToken | None:
    if not token or len(token) > 512:
        return None
    return (await session.exec(select(RefreshToken).where(RefreshToken.token_hash == hash_token(token)))).first()


async def rotate(state: AppState, session: AsyncSession, token: str) -> dict[str, Any]:
    """Exchange a refresh token for a new pair in the same family.

    Raises :class:`AccountError` (``invalid_refresh_token`` or ``refresh_token_reused``).
    The "mark used" step is a conditional UPDATE, so of two concurrent refreshes with one
    token exactly one wins; the loser is treated as reuse.
    """
    row = await _refresh_row(session, token)
    if row is None:
        raise AccountError("invalid_refresh_token", "refresh token is not valid")
    if row.revoked_at is not None:
        owner = await session.get(User, row.user_id)
        if owner is not None and owner.disabled_at is not None:  # say why the session ended
            raise AccountError("account_disabled", "this account has been disabled by an administrator")
        raise AccountError("invalid_refresh_token", "refresh token has been revoked")
    family_id, user_id = row.family_id, row.user_id  # plain values: a rollback expires ``row``
    if row.used_at is not None:
        await _reuse_detected(state, session, family_id)
    now = utcnow()
    if row.expires_at <= now:
        raise AccountError("invalid_refresh_token", "refresh token has expired")
    signed_in = await session.get(AuthSession, family_id)
    if signed_in is not None and signed_in.revoked_at is not None:
        raise AccountError("invalid_refresh_token", "this session has been signed out")
    if signed_in is None:  # a family older than sessions: it becomes one now
        session.add(AuthSession(id=family_id, user_id=user_id, created_at=row.created_at))
    result = await session.exec(
        update(RefreshToken)
        .where(
            col(RefreshToken.id) == row.id,
            col(RefreshToken.used_at).is_(None),
            col(RefreshToken.revoked_at).is_(None),
        )
        .values(used_at=now)
    )
    if result.rowcount != 1:
        await session.rollback()
        await _reuse_detected(state, session, family_id)
    user = await session.get(User, user_id)
    if user is None:  # pragma: no cover - cascade deletes the tokens with the user
        raise AccountError("invalid_refresh_token", "refresh token is not valid")
    check_may_sign_in(state, user)
    return await issue_tokens(state, session, user, family_id=family_id)


async def _reuse_detected(state: AppState, session: AsyncSession, family_id: str) -> NoReturn:
    await revoke_family(session, family_id)
    await session.commit()
    await sessions.announce(state, [sessions.session_key(family_id)])
    raise AccountError(
        "refresh_token_reused", "refresh token was already used; this sign-in has been revoked, sign in again"
    )


async def logout(state: AppState, session: AsyncSession, token: str) -> bool:
    """Revoke the sign-in of ``token``; False if the token is unknown (logout is idempotent)."""
    row = await _refresh_row(session, token)
    if row is None:
        return False
    family_id = row.family_id
    await revoke_family(session, family_id)
    await session.commit()
    await sessions.announce(state, [sessions.session_key(family_id)])
    return True
