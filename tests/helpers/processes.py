"""CodeSync sub-commands (``codesync signaling``, ``persist``, ``runner``) as real child processes.

One wrapper, :class:`Service`, for every process a test or benchmark starts: its log file,
whether it is alive, a graceful ``stop`` and a ``kill``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.components import ROOT, free_port
from tests.helpers.wait import wait_http_ok


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

    def tail(self, n: int = 4000) -> str:
        """The end of its log (what a failure message shows)."""
        return self.log()[-n:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        stop_process(self.proc, sig, grace=15)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def start_service(command: list[str], env: dict[str, str], log_path: Path, name: str | None = None) -> Service:
    """``codesync <command>`` with exactly ``env`` (see :func:`child_env`), logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "codesync.cli", *command], env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT
    )
    fh.close()
    return Service(name or command[0], proc, log_path, env=env)


async def start_signaling(
    tmp: Path, env: dict[str, str], host: str = "127.0.0.1", port: int = 0, name: str | None = None
) -> Service:
    """One ``codesync signaling`` node on ``host`` (a free port unless given), answering /healthz."""
    port = port or free_port(host)
    env = {**env, "CODESYNC_HOST": host, "CODESYNC_PORT": str(port)}
    svc = start_service(["signaling"], env, tmp / f"{name or f'signaling-{port}'}.log", name=name or f"signaling:{port}")
    svc.url = f"http://{host}:{port}"
    await wait_http_ok(f"{svc.url}/healthz", svc)
    return svc
