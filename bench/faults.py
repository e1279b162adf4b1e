"""Processes the soak (bench/soak.py) breaks on purpose: start, ``kill -9``, restart, measure.

Every process listens on a FIXED loopback port chosen once, so a restarted process is found
again by the clients that had it (peers reconnect to the same signaling URL, signaling to
the same Redis). The Redis here is our OWN ``redis-server`` on a free port, never the
machine's 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.helpers.components import free_port
from tests.helpers.processes import Service, start_service, stop_process
from tests.helpers.wait import wait_http_ok


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (from /proc; None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Managed:
    """One restartable process with a role name (``signaling-1``, ``persist``, ``redis``)."""

    role: str
    starter: Callable[[], "asyncio.Future[subprocess.Popen | Service]"]
    proc: subprocess.Popen | None = None
    service: Service | None = None
    restarts: int = 0
    kills: int = 0
    log_path: Path | None = None
    started_at: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        p = self.popen
        return p.pid if p is not None and p.poll() is None else None

    @property
    def popen(self) -> subprocess.Popen | None:
        return self.service.proc if self.service is not None else self.proc

    async def start(self) -> None:
        started = await self.starter()
        if isinstance(started, Service):
            self.service, self.proc = started, None
        else:
            self.proc, self.service = started, None
        self.started_at.append(time.monotonic())

    def kill9(self) -> None:
        p = self.popen
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        self.kills += 1

    async def restart(self) -> None:
        self.restarts += 1
        await self.start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        p = self.popen
        if p is None:
            return None
        stop_process(p, sig, timeout)
        return p.returncode


# ----------------------------------------------------------------------------- starters
def redis_starter(port: int, workdir: Path) -> Callable[[], "asyncio.Future[subprocess.Popen]"]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)

    async def start() -> subprocess.Popen:
        log = open(workdir / "redis.log", "ab")
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: see {workdir / 'redis.log'}")
                await asyncio.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    return start


def signaling_starter(port: int, env: dict[str, str], workdir: Path) -> Callable[[], "asyncio.Future[Service]"]:
    async def start() -> Service:
        full = {**env, "CODESYNC_HOST": "127.0.0.1", "CODESYNC_PORT": str(port)}
        svc = start_service(["signaling"], full, workdir / f"signaling-{port}.log", name=f"signaling:{port}")
        svc.url = f"http://127.0.0.1:{port}"
        await wait_http_ok(f"{svc.url}/healthz", svc, timeout=60)
        return svc

    return start


def service_starter(command: str, env: dict[str, str], log_path: Path) -> Callable[[], "asyncio.Future[Service]"]:
    async def start() -> Service:
        return start_service([command], env, log_path, name=command)

    return start


def ports(n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


def cpu_count() -> int:
    return os.cpu_count() or 1
