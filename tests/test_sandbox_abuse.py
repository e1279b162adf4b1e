"""Hostile programs against both sandbox backends: each is contained, reported with a status,
and the very next run on the same backend still works.

The Docker half runs against a real private dockerd started by the session (tests/dockerd.py).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from runner.languages import LanguageTable
from runner.sandbox.base import Limits, RunResult, Sandbox, run_collect
from runner.sandbox.bubblewrap import BubblewrapSandbox
from tests.support import free_port, require

pytestmark = pytest.mark.timeout(120)

LANGS = LanguageTable()
LIMITS = Limits(wall_seconds=6, cpu_seconds=3, memory_bytes=256 * 1024 * 1024, processes=48, output_bytes=32 * 1024)


@pytest.fixture(params=["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
async def sandbox(request):
    if request.param == "bubblewrap":
        require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
        box: Sandbox = BubblewrapSandbox()
    else:
        from runner.sandbox.docker import DockerSandbox

        daemon = request.getfixturevalue("docker_daemon")
        box = DockerSandbox(daemon.url, image=request.getfixturevalue("docker_image"))
    yield box
    await box.close()


async def run(box: Sandbox, code: str, language: str = "python", limits: Limits = LIMITS):
    result, chunks = await run_collect(box, LANGS.get(language).spec(code, limits))
    out = b"".join(c.data for c in chunks if c.stream == "stdout").decode(errors="replace")
    err = b"".join(c.data for c in chunks if c.stream == "stderr").decode(errors="replace")
    return result, out, err


async def assert_still_serving(box: Sandbox) -> None:
    result, out, err = await run(box, "print('still here')")
    assert (result.status, out) == ("finished", "still here\n"), (result, err)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (sandboxed processes are visible from here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_fork_bomb_is_contained(sandbox):
    marker = f"bomb{secrets.token_hex(4)}"
    code = f"""
import os, time
tag = "{marker}"
children = 0
t = time.time()
while time.time() - t < 30:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
    except OSError:
        print("fork refused after", children, flush=True)
        break
time.sleep(60)
"""
    started = time.monotonic()
    result, out, err = await run(sandbox, code)
    assert result.status in ("timeout", "killed"), (result, out, err)
    assert "fork refused" in out, (out, err)  # the process limit stopped it, not just the clock
    assert int(out.split()[-1]) < LIMITS.processes
    assert time.monotonic() - started < LIMITS.wall_seconds + 8
    assert not processes_with(marker), "fork bomb children outlived the run"
    await assert_still_serving(sandbox)


async def test_two_gigabyte_allocation_is_killed(sandbox):
    result, out, err = await run(sandbox, "x = b'x' * (2 * 1024**3)\nprint('allocated', len(x))")
    assert "allocated" not in out
    assert result.status in ("killed", "failed"), result
    if result.status == "killed":
        assert "memory" in result.reason, result
    else:  # refused by the address-space rlimit before the cgroup had to act
        assert "MemoryError" in err, err
    await assert_still_serving(sandbox)


async def test_infinite_loop_times_out(sandbox):
    result, _, _ = await run(sandbox, "while True:\n    pass", limits=Limits(wall_seconds=5, cpu_seconds=1))
    assert result.status == "timeout", result
    assert result.duration < 5 + 3
    result, _, _ = await run(sandbox, "import time\ntime.sleep(60)", limits=Limits(wall_seconds=1.5))
    assert (result.status, result.reason) == ("timeout", "wall clock limit exceeded"), result
    assert result.duration < 1.5 + 3
    await assert_still_serving(sandbox)


async def test_detached_child_is_killed_with_the_run(sandbox):
    marker = f"{secrets.randbelow(10**6) + 10**6}"
    code = f"""
import subprocess
p = subprocess.Popen(["sleep", "9{marker}"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("spawned", p.pid, flush=True)
"""
    result, out, err = await run(sandbox, code)
    assert result.status == "finished" and out.startswith("spawned"), (result, out, err)
    assert result.duration < 5
    assert not processes_with(f"9{marker}"), "the detached child outlived the run"
    await assert_still_serving(sandbox)


async def test_output_flood_is_capped(sandbox):
    result, out, err = await run(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)")
    assert result.truncated, result
    assert result.output_bytes == LIMITS.output_bytes
    assert len(out) + len(err) == LIMITS.output_bytes
    assert (result.status, result.reason) == ("killed", "output limit exceeded"), result
    await assert_still_serving(sandbox)


async def test_cannot_connect_to_a_host_loopback_port(sandbox):
    port = free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
    listener.setblocking(False)
    try:
        code = f"""
import socket
for host in ("127.0.0.1", "localhost", "::1"):
    try:
        socket.create_connection((host, {port}), timeout=2).close()
        print("CONNECTED", host)
    except OSError as exc:
        print("refused", host, type(exc).__name__)
"""
        result, out, err = await run(sandbox, code)
        assert "CONNECTED" not in out, out
        assert out.count("refused") == 3, (out, err)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    await assert_still_serving(sandbox)


async def test_cannot_write_outside_the_work_dir(sandbox):
    token = secrets.token_hex(4)
    targets = [f"/usr/lib/escape-{token}", f"/etc/escape-{token}", f"/escape-{token}", f"/var/tmp/escape-{token}",
               f"/root/escape-{token}", f"/home/escape-{token}"]
    code = f"""
import os
for path in {targets!r}:
    try:
        with open(path, "w") as fh:
            fh.write("x")
        print("WROTE", path)
    except OSError as exc:
        print("denied", path)
with open("inside.txt", "w") as fh:
    fh.write("ok")
print("workdir", open("inside.txt").read(), os.getuid())
"""
    result, out, err = await run(sandbox, code)
    assert result.status == "finished", (result, err)
    assert "WROTE" not in out, out
    assert f"workdir ok 65534" in out
    for path in targets:
        assert not os.path.exists(path), f"{path} appeared on the host"
    await assert_still_serving(sandbox)


async def test_cannot_read_host_secrets(sandbox, make_settings, monkeypatch):
    settings = make_settings(secret_key=None)
    secret = settings.effective_secret_key  # writes <data_dir>/secret_key like the server does
    db = settings.data_dir / "codesync.db"
    db.write_text(f"database holding {secret}")
    monkeypatch.setenv("CODESYNC_SECRET_KEY", secret)  # the runner's own environment
    paths = [settings.data_dir / "secret_key", db, Path.cwd() / ".env", Path("/work/main/data/secret_key"),
             Path("/proc/1/environ"), Path("/root/.bash_history")]
    code = f"""
import os
for path in {[str(p) for p in paths]!r}:
    try:
        print("READ", path, open(path, errors="replace").read())
    except OSError as exc:
        print("denied", path, type(exc).__name__)
print("ENV", dict(os.environ))
"""
    result, out, err = await run(sandbox, code)
    assert result.status == "finished", (result, err)
    assert secret not in out and secret not in err
    assert "CODESYNC" not in out
    assert f"denied {db}" in out and f"denied {settings.data_dir / 'secret_key'}" in out
    await assert_still_serving(sandbox)
