"""A real SMTP server for tests (aiosmtpd on loopback, its own thread) that keeps what it receives.

Usage::

    with smtp_server() as smtp:                     # or smtp_server(username="u", password="p")
        settings = make_settings(smtp_url=smtp.url)
        ...
        mail = await smtp.wait_for("alice@example.com", kind="verify_email")
        token = smtp.token_in(mail, "verify-email")

The server speaks real SMTP (EHLO, optional AUTH PLAIN/LOGIN, DATA); CodeSync's client
(aiosmtplib) talks to it over TCP like to any mail server.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from tests.helpers.components import free_port, require


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def to(self) -> str:
        return str(self.message["To"])

    @property
    def kind(self) -> str:
        return str(self.message["X-CodeSync-Mail"] or "")

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        return body.get_content() if body is not None else ""

    def links(self) -> list[str]:
        return re.findall(r"https?://\S+", self.text)


@dataclass
class MailSink:
    url: str
    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    auth_seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mails(self, to: str | None = None, kind: str | None = None) -> list[Received]:
        with self.lock:
            found = list(self.received)
        return [m for m in found if (to is None or to in m.rcpt_tos) and (kind is None or m.kind == kind)]

    async def wait_for(self, to: str, kind: str | None = None, count: int = 1, timeout: float = 15.0) -> Received:
        """The ``count``-th mail to ``to`` (of ``kind``), waiting for it (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.mails(to, kind)
            if len(found) >= count:
                return found[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no mail #{count} of kind {kind!r} to {to} within {timeout}s; got "
                                     f"{[(m.rcpt_tos, m.kind) for m in self.mails()]}")
            await asyncio.sleep(0.02)

    @staticmethod
    def token_in(mail: Received, route: str) -> str:
        """The token of the link ``…/#/<route>/<token>`` in ``mail``."""
        for link in mail.links():
            m = re.search(rf"/#/{re.escape(route)}/([A-Za-z0-9_.-]+)", link)
            if m:
                return m.group(1)
        raise AssertionError(f"no #/{route}/ link in: {mail.text}")


@contextmanager
def smtp_server(host: str = "127.0.0.1", username: str | None = None, password: str | None = None) -> Iterator[MailSink]:
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
    except ImportError:
        require("aiosmtpd", False, "pip install aiosmtpd (the test extra)")
        raise
    port = free_port(host)
    creds = f"{username}:{password}@" if username else ""
    sink = MailSink(url=f"smtp://{creds}{host}:{port}", host=host, port=port)

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            message = message_from_bytes(envelope.content, policy=policy.default)
            with sink.lock:
                sink.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
            return "250 Message accepted for delivery"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == username and auth_data.password.decode() == password
        if ok:
            sink.auth_seen.append(auth_data.login.decode())
        return AuthResult(success=ok)

    kwargs = {}
    if username:
        kwargs = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}
    controller = Controller(Handler(), hostname=host, port=port, ready_timeout=10, **kwargs)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
