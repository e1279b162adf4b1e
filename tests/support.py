"""Test helpers: real services on loopback, free ports, components that must exist in CI.

Rule (README, "Tests"): a test may skip for a missing component only outside CI; under
``CI=true`` a missing component is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CODESYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CODESYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")
# The editing traces: defined once in bench (CODESYNC_TRACES overrides); bench.traces reads them.
from bench import TRACES  # noqa: E402,F401


def require(component: str, available: bool, how: str = "") -> None:
    """Skip (locally) or fail (in CI) when a required component is missing."""
    if available:
        return
    message = f"{component} is not available" + (f": {how}" if how else "")
    if IN_CI:
        pytest.fail(f"CI requires {message}")
    pytest.skip(message)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def child_env(**overrides: str) -> dict[str, str]:
    """Environment for a child CodeSync process: only what we set, plus PATH and friends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESYNC_")}
    # Tests register accounts and mint invites at once (docs/accounts.md: the default keeps
    # unverified accounts from minting invites; tests of that set it themselves).
    env.update({"CODESYNC_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "CODESYNC_UNVERIFIED_ACCOUNTS": "full"})
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Send ``sig`` to a child still running, give it ``grace`` seconds, then SIGKILL and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Service:
    """A CodeSync sub-command running as a real child process."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.proc, sig, grace=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def start_service(command: list[str], env: dict[str, str], log_path: Path, name: str | None = None) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "codesync.cli", *command], env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT
    )
    fh.close()
    return Service(name or command[0], proc, log_path, env=env)


async def wait_http_ok(url: str, service: Service | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if service is not None and service.proc.poll() is not None:
                raise AssertionError(f"{service.name} exited early:\n{service.log()[-4000:]}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


async def start_signaling(tmp: Path, env: dict[str, str], host: str = "127.0.0.1") -> Service:
    port = free_port(host)
    env = {**env, "CODESYNC_HOST": host, "CODESYNC_PORT": str(port)}
    svc = start_service(["signaling"], env, tmp / f"signaling-{port}.log", name=f"signaling:{port}")
    svc.url = f"http://{host}:{port}"
    await wait_http_ok(f"{svc.url}/healthz", svc)
    return svc


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    require("PostgreSQL", port_open("127.0.0.1", 5432), "start it on 127.0.0.1:5432")
    name = f"codesync_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
