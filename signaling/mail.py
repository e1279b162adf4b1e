"""Outgoing mail: a real SMTP client (aiosmtplib), or the log when no SMTP server is configured.

Why it looks like this:

* **Sent in the background.** Request handlers queue a mail (:func:`send_later`) and answer at
  once, so an answer never waits for — or reveals through its timing — an SMTP conversation
  ("if that address has an account, we sent a link" must take as long whether or not it has).
  Pending mails are awaited for a few seconds when the server stops.
* **Never stuck without SMTP.** Without ``CODESYNC_SMTP_URL`` every mail is written to the log
  at WARNING level between clearly marked lines, link included, so someone running
  ``codesync up`` on their own machine can verify their address or reset a password.
* **Failures are logged, never shown.** A refused or unreachable SMTP server is the operator's
  problem; telling the requester would, for password resets, say that the address exists.

``CODESYNC_SMTP_URL``: ``smtp://[user:password@]host[:port]`` (STARTTLS when the server offers
it; port 587 by default), ``smtp+starttls://…`` (STARTTLS required), ``smtps://…`` (implicit
TLS, port 465). User and password are URL-decoded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol
from urllib.parse import unquote, urlsplit

from codesync.settings import Settings
from .state import AppState

log = logging.getLogger("codesync.mail")

PENDING_KEY = "mail_pending"
MAILER_KEY = "mailer"
SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    kind: str  # template name, for logs and tests (verify_email, reset_password, ...)
    link: str | None = None  # the one link it carries, if any (the log mailer shows it apart)


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...


class MailConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool  # implicit TLS (smtps)
    start_tls: bool | None  # True: required; None: when offered


def parse_smtp_url(url: str) -> SmtpConfig:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps", "smtp+starttls") or not parts.hostname:
        raise MailConfigError("CODESYNC_SMTP_URL must look like smtp://[user:pass@]host[:port] (or smtps://, smtp+starttls://)")
    implicit = scheme == "smtps"
    return SmtpConfig(
        host=parts.hostname,
        port=parts.port or (465 if implicit else 587),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=True if scheme == "smtp+starttls" else None,
    )


def build_message(settings: Settings, mail: Mail) -> EmailMessage:
    message = EmailMessage()  # refuses newlines in headers: no header injection through values
    message["From"] = settings.mail_sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    sender_domain = settings.mail_sender.rsplit("@", 1)[-1].strip(" >") or "localhost"
    message["Message-ID"] = make_msgid(domain=sender_domain)
    message["Auto-Submitted"] = "auto-generated"
    message["X-CodeSync-Mail"] = mail.kind
    message.set_content(mail.text)
    return message


class SmtpMailer:
    """Sends through the configured SMTP server, one connection per mail (mails are rare)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config = parse_smtp_url(settings.smtp_url or "")

    async def send(self, mail: Mail) -> None:
        import aiosmtplib

        c = self.config
        await aiosmtplib.send(
            build_message(self.settings, mail),
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            use_tls=c.use_tls,
            start_tls=c.start_tls,
            timeout=self.settings.smtp_timeout,
        )


class LogMailer:
    """No SMTP server: the mail goes to the log, marked so nobody mistakes it for a sent one."""

    def __init__(self, settings: Settings):
        self.settings = settings

    async def send(self, mail: Mail) -> None:
        lines = [
            "=" * 72,
            "MAIL NOT SENT (CODESYNC_SMTP_URL is not set) — this is what it would have said:",
            f"To: {mail.to}",
            f"Subject: {mail.subject}",
        ]
        if mail.link:
            lines.append(f"LINK: {mail.link}")
        lines += ["", mail.text.rstrip(), "=" * 72]
        log.warning("\n".join(lines))


def mailer(state: AppState) -> Mailer:
    found = state.extras.get(MAILER_KEY)
    if found is None:
        found = SmtpMailer(state.settings) if state.settings.smtp_url else LogMailer(state.settings)
        state.extras[MAILER_KEY] = found
    return found


async def _deliver(state: AppState, mail: Mail) -> None:
    try:
        await mailer(state).send(mail)
        log.info("mail sent: %s", mail.kind)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - logged for the operator, never shown to the requester
        log.error("could not send a %s mail (%s: %s); check CODESYNC_SMTP_URL", mail.kind, type(exc).__name__, exc)


def send_later(state: AppState, mail: Mail) -> asyncio.Task:
    """Queue ``mail``; returns at once (see the module docstring for why)."""
    pending: set[asyncio.Task] = state.extras.setdefault(PENDING_KEY, set())
    task = asyncio.create_task(_deliver(state, mail), name=f"mail-{mail.kind}")
    pending.add(task)
    task.add_done_callback(pending.discard)
    return task


async def flush(state: AppState, timeout: float = SHUTDOWN_GRACE) -> None:
    """Wait (bounded) for mails still being sent."""
    pending: set[asyncio.Task] = state.extras.get(PENDING_KEY, set())
    if pending:
        await asyncio.wait(set(pending), timeout=timeout)


def check_config(settings: Settings) -> None:
    """Refuse to start with an unusable ``CODESYNC_SMTP_URL`` (a typo must not lose mails silently)."""
    if settings.smtp_url:
        parse_smtp_url(settings.smtp_url)
    else:
        log.warning("CODESYNC_SMTP_URL is not set: account mails (verification, password reset) are "
                    "written to this log instead of being sent")
