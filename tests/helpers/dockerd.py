"""A real, private dockerd for tests (and anyone else who needs one): own data root, own socket.

No host networking is touched (``--iptables=false --bridge=none``): containers can only use
``network_mode=none``, which is all the runner wants. The run image comes from
``runner.image`` (debootstrap rootfs cached under /var/cache/codesync, then ``docker import``).

Use from a test module::

    from tests.dockerd import docker_daemon, docker_image  # noqa: F401  (pytest fixtures)

or from code: ``with running_dockerd() as daemon: daemon.url``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.components import require


@dataclass
class Dockerd:
    root: Path
    proc: subprocess.Popen

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "dockerd.log").read_text(errors="replace")
        return ""

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=60)


def dockerd_available() -> bool:
    return shutil.which("dockerd") is not None and os.geteuid() == 0


def start_dockerd(root: Path | None = None, timeout: float = 30.0) -> Dockerd:
    """Start dockerd and wait until its API answers (it usually does within a second)."""
    import docker

    # A short path: unix socket paths are limited to 108 bytes.
    root = root or Path(tempfile.mkdtemp(prefix="csdockerd-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "dockerd.log", "ab")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"),
            "-H", f"unix://{root / 'docker.sock'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    daemon = Dockerd(root, proc)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited ({proc.returncode}):\n{daemon.log()[-3000:]}")
        if daemon.socket.exists():
            try:
                client = docker.DockerClient(base_url=daemon.url, timeout=5)
                client.ping()
                client.close()
                return daemon
            except Exception:  # noqa: BLE001 - not up yet
                pass
        if time.monotonic() > deadline:
            stop_dockerd(daemon)
            raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{daemon.log()[-3000:]}")
        time.sleep(0.05)


def stop_dockerd(daemon: Dockerd, remove: bool = True) -> None:
    with contextlib.suppress(Exception):
        client = daemon.client()
        for container in client.containers.list(all=True):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(5)
    if remove:
        # dockerd bind-mounts its data root onto itself; a crash can leave that (or overlays).
        _unmount_under(daemon.root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(daemon.root)], check=False)


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def running_dockerd(root: Path | None = None) -> Iterator[Dockerd]:
    daemon = start_dockerd(root)
    try:
        yield daemon
    finally:
        stop_dockerd(daemon)


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[Dockerd]:
    require("dockerd (as root)", dockerd_available(), "apt-get install docker.io; run the tests as root")
    with running_dockerd() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def docker_image(docker_daemon: Dockerd) -> str:
    """The run image in the private dockerd (built once, cached as a tarball across sessions)."""
    from runner.image import ImageError, ensure_image

    client = docker_daemon.client()
    try:
        return ensure_image(client)
    except ImageError as exc:
        require("the runner image", False, str(exc))
        raise
    finally:
        client.close()
