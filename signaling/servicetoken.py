"""A service peer's side of expiring service tokens: keep a valid one, trade it in early.

The persistence peer and the runner start with ``CODESYNC_SERVICE_TOKEN``. Service tokens
expire, so :class:`ServiceTokenKeeper` exchanges the current token for a fresh one
(``POST /api/service/token``) once half of its lifetime has passed, retrying with backoff
while signaling is unreachable. The signaling client asks :meth:`current` before each
reconnect; when the server closes the socket at the old token's expiry (4001), the reconnect
already uses the new one. No signing key is needed for any of this — a service never holds it.

With ``token_file`` (``CODESYNC_SERVICE_TOKEN_FILE``) each renewed token is also written there
(atomically, mode 0600), so a service restarted later starts from its newest token rather
than from the one it was first given, which may have expired by then (compose: the
``service-tokens`` volume, read by deploy/with-service-token.sh).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import httpx
import jwt

log = logging.getLogger("codesync.service.token")

MIN_WAIT = 1.0
MAX_RETRY = 60.0


def token_times(token: str) -> tuple[int, int] | None:
    """``(iat, exp)`` read from the token without verifying it (we cannot, and need not)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return int(claims["iat"]), int(claims["exp"])
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return None


class ServiceTokenKeeper:
    """Holds the service's current token and renews it in the background."""

    def __init__(self, http_base: str, token: str, *, refresh_fraction: float = 0.5, timeout: float = 10.0,
                 token_file: Path | None = None):
        self.http_base = http_base.rstrip("/")
        self.token = token
        self.token_file = token_file
        self.refresh_fraction = refresh_fraction
        self.timeout = timeout
        self.exchanges = 0  # successful exchanges (tests, logs)
        self._task: asyncio.Task[None] | None = None

    async def current(self) -> str:
        """The newest token (the signaling client's ``token_provider``)."""
        return self.token

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="service-token-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _due_in(self) -> float | None:
        times = token_times(self.token)
        if times is None:
            return None
        iat, exp = times
        due = iat + (exp - iat) * self.refresh_fraction
        return max(MIN_WAIT, due - time.time())

    async def exchange(self) -> str:
        """Trade the current token for a fresh one now; raises on refusal or network failure."""
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            r = await client.post(
                f"{self.http_base}/api/service/token", headers={"Authorization": f"Bearer {self.token}"}
            )
        if r.status_code != 200:
            try:
                error = r.json()["error"]
                why = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                why = f"HTTP {r.status_code}"
            raise RuntimeError(f"service token exchange refused ({why})")
        self.token = r.json()["token"]
        self.exchanges += 1
        if self.token_file is not None:
            save_token(self.token_file, self.token)
        return self.token

    async def _run(self) -> None:
        retry = MIN_WAIT
        while True:
            due = self._due_in()
            if due is None:
                log.error("CODESYNC_SERVICE_TOKEN is not a readable token; it will not be renewed")
                return
            await asyncio.sleep(due)
            try:
                await self.exchange()
                retry = MIN_WAIT
                times = token_times(self.token)
                log.info("service token renewed (valid until %s)", time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.gmtime(times[1])) + " UTC" if times else "?")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - signaling down or the token revoked: retry
                log.warning("renewing the service token failed (%s); retrying in %.0f s", exc, retry)
                await asyncio.sleep(retry)
                retry = min(MAX_RETRY, retry * 2)


def save_token(path: Path, token: str) -> None:
    """Replace ``path`` with ``token`` atomically (a reader sees the old or the new one, never
    half of one), readable by its owner only. A failure is logged, not raised: the service
    keeps working with the token in memory; only a later restart would start from the old one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the renewed service token to %s (%s); a restart would use the old one",
                    path, exc.strerror or exc)
        tmp.unlink(missing_ok=True)
