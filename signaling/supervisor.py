"""``codesync up``: the whole local stack as one process group.

Signaling, persistence peer and runner run as child processes (a crash of one never takes
down the others); a child that dies is restarted with backoff; SIGINT/SIGTERM stop them all
gracefully (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time

import httpx

from . import admin, db
from .settings import Settings

log = logging.getLogger("codesync.up")

SERVICES = ("signaling", "persist", "runner")
GRACE = 10.0


async def _service_tokens(settings: Settings) -> dict[str, str]:
    """Service tokens for the local peers, created once and kept in the data dir (0600)."""
    path = settings.data_dir / "service-tokens.json"
    if path.exists():
        try:
            tokens = json.loads(path.read_text())
            if {"persistence", "runner"} <= tokens.keys():
                return tokens
        except ValueError:
            pass
    tokens = {
        scope: await admin.create_service_token(settings, scope, name="codesync up")
        for scope in ("persistence", "runner")
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f)
    return tokens


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
    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def start(self) -> asyncio.subprocess.Process:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signaling.cli", self.name, env=self.env
        )
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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.effective_secret_key  # generate once, before the children race for it
    engine = db.create_engine(settings)
    await db.migrate(engine)
    await engine.dispose()
    tokens = await _service_tokens(settings)

    url = settings.base_url
    base_env = dict(os.environ)
    base_env.update(
        CODESYNC_DATA_DIR=str(settings.data_dir.resolve()),
        CODESYNC_SECRET_KEY=settings.effective_secret_key,
        CODESYNC_SIGNALING_URL=f"http://{settings.host}:{settings.port}",
    )
    children = {
        "signaling": Child("signaling", base_env),
        "persist": Child("persist", {**base_env, "CODESYNC_SERVICE_TOKEN": tokens["persistence"]}),
        "runner": Child("runner", {**base_env, "CODESYNC_SERVICE_TOKEN": tokens["runner"]}),
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
