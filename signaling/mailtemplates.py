"""The text of every mail CodeSync sends (docs/accounts.md lists them).

Plain text only. Nothing a user typed (names, room names) goes into a mail: mails also reach
addresses whose owner never signed up (someone else registered with them), and an
attacker-chosen name in a mail from this server would be a phishing kit.
"""

from __future__ import annotations

from .mail import Mail
from codesync.settings import Settings

FOOTER = "\n\n-- \nCodeSync at {base}\nThis mail was sent automatically; replies are not read.\n"


def _hours(seconds: int) -> str:
    if seconds % 3600 == 0:
        n = seconds // 3600
        return f"{n} hour" + ("s" if n != 1 else "")
    n = max(1, seconds // 60)
    return f"{n} minute" + ("s" if n != 1 else "")


def _mail(settings: Settings, to: str, kind: str, subject: str, body: str, link: str | None = None) -> Mail:
    return Mail(to=to, subject=subject, text=body.strip() + FOOTER.format(base=settings.base_url), kind=kind, link=link)


def verify_email(settings: Settings, to: str, link: str) -> Mail:
    return _mail(settings, to, "verify_email", "Confirm your email address for CodeSync", f"""
Hello,

someone — hopefully you — created a CodeSync account at {settings.base_url} with this
email address. To confirm that the address is yours, open this link:

{link}

The link works once and for {_hours(settings.email_verify_ttl)}.

If you did not create this account, ignore this mail: the address stays unconfirmed.
""", link)


def account_exists(settings: Settings, to: str) -> Mail:
    return _mail(settings, to, "account_exists", "You already have a CodeSync account", f"""
Hello,

someone — hopefully you — tried to create a CodeSync account at {settings.base_url} with this
email address, but it already has one. Sign in at

{settings.base_url}/#/login

or, if you forgot your password, ask for a new one at

{settings.base_url}/#/forgot-password

If it was not you, ignore this mail; nothing has changed.
""")


def reset_password(settings: Settings, to: str, link: str) -> Mail:
    return _mail(settings, to, "reset_password", "Reset your CodeSync password", f"""
Hello,

someone — hopefully you — asked to reset the password of the CodeSync account with this
email address. To choose a new password, open this link:

{link}

The link works once and for {_hours(settings.password_reset_ttl)}. Setting a new password
signs the account out everywhere.

If you did not ask for this, ignore this mail: your password stays as it is.
""", link)


def confirm_new_email(settings: Settings, to: str, link: str) -> Mail:
    return _mail(settings, to, "change_email", "Confirm your new email address for CodeSync", f"""
Hello,

the owner of a CodeSync account at {settings.base_url} asked to use this address from now on.
To confirm it, open this link:

{link}

The link works once and for {_hours(settings.email_verify_ttl)}. Until then the account keeps
its current address.

If you did not ask for this, ignore this mail.
""", link)


def email_change_requested(settings: Settings, to: str, new_email: str) -> Mail:
    return _mail(settings, to, "email_change_requested", "Your CodeSync email address is being changed", f"""
Hello,

someone signed in to your CodeSync account asked to change its email address to
{new_email}. The change happens when that address confirms it.

If this was not you, change your password now at {settings.base_url}/#/account (or reset it at
{settings.base_url}/#/forgot-password): that also signs everyone else out.
""")


def email_changed(settings: Settings, to: str, new_email: str) -> Mail:
    return _mail(settings, to, "email_changed", "Your CodeSync email address was changed", f"""
Hello,

the email address of your CodeSync account is now {new_email}; this address no longer signs in.

If this was not you, contact the administrator of {settings.base_url}.
""")


def password_changed(settings: Settings, to: str) -> Mail:
    return _mail(settings, to, "password_changed", "Your CodeSync password was changed", f"""
Hello,

the password of your CodeSync account was changed, and every other session was signed out.

If this was not you, reset your password at {settings.base_url}/#/forgot-password and tell the
administrator of {settings.base_url}.
""")


def signup_invite(settings: Settings, to: str, link: str, ttl_seconds: int) -> Mail:
    return _mail(settings, to, "signup_invite", "You are invited to CodeSync", f"""
Hello,

an administrator of CodeSync at {settings.base_url} invites you to create an account there.
Open this link to do so:

{link}

The invitation works once and for {_hours(ttl_seconds)}.
""", link)


def account_deleted(settings: Settings, to: str) -> Mail:
    return _mail(settings, to, "account_deleted", "Your CodeSync account was deleted", f"""
Hello,

the CodeSync account with this email address at {settings.base_url} has been deleted, with the
rooms it chose to delete. Text it wrote in rooms that live on is kept, shown as written by
"deleted user".
""")
