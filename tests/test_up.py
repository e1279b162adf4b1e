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

from tests.stack import SignalClient, seed_room
from tests.support import ROOT, child_env, free_port, wait_for, wait_http_ok

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
        if ppid == pid and b"signaling.cli" in argv:
            found[argv[argv.index(b"signaling.cli") + 1].decode()] = int(entry.name)
    return found


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
    )
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "signaling.cli", "up"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
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
