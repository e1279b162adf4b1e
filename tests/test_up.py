"""``codesync up`` — the README's start command: one process group with signaling, the
persistence peer and the runner on embedded defaults, a crashed service restarted, a clean stop."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers.stack import SignalClient, seed_room
from tests.helpers.components import ROOT, free_port
from tests.helpers.processes import child_env
from tests.helpers.wait import wait_for, wait_http_ok

pytestmark = pytest.mark.timeout(180)


def children(pid: int) -> dict[str, int]:
    """The service children of ``codesync up`` by sub-command (persist, runner, signaling)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"codesync.cli" in argv:
            found[argv[argv.index(b"codesync.cli") + 1].decode()] = int(entry.name)
    return found


def environ(pid: int) -> dict[str, str]:
    """The environment a process was started with (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


class FileOpens:
    """inotify: did anyone open (or read) ``path`` since :meth:`start`? (libc via ctypes)"""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, path: Path):
        import ctypes

        self.path = path
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, "inotify_init1 failed"
        self.events = 0

    def start(self) -> None:
        wd = self.libc.inotify_add_watch(self.fd, str(self.path).encode(), self.IN_ACCESS | self.IN_OPEN)
        assert wd >= 0, f"cannot watch {self.path}"

    def opened(self) -> bool:
        try:
            while os.read(self.fd, 4096):
                self.events += 1
        except BlockingIOError:
            pass
        return self.events > 0

    def close(self) -> None:
        os.close(self.fd)


async def services_announce(url: str, token: str, room_id: str, want: set[str], timeout: float = 60.0) -> set[str]:
    """Join the room as a user until the ``want`` service peers have published in it."""
    seen: set[str] = set()
    async with SignalClient.connect(f"{url}?token={token}") as client:
        await client.subscribe(room_id)
        while not want <= seen:
            frame = await client.expect("publish", lambda f: "service" in (f.get("sender") or {}), timeout=timeout)
            seen.add(frame["sender"]["service"])
    return seen


async def test_up_runs_the_whole_stack_restarts_a_crash_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    secret = secrets.token_urlsafe(48)
    env = child_env(
        CODESYNC_PORT=str(port),
        CODESYNC_DATA_DIR=str(data),
        CODESYNC_SECRET_KEY=secret,
        CODESYNC_ICE_HOSTS="127.0.0.1",
        CODESYNC_PERSIST_IDLE_GRACE="1",
        CODESYNC_TURN_SECRET="turn-secret-for-signaling-only",
    )
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "codesync.cli", "up"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http_ok(f"{base}/healthz", timeout=60)
        await wait_for(lambda: (tmp_path / "up.log").read_text().count(f"CodeSync is running: {base}") == 1, 30, what="the URL printed")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/")).status_code == 200  # the web client is served
        room = await seed_room(f"sqlite+aiosqlite:///{data / 'codesync.db'}", secret, {"alice": "owner"})
        signal_url = f"ws://127.0.0.1:{port}/signal"
        assert await services_announce(signal_url, room.token("alice"), room.id, {"persistence", "runner"})

        # A crashed service is restarted: kill -9 the persistence peer, it comes back.
        first = children(up.pid)
        assert set(first) == {"signaling", "persist", "runner"}, first
        # The signing key given to `codesync up` reaches signaling only.
        assert environ(first["signaling"]).get("CODESYNC_SECRET_KEY") == secret
        for name in ("persist", "runner"):
            env_of = environ(first[name])
            assert secret not in "\0".join(f"{k}={v}" for k, v in env_of.items()), name
            assert env_of.get("CODESYNC_SECRET_KEY") == "" and env_of.get("CODESYNC_TURN_SECRET") == "", name
        os.kill(first["persist"], signal.SIGKILL)
        await wait_for(lambda: children(up.pid).get("persist", first["persist"]) != first["persist"], 30, what="persist restarted")
        await services_announce(signal_url, room.token("alice"), room.id, {"persistence"})

        # SIGTERM stops everything: exit 0, no child left behind.
        kids = children(up.pid)
        up.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(up.wait, 60) == 0
        for pid in kids.values():
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        log.close()


async def test_up_keeps_the_signing_key_away_from_the_peers_and_the_data_dir_private(tmp_path: Path) -> None:
    """The embedded default: no CODESYNC_SECRET_KEY, so `codesync up` generates one into the data
    dir. The persistence peer and the runner never get it — not in their environment, and they
    never open the key file (inotify watches it while both are killed and restarted) — and
    they still work (their service tokens come from the supervisor). Files are private."""
    port = free_port()
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    env = child_env(
        CODESYNC_PORT=str(port),
        CODESYNC_DATA_DIR=str(data),
        CODESYNC_ICE_HOSTS="127.0.0.1",
        CODESYNC_PERSIST_IDLE_GRACE="1",
    )
    (data / "service-tokens.json").write_text('{"persistence": "old", "runner": "old"}')  # an older version's
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "codesync.cli", "up"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    watch: FileOpens | None = None
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http_ok(f"{base}/healthz", timeout=60)
        key_file = data / "secret_key"
        secret = key_file.read_text().strip()  # the test may read it; from here on nobody may
        watch = FileOpens(key_file)
        watch.start()

        # Modes: the data dir (it was 0755) 0700; the database, its WAL files and the key 0600.
        assert data.stat().st_mode & 0o777 == 0o700
        for path in [key_file, *data.glob("codesync.db*")]:
            assert path.stat().st_mode & 0o777 == 0o600, (path, oct(path.stat().st_mode))
        assert {p.name for p in data.glob("codesync.db*")} >= {"codesync.db"}
        assert not (data / "service-tokens.json").exists()  # no long-lived tokens lying around

        room = await seed_room(f"sqlite+aiosqlite:///{data / 'codesync.db'}", secret, {"alice": "owner"})
        signal_url = f"ws://127.0.0.1:{port}/signal"
        def all_three() -> dict[str, int] | None:
            found = children(up.pid)
            return found if set(found) == {"signaling", "persist", "runner"} else None

        first = await wait_for(all_three, 30, what="the three services started")
        # Both peers restarted (kill -9): the supervisor mints them new tokens, nothing reads the key.
        for name in ("persist", "runner"):
            os.kill(first[name], signal.SIGKILL)
        await wait_for(lambda: all(children(up.pid).get(n, first[n]) != first[n] for n in ("persist", "runner")), 30,
                       what="persist and runner restarted")
        assert await services_announce(signal_url, room.token("alice"), room.id, {"persistence", "runner"})
        now = children(up.pid)
        for name in ("persist", "runner"):
            env_of = environ(now[name])
            assert secret not in "\0".join(f"{k}={v}" for k, v in env_of.items()), name
            token = env_of["CODESYNC_SERVICE_TOKEN"]
            import jwt

            claims = jwt.decode(token, secret, algorithms=["HS256"], audience="codesync")
            assert claims["typ"] == "service" and claims["exp"] - claims["iat"] == 24 * 3600  # expires
        assert environ(now["signaling"]).get("CODESYNC_SECRET_KEY") == secret
        assert not watch.opened(), "a child opened the signing key file in the data dir"
        for path in data.glob("codesync.db*"):
            assert path.stat().st_mode & 0o777 == 0o600, path
        up.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(up.wait, 60) == 0
    finally:
        if watch is not None:
            watch.close()
        if up.poll() is None:
            up.kill()
            up.wait(10)
        log.close()
