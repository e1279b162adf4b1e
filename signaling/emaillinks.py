"""Emailed links: signed, single-use, expiring, bound to one account and one address.

A link carries a JWT (``typ`` = the purpose, ``sub`` = the user id, ``jti`` = an
``account_tokens`` row, ``exp``) in the web client's URL *fragment* (never sent to a server,
never in a proxy log). Redeeming it checks the signature and the purpose, then spends the row
with one conditional UPDATE (``used_at IS NULL AND expires_at > now``), so of two concurrent
uses exactly one wins and a link never works twice. The row also names the address the link
was mailed to: a verification link verifies that address only — if the account's address has
changed since, the link is dead.

Purposes: ``verify_email`` (``#/verify-email/<token>``), ``change_email`` (the same route: it
confirms a new address), ``reset_password`` (``#/reset-password/<token>``).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from .accounterrors import AccountError
from codesync.models import AccountToken, User, utcnow
from .state import AppState
from .tokens import TokenError

ROUTES = {"verify_email": "verify-email", "change_email": "verify-email", "reset_password": "reset-password"}


def ttl_for(state: AppState, purpose: str) -> int:
    return state.settings.password_reset_ttl if purpose == "reset_password" else state.settings.email_verify_ttl


async def issue(state: AppState, session: AsyncSession, user: User, purpose: str, email: str) -> str:
    """Record a link for ``user`` and ``email`` (flushed, not committed); return its URL."""
    row = AccountToken(
        user_id=user.id, purpose=purpose, email=email,
        expires_at=utcnow() + timedelta(seconds=ttl_for(state, purpose)),
    )
    session.add(row)
    await session.flush()
    token = state.tokens.issue_link(purpose, row.id, user.id, int(row.expires_at.timestamp()))
    return f"{state.settings.base_url}/#/{ROUTES[purpose]}/{token}"


def purpose_of(state: AppState, token: str) -> str | None:
    typ = state.tokens.peek_type(token) if token and len(token) <= 4096 else None
    return typ if typ in ROUTES else None


async def redeem(state: AppState, session: AsyncSession, token: str, purpose: str) -> tuple[AccountToken, User]:
    """Spend the link (not committed: the caller commits with what the link does).

    Raises :class:`AccountError`: ``invalid_link`` (forged, malformed, another kind, unknown
    row), ``link_expired``, ``link_used``.
    """
    try:
        claims = state.tokens.decode_link(token, purpose)
    except TokenError as exc:
        if exc.code == "token_expired":
            raise AccountError("link_expired", "this link has expired; ask for a new one") from None
        raise AccountError("invalid_link", "this link is not valid") from None
    row = await session.get(AccountToken, claims.row_id) if len(claims.row_id) <= 32 else None
    if row is None or row.purpose != purpose or row.user_id != claims.subject:
        raise AccountError("invalid_link", "this link is not valid")
    now = utcnow()
    if row.used_at is not None:
        raise AccountError("link_used", "this link has already been used")
    if row.expires_at <= now:
        raise AccountError("link_expired", "this link has expired; ask for a new one")
    result = await session.exec(
        update(AccountToken)
        .where(col(AccountToken.id) == row.id, col(AccountToken.used_at).is_(None), col(AccountToken.expires_at) > now)
        .values(used_at=now)
    )
    if result.rowcount != 1:  # a concurrent use won
        raise AccountError("link_used", "this link has already been used")
    user = await session.get(User, row.user_id)
    if user is None:  # pragma: no cover - rows cascade with the user
        raise AccountError("invalid_link", "this link is not valid")
    return row, user


async def spend_all(session: AsyncSession, user_id: str, *purposes: str) -> None:
    """Kill every live link of ``user_id`` for ``purposes`` (a reset or password change makes
    the other reset links useless; a new address makes old verification links useless)."""
    await session.exec(
        update(AccountToken)
        .where(
            col(AccountToken.user_id) == user_id,
            col(AccountToken.purpose).in_(purposes),
            col(AccountToken.used_at).is_(None),
        )
        .values(used_at=utcnow())
    )
