"""What a person does with their own account: verify the address, reset or change the
password, change the address, edit the profile. Rules only; HTTP is ``signaling.api.account``.

Enumeration: every request that starts from an email address someone typed (password reset,
re-sending a verification link, registration while unverified accounts are blocked) is
answered the same whether or not the address has an account, *before* anything about the
address is looked up — the lookup and the mail happen in a background task
(:func:`in_background`), so neither the answer nor its timing depends on the address.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from . import emaillinks, mailtemplates, sessions
from .accounts import AccountError, normalize_email, revoke_all, user_by_email, valid_email
from .mail import send_later
from codesync.models import User
from .passwords import hash_password, verify_password
from .registration import domain_of
from .state import AppState

log = logging.getLogger("codesync.accounts")

COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
JOBS_KEY = "account_jobs"


def in_background(state: AppState, job: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``job`` after the answer went out; failures are logged (never shown)."""

    async def run() -> None:
        try:
            await job()
        except Exception:  # noqa: BLE001
            log.exception("background %s failed", what)

    jobs: set[asyncio.Task] = state.extras.setdefault(JOBS_KEY, set())
    task = asyncio.create_task(run(), name=f"account-{what}")
    jobs.add(task)
    task.add_done_callback(jobs.discard)


async def flush_jobs(state: AppState, timeout: float = 10.0) -> None:
    jobs: set[asyncio.Task] = state.extras.get(JOBS_KEY, set())
    if jobs:
        await asyncio.wait(set(jobs), timeout=timeout)


# ----------------------------------------------------------------------------- verification
async def send_verification(state: AppState, session: AsyncSession, user: User) -> None:
    """Mail ``user`` a link verifying their current address (commits)."""
    link = await emaillinks.issue(state, session, user, "verify_email", user.email)
    await session.commit()
    send_later(state, mailtemplates.verify_email(state.settings, user.email, link))


async def resend_verification_for(state: AppState, email: str) -> None:
    """Background job of the unauthenticated "send the link again" form."""
    from .ratelimit import mail_throttle

    async with state.sessions() as session:
        user = await user_by_email(session, email)
        if user is None or user.email_verified or user.disabled_at is not None:
            return
        if not await mail_throttle(state).may_mail(user.email, "verify_email"):
            log.info("verification mail not sent: the address had its share this window")
            return
        await send_verification(state, session, user)


async def confirm_email(state: AppState, session: AsyncSession, token: str, caller_id: str | None) -> User:
    """Redeem a verification or new-address link; the account it belongs to.

    ``caller_id``: the signed-in user presenting it, if any — a link of another account is
    refused without being spent (someone else's link must not change their account through
    yours, nor yours through theirs)."""
    purpose = emaillinks.purpose_of(state, token)
    if purpose not in ("verify_email", "change_email"):
        raise AccountError("invalid_link", "this link is not valid")
    claims_user = _link_subject(state, token, purpose)
    if caller_id is not None and claims_user is not None and claims_user != caller_id:
        raise AccountError("other_account", "this link belongs to another account; sign out to use it")
    row, user = await emaillinks.redeem(state, session, token, purpose)
    if user.disabled_at is not None:
        await session.rollback()
        raise AccountError("account_disabled", "this account has been disabled by an administrator")
    if purpose == "verify_email":
        if row.email != user.email:  # the address changed since the link was sent
            await session.rollback()
            raise AccountError("invalid_link", "this link is for an address the account no longer uses")
        user.email_verified = True
        session.add(user)
        await session.commit()
        return user
    # change_email: the new address is proven; it must still be free.
    taken = await user_by_email(session, row.email)
    if taken is not None and taken.id != user.id:
        await session.rollback()
        raise AccountError("email_taken", "another account uses this address now")
    old = user.email
    user.email = row.email
    user.email_verified = True
    session.add(user)
    await emaillinks.spend_all(session, user.id, "verify_email", "change_email", "reset_password")
    await session.commit()
    send_later(state, mailtemplates.email_changed(state.settings, old, user.email))
    return user


def _link_subject(state: AppState, token: str, purpose: str) -> str | None:
    from .tokens import TokenError

    try:
        return state.tokens.decode_link(token, purpose).subject
    except TokenError:
        return None  # redeem() says what is wrong with it


# ----------------------------------------------------------------------------- password reset
async def reset_job(state: AppState, email: str) -> None:
    """Background job of ``POST /api/auth/password-reset``: mail a link if the address has an
    account that may have one (not disabled) and has not had its share of mails."""
    from .ratelimit import mail_throttle

    email = normalize_email(email)
    if not valid_email(email):
        return
    if not await mail_throttle(state).may_mail(email, "reset_password"):
        log.info("password-reset mail not sent: the address had its share this window")
        return
    async with state.sessions() as session:
        user = await user_by_email(session, email)
        if user is None or user.disabled_at is not None:
            return
        link = await emaillinks.issue(state, session, user, "reset_password", user.email)
        await session.commit()
    send_later(state, mailtemplates.reset_password(state.settings, user.email, link))


async def reset_password(state: AppState, session: AsyncSession, token: str, new_password: str) -> User:
    """Redeem a reset link: new password, every session ended, the other reset links dead.

    Opening the mailed link proves the address, so an unverified address becomes verified —
    and whoever else knew the old password (say, someone who registered the address before
    its owner) is signed out everywhere."""
    row, user = await emaillinks.redeem(state, session, token, "reset_password")
    if user.disabled_at is not None:
        await session.rollback()
        raise AccountError("account_disabled", "this account has been disabled by an administrator")
    if row.email != user.email:
        await session.rollback()
        raise AccountError("invalid_link", "this link is for an address the account no longer uses")
    user.password_hash = await hash_password(new_password)
    user.email_verified = True
    session.add(user)
    await emaillinks.spend_all(session, user.id, "reset_password")
    await session.flush()
    await revoke_all(state, session, user.id)  # commits, closes every socket of the user
    send_later(state, mailtemplates.password_changed(state.settings, user.email))
    return user


# ----------------------------------------------------------------------------- signed-in changes
async def check_password(user: User, password: str | None) -> None:
    """A sensitive change needs the current password (accounts that have one)."""
    if user.password_hash is None:
        return
    if not password or not await verify_password(user.password_hash, password):
        raise AccountError("wrong_password", "the current password is not correct")


async def change_password(
    state: AppState, session: AsyncSession, user: User, old: str | None, new: str, session_id: str | None
) -> None:
    """Asks for the old password; ends every other session (this one stays signed in)."""
    from .accounts import change_password as set_password

    if user.password_hash is None:
        raise AccountError(
            "no_password", "this account signs in with a provider; to add a password, use \"forgot password\""
        )
    await check_password(user, old)
    await set_password(state, session, user.id, new, keep_session=session_id)
    send_later(state, mailtemplates.password_changed(state.settings, user.email))


async def request_email_change(state: AppState, session: AsyncSession, user: User, new_email: str, password: str | None) -> None:
    """Mail a confirmation link to ``new_email`` and a notice to the current address.

    The answer is the same whether or not ``new_email`` belongs to another account (a signed-in
    user must not be able to probe addresses); a taken address just gets no link."""
    await check_password(user, password)
    new_email = normalize_email(new_email)
    if not valid_email(new_email):
        raise AccountError("invalid_email", "that is not an email address")
    if new_email == user.email:
        raise AccountError("same_email", "that is already your address")
    settings = state.settings
    if settings.registration == "domain" and domain_of(new_email) not in settings.registration_domain_list:
        raise AccountError("domain_not_allowed", "accounts on this server are for addresses at " + ", ".join(settings.registration_domain_list))
    from .ratelimit import mail_throttle

    if not await mail_throttle(state).may_mail(user.email, "change_email"):
        raise AccountError("rate_limited", "too many address changes; try again later")
    taken = await user_by_email(session, new_email)
    send_later(state, mailtemplates.email_change_requested(settings, user.email, new_email))
    if taken is not None:
        log.info("email change of %s: the new address belongs to another account; no link sent", user.id)
        return
    link = await emaillinks.issue(state, session, user, "change_email", new_email)
    await session.commit()
    send_later(state, mailtemplates.confirm_new_email(settings, new_email, link))


async def update_profile(
    state: AppState, session: AsyncSession, user: User, name: str | None, color: str | None, clear_color: bool
) -> User:
    if name is not None:
        user.name = name
    if clear_color:
        user.color = None
    elif color is not None:
        if not COLOR_RE.match(color):
            raise AccountError("invalid", "color: must look like #1a2b3c")
        user.color = color.lower()
    session.add(user)
    await session.commit()
    return user


def me_json(state: AppState, user: User) -> dict[str, Any]:
    from .accounts import user_json

    return user_json(user, state.settings.admin_email_list)


async def end_user_sockets(state: AppState, user_id: str) -> None:
    await sessions.announce(state, [sessions.user_key(user_id)])
