"""Who may create an account (``CODESYNC_REGISTRATION``), and administrators' signup invites.

Modes:

- ``open`` — anyone.
- ``invite`` — only with an invitation: a room invite link (the new account joins that room)
  or an administrator's signup invite.
- ``domain`` — addresses at ``CODESYNC_REGISTRATION_DOMAINS`` (exact domains, lower case), or
  an administrator's signup invite.
- ``closed`` — only administrators make accounts: ``codesync user create`` or a signup invite.

The same rules apply to a first OAuth sign-in that would create an account (linking a provider
to an existing account is not a registration). Refusals are decided *before* the address is
looked up, so they say nothing about which addresses have accounts.

A signup invite is a signed token (``typ: signup``) naming a ``signup_invites`` row: single
use, expiring, revocable, optionally bound to one address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .accounts import AccountError, normalize_email
from codesync.models import Invite, Membership, Role, SignupInvite, utcnow
from .rooms import role_needed_to_invite
from .state import AppState
from .tokens import TokenError

MODES = ("open", "invite", "domain", "closed")


@dataclass(frozen=True)
class Admission:
    """Why a registration is let in: ``signup_invite`` is a row to spend once the account
    exists; ``room_invite`` is a room invite token to accept for the new account."""

    signup_invite_id: str | None = None
    room_invite: str | None = None


def policy_json(state: AppState) -> dict[str, Any]:
    """What the sign-in page shows (``GET /api/auth/registration``): the mode, honestly."""
    s = state.settings
    return {
        "mode": s.registration,
        "domains": s.registration_domain_list if s.registration == "domain" else [],
        "unverified_accounts": s.unverified_accounts,
        "mail": "smtp" if s.smtp_url else "log",
    }


def domain_of(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


async def admit(state: AppState, session: AsyncSession, email: str, invite: str | None) -> Admission:
    """Let a registration of ``email`` in, or raise :class:`AccountError`.

    ``invite`` is a room invite token or a signup invite token (either kind, as the web client
    got it). A signup invite works in every mode; a room invite in ``open`` and ``invite``.
    """
    mode = state.settings.registration
    email = normalize_email(email)
    kind = state.tokens.peek_type(invite) if invite else None
    if invite and kind == "signup":
        row = await _signup_invite(state, session, invite)
        if row.email and row.email != email:
            raise AccountError("invite_email_mismatch", "this invitation is for another email address")
        return Admission(signup_invite_id=row.id)
    if mode == "open":
        return Admission(room_invite=invite if kind == "invite" else None)
    if mode == "closed":
        raise AccountError("registration_closed", "registration is closed on this server: ask an administrator for an account")
    if mode == "domain":
        allowed = state.settings.registration_domain_list
        if domain_of(email) not in allowed:
            raise AccountError(
                "domain_not_allowed",
                "accounts on this server are for addresses at " + ", ".join(allowed) if allowed
                else "no email domain may register on this server",
            )
        return Admission(room_invite=invite if kind == "invite" else None)
    # invite-only: a live room invite
    if kind != "invite" or not invite:
        raise AccountError("invite_required", "this server is invite-only: open an invite link to create an account")
    await _live_room_invite(state, session, invite)
    return Admission(room_invite=invite)


async def _live_room_invite(state: AppState, session: AsyncSession, token: str) -> None:
    """The room invite is valid now (the full check, role of its creator included, runs when
    it is accepted right after the account is made)."""
    try:
        claims = state.tokens.decode_invite(token)
    except TokenError:
        raise AccountError("invite_invalid", "this invite link is not valid or has expired") from None
    row = await session.get(Invite, claims.invite_id) if len(claims.invite_id) <= 32 else None
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow() or row.room_id != claims.room_id:
        raise AccountError("invite_invalid", "this invite link is not valid or has expired")
    creator = await session.get(Membership, (row.room_id, row.created_by))
    if creator is None or not Role(creator.role).at_least(role_needed_to_invite(row.role)):
        raise AccountError("invite_invalid", "this invite link is no longer valid: whoever made it can no longer invite")


async def _signup_invite(state: AppState, session: AsyncSession, token: str) -> SignupInvite:
    try:
        claims = state.tokens.decode_link(token, "signup")
    except TokenError:
        raise AccountError("invite_invalid", "this invitation is not valid or has expired") from None
    row = await session.get(SignupInvite, claims.row_id) if len(claims.row_id) <= 32 else None
    if row is None or row.used_at is not None or row.revoked_at is not None or row.expires_at <= utcnow():
        raise AccountError("invite_invalid", "this invitation is not valid, was used, or has expired")
    return row


async def spend_signup_invite(session: AsyncSession, invite_id: str, user_id: str) -> bool:
    """Mark the invite used by ``user_id`` (not committed); False if someone else was first."""
    now = utcnow()
    result = await session.exec(
        update(SignupInvite)
        .where(
            col(SignupInvite.id) == invite_id,
            col(SignupInvite.used_at).is_(None),
            col(SignupInvite.revoked_at).is_(None),
            col(SignupInvite.expires_at) > now,
        )
        .values(used_at=now, used_by=user_id)
    )
    return result.rowcount == 1


# ----------------------------------------------------------------------------- admin side
def signup_invite_json(state: AppState, row: SignupInvite, with_link: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "email": row.email,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "used_at": row.used_at.isoformat() if row.used_at else None,
        "used_by": row.used_by,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
    }
    if with_link:
        token = state.tokens.issue_link("signup", row.id, "signup", int(row.expires_at.timestamp()))
        body["token"] = token
        body["url"] = f"{state.settings.base_url}/#/register?invite={token}"
    return body


async def create_signup_invite(
    state: AppState, session: AsyncSession, admin_id: str, email: str | None, ttl: int | None
) -> SignupInvite:
    row = SignupInvite(
        email=normalize_email(email) if email else None,
        created_by=admin_id,
        expires_at=utcnow() + timedelta(seconds=ttl or state.settings.invite_ttl),
    )
    session.add(row)
    await session.commit()
    return row


async def list_signup_invites(session: AsyncSession) -> list[SignupInvite]:
    rows = await session.exec(select(SignupInvite).order_by(col(SignupInvite.created_at).desc()).limit(200))
    return list(rows.all())


async def revoke_signup_invite(session: AsyncSession, invite_id: str) -> bool:
    result = await session.exec(
        update(SignupInvite)
        .where(col(SignupInvite.id) == invite_id, col(SignupInvite.revoked_at).is_(None), col(SignupInvite.used_at).is_(None))
        .values(revoked_at=utcnow())
    )
    await session.commit()
    return result.rowcount == 1
