"""``codesync up``: the whole local stack as one process group.

Signaling, persistence peer and runner run as child processes (a crash of one never takes
down the others); a child that dies is restarted with backoff; SIGINT/SIGTERM stop them all
gracefully (SIGTERM, then SIGKILL after a grace period).

Least privilege: only the supervisor and the signaling child know the token-signing key. The
persistence peer and the runner (which runs other people's code) get a service token the
supervisor mints for each (re)start — valid ``CODESYNC_SERVICE_TOKEN_TTL`` seconds and renewed
by the service itself over HTTP — and an environment without the key or other secrets; the
key file in the data dir is never read by them (their settings never ask for it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import httpx

from signaling import admin

from . import db
from .settings import Settings, ensure_private_dir

log = logging.getLogger("codesync.up")

SERVICES = ("signaling", "persist", "runner")
GRACE = 10.0
UP_TOKEN_NAME = "codesync up"


# What the service peers must not inherit: the signing key and every other secret. Empty
# values (not just absent ones) so that a .env file in the working directory cannot supply them.
# CODESYNC_SERVICE_TOKEN_FILE too: both peers would write their renewed tokens into one file.
_MASKED = ("CODESYNC_SECRET_KEY", "CODESYNC_TURN_SECRET", "CODESYNC_SERVICE_TOKEN_FILE")
_DROPPED_PREFIXES = ("CODESYNC_OAUTH_",)
LEGACY_TOKEN_FILE = "service-tokens.json"


async def _service_credentials(settings: Settings) -> dict[str, str]:
    """The ``service_tokens`` rows of this stack's peers (scope → id), made once, reused."""
    from sqlmodel import col, select

    from .models import ServiceToken

    engine = db.create_engine(settings)
    try:
        async with db.session_factory(engine)() as session:
            rows = (
                await session.exec(
                    select(ServiceToken).where(
                        col(ServiceToken.name) == UP_TOKEN_NAME, col(ServiceToken.revoked_at).is_(None)
                    )
                )
            ).all()
        found = {row.scope: row.id for row in sorted(rows, key=lambda r: r.created_at)}
    finally:
        await engine.dispose()
    for scope in ("persistence", "runner"):
        if scope not in found:
            found[scope] = await admin.create_service_credential(settings, scope, name=UP_TOKEN_NAME)
    # Earlier versions kept never-expiring tokens in the data dir; they are invalid now.
    (settings.data_dir / LEGACY_TOKEN_FILE).unlink(missing_ok=True)
    return found


def peer_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` without the secrets a service peer has no use for."""
    env = {k: v for k, v in base.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update({name: "" for name in _MASKED})
    return env


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    return False


class Child:
    def __init__(self, name: str, env: dict[str, str] | Callable[[], dict[str, str]]):
        self.name = name
        self.env = env  # or a function: a fresh environment (a new service token) per start
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def start(self) -> asyncio.subprocess.Process:
        env = self.env() if callable(self.env) else self.env
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "codesync.cli", self.name, env=env)
        return self.proc

    async def supervise(self) -> None:
        backoff = 0.5
        while not self.stopping:
            started = time.monotonic()
            proc = self.proc or await self.start()
            code = await proc.wait()
            self.proc = None
            if self.stopping:
                return
            if time.monotonic() - started > 30:
                backoff = 0.5
            log.warning("%s exited with %s; restarting in %.1fs", self.name, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), GRACE)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def run_stack(settings: Settings) -> int:
    ensure_private_dir(settings.data_dir)
    secret = settings.effective_secret_key  # generate once, before any child starts
    engine = db.create_engine(settings)
    await db.migrate(engine)
    await engine.dispose()
    credentials = await _service_credentials(settings)

    url = settings.base_url
    base_env = dict(os.environ)
    base_env.update(
        CODESYNC_DATA_DIR=str(settings.data_dir.resolve()),
        CODESYNC_DATABASE_URL=settings.effective_database_url,
        CODESYNC_SIGNALING_URL=f"http://{settings.host}:{settings.port}",
    )
    base_env.pop("CODESYNC_SERVICE_TOKEN", None)
    signaling_env = {**base_env, "CODESYNC_SECRET_KEY": secret}
    peers_env = peer_env(base_env)
    if settings.ops_port is not None:  # one ops port each: signaling N, persist N+1, runner N+2
        signaling_env["CODESYNC_OPS_PORT"] = str(settings.ops_port)
        if not settings.admin_metrics_urls:  # the admin page reads the peers' live numbers there
            ops_host = settings.ops_host or settings.host
            ops_host = "127.0.0.1" if ops_host in ("0.0.0.0", "::", "") else ops_host
            signaling_env["CODESYNC_ADMIN_METRICS_URLS"] = ",".join(
                f"http://{ops_host}:{settings.ops_port + offset}/metrics" for offset in (1, 2)
            )

    def service_env(scope: str, offset: int) -> Callable[[], dict[str, str]]:
        def make() -> dict[str, str]:
            env = {**peers_env, "CODESYNC_SERVICE_TOKEN": admin.mint_service_token(settings, credentials[scope], scope)}
            if settings.ops_port is not None:
                env["CODESYNC_OPS_PORT"] = str(settings.ops_port + offset)
            return env

        return make

    children = {
        "signaling": Child("signaling", signaling_env),
        "persist": Child("persist", service_env("persistence", 1)),
        "runner": Child("runner", service_env("runner", 2)),
    }
    first = await children["signaling"].start()
    if not await _wait_healthy(f"http://{settings.host}:{settings.port}", first):
        log.error("signaling did not become healthy; see the log above")
        await children["signaling"].stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(child.supervise()) for child in children.values()]
    print(f"\n  CodeSync is running: {url}\n  (Ctrl-C to stop)\n", flush=True)
    await stop.wait()
    log.info("stopping")
    # Peers first, so they flush and leave while signaling is still up.
    await asyncio.gather(children["persist"].stop(), children["runner"].stop())
    await children["signaling"].stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0
