"""Hostile programs against both sandbox backends: each is contained, reported with a status,
and the very next run on the same backend still works.

The Docker half runs against a real private dockerd started by the session (tests/helpers/dockerd.py).

Hardening (second half): the seccomp deny-list refuses the kernel entry points of an escape
(nested user namespaces, keyrings, bpf, ptrace, mounts, perf events...), ordinary toolchains
still work, and a run whose cgroup limits cannot be applied is refused with a clear reason —
never run weaker. The probe program tries each escape for real and prints what the kernel
answered; a control runs the same probe under bubblewrap *without* the filter and sees most
of them succeed, so the refusals are the filter's doing, not an accident of the host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pycrdt
import pytest

from runner.languages import LanguageTable
from runner.runs import RoomRuns, RunnerConfig, RunRequest
from runner.sandbox.base import Limits, Sandbox, SandboxUnavailable, run_collect
from runner.sandbox.bubblewrap import NOBODY, BubblewrapSandbox
from runner.sandbox.seccomp import SPECIAL, SYSCALLS, arch_for, build_filter
from tests.helpers.components import free_port, require
from tests.helpers.wait import wait_for
from tests.helpers.sandbox import LANGS, LIMITS, run

pytestmark = pytest.mark.timeout(180)

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
    assert "workdir ok 65534" in out
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


# ================================================================ hardening: seccomp, cgroups

COLUMN = arch_for().column
NR = {name: numbers[COLUMN] for name, numbers in {**SYSCALLS, **SPECIAL}.items()}

# Each probe: name -> what it does. The program prints {"name": "ok" | "<errno name>"}.
PROBE = f"""
import ctypes, errno, json, os, signal, struct, subprocess, sys, time
NR = {json.dumps(NR)}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results = {{}}

def call(name, *args):
    ret = libc.syscall(NR[name], *args)
    err = ctypes.get_errno()
    return ret, err

def record(name, ret, err):
    results[name] = "ok" if ret >= 0 else errno.errorcode.get(err, str(err))

def in_child(name, *args):
    # in a forked child: an allowed unshare would change *this* process
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, json.dumps(call(name, *args)).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 100)
    os.waitpid(pid, 0)
    return json.loads(data)

CLONE_NEWUSER = 0x10000000
# nested user namespace, three ways, plus util-linux's unshare(1)
record("unshare(CLONE_NEWUSER)", *in_child("unshare", CLONE_NEWUSER))
ret, err = call("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
if ret == 0:
    os._exit(0)  # the child, had it been allowed
if ret > 0:
    os.waitpid(ret, 0)
record("clone(CLONE_NEWUSER)", ret, err)
args = struct.pack("QQQQQQQQQQQ", CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, 0)
buf = ctypes.create_string_buffer(args, len(args))
ret, err = call("clone3", buf, len(args))
if ret == 0:
    os._exit(0)
if ret > 0:
    os.waitpid(ret, 0)
record("clone3", ret, err)
try:
    p = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True, text=True)
    results["unshare -U"] = "ok" if p.returncode == 0 else p.stderr.strip().rsplit(": ", 1)[-1]
except FileNotFoundError:
    results["unshare -U"] = "no unshare(1)"
# keyrings
record("keyctl", *call("keyctl", 0, ctypes.c_long(-3), 1))  # KEYCTL_GET_KEYRING_ID, session keyring, create
record("add_key", *call("add_key", b"user", b"codesync", b"secret", 6, ctypes.c_long(-2)))
# eBPF: BPF_MAP_CREATE of a tiny array
attr = struct.pack("IIII", 2, 4, 4, 1) + bytes(112)
record("bpf", *call("bpf", 0, attr, len(attr)))
# ptrace of another process (our own child: same uid, the easiest target there is)
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
ret, err = libc.ptrace(16, child, 0, 0), ctypes.get_errno()  # PTRACE_ATTACH
record("ptrace(PTRACE_ATTACH)", ret, err)
if ret == 0:
    libc.ptrace(17, child, 0, 0)  # PTRACE_DETACH
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
# mount, old and new API
record("mount", *call("mount", b"none", b"/tmp", b"tmpfs", 0, 0))
record("fsopen", *call("fsopen", b"tmpfs", 0))
# perf events on ourselves (allowed to unprivileged users at perf_event_paranoid <= 2)
attr = bytearray(128)
struct.pack_into("IIQ", attr, 0, 1, 128, 1)  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_TASK_CLOCK
struct.pack_into("Q", attr, 40, 0x60)  # exclude_kernel | exclude_hv
pattr = ctypes.create_string_buffer(bytes(attr), len(attr))
record("perf_event_open", *call("perf_event_open", pattr, 0, -1, -1, 0))
record("userfaultfd", *call("userfaultfd", 0))
record("setns", *call("setns", 0, 0))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
results["Seccomp"] = status["Seccomp"].strip()
results["Seccomp_filters"] = status.get("Seccomp_filters", "").strip()
results["NoNewPrivs"] = status["NoNewPrivs"].strip()
print(json.dumps(results))
"""

REFUSED = {
    "unshare(CLONE_NEWUSER)": "EPERM",
    "clone(CLONE_NEWUSER)": "EPERM",
    "clone3": "ENOSYS",  # so glibc falls back to clone(), whose flags the filter can see
    "unshare -U": "Operation not permitted",
    "keyctl": "EPERM",
    "add_key": "EPERM",
    "bpf": "EPERM",
    "ptrace(PTRACE_ATTACH)": "EPERM",
    "mount": "EPERM",
    "fsopen": "EPERM",
    "perf_event_open": "EPERM",
    "userfaultfd": "EPERM",
    "setns": "EPERM",
}


async def probe(box: Sandbox) -> dict[str, str]:
    result, out, err = await run(box, PROBE, limits=Limits(wall_seconds=20, cpu_seconds=10))
    assert result.status == "finished", (result, out, err)
    return json.loads(out.strip().splitlines()[-1])


async def test_escape_syscalls_are_refused(sandbox):
    found = await probe(sandbox)
    assert {name: found[name] for name in REFUSED} == REFUSED
    assert found["Seccomp"] == "2" and found["NoNewPrivs"] == "1", found
    if sandbox.name == "docker":
        # Docker's default profile and our deny-list stacked on it: two filters.
        assert found["Seccomp_filters"] == "2", found
    await assert_still_serving(sandbox)


def test_the_probe_sees_escapes_when_there_is_no_filter():
    """Control: the same probe, in bubblewrap as nobody but without --seccomp, gets through
    where only the filter stands in the way — so the test above can fail."""
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)

    proc = subprocess.run(
        ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
         "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
         "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--cap-drop", "ALL", "python3", "-c", PROBE],
        capture_output=True, text=True, preexec_fn=drop, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["Seccomp"] == "0"
    for name in ("unshare(CLONE_NEWUSER)", "clone(CLONE_NEWUSER)", "unshare -U", "keyctl", "add_key",
                 "ptrace(PTRACE_ATTACH)", "perf_event_open"):
        assert found[name] == "ok", (name, found)


# Each toolchain doing what ordinary programs do: threads, child processes, file I/O.
NORMAL = {
    "python": """
import concurrent.futures, multiprocessing, subprocess, threading
with concurrent.futures.ThreadPoolExecutor(4) as pool:
    print("threads", sum(pool.map(lambda x: x * x, range(10))))
with multiprocessing.Pool(2) as pool:
    print("processes", sum(pool.map(abs, range(-5, 5))))
print("subprocess", subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout.strip())
open("data.txt", "w").write("x" * 100000)
print("file", len(open("data.txt").read()))
""",
    "javascript": """
const { Worker } = require('worker_threads');
const { execFileSync } = require('child_process');
const fs = require('fs');
fs.promises.writeFile('data.txt', 'x'.repeat(100000)).then(async () => {
  console.log('file', (await fs.promises.readFile('data.txt', 'utf8')).length);
  console.log('subprocess', execFileSync('echo', ['hi']).toString().trim());
  const w = new Worker('const { parentPort } = require("worker_threads"); parentPort.postMessage(42);', { eval: true });
  w.on('message', (m) => { console.log('worker', m); w.terminate(); });
});
""",
    "bash": """
echo "pipeline $(seq 1 100 | sort -rn | head -1)"
( echo subshell ) &
wait
printf 'x%.0s' $(seq 1 1000) > data.txt; echo "file $(wc -c < data.txt)"
""",
    "c": r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static void *work(void *arg) { return arg; }
int main(void) {
    pthread_t t[4]; long sum = 0;
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < 4; i++) { void *r; pthread_join(t[i], &r); sum += (long)r; }
    printf("threads %ld\n", sum);
    pid_t pid = fork();
    if (pid == 0) _exit(7);
    int status; waitpid(pid, &status, 0);
    printf("fork %d\n", WEXITSTATUS(status));
    return 0;
}
""",
}
EXPECTED = {
    "python": "threads 285\nprocesses 25\nsubprocess hi\nfile 100000\n",
    "javascript": "file 100000\nsubprocess hi\nworker 42\n",
    "bash": "pipeline 100\nsubshell\nfile 1000\n",
    "c": "threads 6\nfork 7\n",
    "java": "threads 40 sum 780\n",
    "go": "goroutines 200 sum 19900\n",
}
# The thread-heavy toolchains run inside their own (raised) limits: a JVM with 40 threads on
# top of its own, Go with 200 goroutines over GOMAXPROCS threads.
NORMAL["java"] = """
import java.util.concurrent.atomic.AtomicLong;
public class Main {
  public static void main(String[] a) throws Exception {
    AtomicLong sum = new AtomicLong(); Thread[] t = new Thread[40];
    for (int i = 0; i < 40; i++) { final int n = i; t[i] = new Thread(() -> sum.addAndGet(n)); t[i].start(); }
    for (Thread x : t) x.join();
    System.out.println("threads 40 sum " + sum.get());
  }
}
"""
NORMAL["go"] = """
package main

import (
	"fmt"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	var mu sync.Mutex
	sum := 0
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(n int) { defer wg.Done(); mu.Lock(); sum += n; mu.Unlock() }(i)
	}
	wg.Wait()
	fmt.Println("goroutines 200 sum", sum)
}
"""


@pytest.mark.parametrize("language", sorted(NORMAL))
async def test_ordinary_programs_still_run_under_the_filter(sandbox, language):
    result, out, err = await run(sandbox, NORMAL[language], language, limits=Limits(wall_seconds=30, cpu_seconds=20))
    assert (result.status, out) == ("finished", EXPECTED[language]), (result, out, err)


# ---------------------------------------------------------------- cgroups that cannot work
def test_filter_is_refused_for_an_unknown_architecture():
    from runner.sandbox.seccomp import SeccompUnsupported

    with pytest.raises(SeccompUnsupported, match="refusing to run unfiltered"):
        build_filter("riscv64")
    assert len(build_filter("aarch64")) % 8 == 0 and build_filter("x86_64") != build_filter("aarch64")


@pytest.fixture
def broken_cgroup_box(tmp_path) -> BubblewrapSandbox:
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    # A cgroup root that cannot work: a directory with no cgroup hierarchy in it.
    return BubblewrapSandbox(cgroup_root=tmp_path / "not-cgroupfs")


async def test_bubblewrap_refuses_runs_when_cgroups_cannot_be_applied(broken_cgroup_box, caplog):
    box = broken_cgroup_box
    caplog.set_level(logging.DEBUG)
    health = await box.health()
    assert not health.ready and health.reason.startswith("cgroup limits cannot be applied"), health
    assert "not-cgroupfs" in health.reason
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, "print('must not run')")
    runs = RoomRuns(doc, box, LanguageTable(), RunnerConfig())
    runs_map = doc.get("runs", type=pycrdt.Map)
    try:
        for run_id in ("a", "b", "c"):
            assert (await runs.request(RunRequest(run_id, "python", "u1", "Ann", "editor"))).accepted
            await wait_for(lambda: runs_map[run_id]["status"] == "failed", timeout=10, what=f"run {run_id} failed")
            entry = runs_map[run_id]
            assert entry["reason"] == health.reason and str(entry["output"]) == "", dict(entry)
    finally:
        await runs.close()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING and "cgroup limits" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # said once (by health), not once per run
    assert (await box.health()).reason == health.reason


async def test_opting_out_runs_with_rlimits_only_and_says_so(tmp_path, caplog):
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    box = BubblewrapSandbox(cgroup_root=tmp_path / "not-cgroupfs", require_cgroups=False)
    caplog.set_level(logging.WARNING)
    assert (await box.health()).ready
    result, out, err = await run(box, "print('weaker, but asked for')")
    assert (result.status, out) == ("finished", "weaker, but asked for\n"), (result, err)
    assert any("rlimits only" in r.getMessage() for r in caplog.records)


async def test_a_tree_that_only_looks_like_cgroupfs_is_not_trusted(tmp_path):
    """A cgroup root pointing at ordinary directories with cgroup-named files: writing a pid
    into a plain file limits nothing, so it must count as "cannot be applied"."""
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    from runner.sandbox.cgroups import _own_paths

    fake = tmp_path / "fake-cgroupfs"
    own = _own_paths()
    for controller in ("memory", "pids", "cpu"):
        parent = fake / controller / own.get(controller, "/").lstrip("/")
        parent.mkdir(parents=True, exist_ok=True)
        (fake / controller / "cgroup.procs").write_text("")
    (fake / "cgroup.controllers").write_text("memory pids cpu")
    box = BubblewrapSandbox(cgroup_root=fake)
    health = await box.health()
    assert not health.ready and "cgroup limits cannot be applied" in health.reason
    with pytest.raises(SandboxUnavailable, match="cgroup limits cannot be applied"):
        await run(box, "print('must not run')")
    assert not list(fake.rglob("codesync-run-*"))


@pytest.mark.docker
async def test_docker_refuses_runs_when_cgroups_cannot_be_applied(docker_daemon, docker_image, caplog):
    from runner.sandbox.docker import DockerSandbox

    # runc creates the run's cgroup under this parent in every hierarchy; cgroup.procs is a
    # file in each hierarchy's root, so the mkdir fails for real ("not a directory").
    box = DockerSandbox(docker_daemon.url, image=docker_image, cgroup_parent="/cgroup.procs/codesync")
    caplog.set_level(logging.WARNING)
    try:
        assert (await box.prepare(LIMITS)).ready  # the engine itself is fine
        with pytest.raises(SandboxUnavailable, match="cgroup limits cannot be applied: unable to "):
            await run(box, "print('must not run')")
        health = await box.health()
        assert not health.ready and "cgroup" in health.reason
        with pytest.raises(SandboxUnavailable):
            await run(box, "print('must not run either')")
        said = [r for r in caplog.records if "cgroup limits cannot be applied" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
        client = docker_daemon.client()
        leftovers = [c for c in client.containers.list(all=True)
                     if c.labels.get("codesync.runner.session") == box.identity.session and c.status == "running"]
        client.close()
        assert not leftovers  # nothing ran
    finally:
        await box.close()
    good = DockerSandbox(docker_daemon.url, image=docker_image)
    try:
        assert (await good.health()).ready
        await assert_still_serving(good)
    finally:
        await good.close()


@pytest.mark.docker
async def test_docker_keeps_its_default_seccomp_profile(docker_daemon, docker_image):
    from runner.sandbox.docker import DockerSandbox, container_options

    options = container_options(LIMITS, docker_image)
    assert options["security_opt"] == ["no-new-privileges"]  # no seccomp=… entry: the default applies
    info = docker_daemon.client().info()
    assert any(opt.startswith("name=seccomp") for opt in info["SecurityOptions"]), info["SecurityOptions"]
    box = DockerSandbox(docker_daemon.url, image=docker_image)
    try:
        assert (await box.health()).ready
    finally:
        await box.close()


@pytest.mark.docker
async def test_docker_image_without_python_is_refused_not_run_unfiltered(docker_daemon, docker_image, tmp_path):
    """The deny-list loader needs python3 in the image; without it the run fails clearly."""
    from runner.sandbox.docker import NO_PYTHON, DockerSandbox

    client = docker_daemon.client()
    tag = "codesync-test-nopython:1"
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {docker_image}\nRUN rm -f /usr/bin/python3*\n")
    try:
        await asyncio.to_thread(client.images.build, path=str(tmp_path), tag=tag, rm=True, network_mode="none")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"could not build the test image: {exc}")
    box = DockerSandbox(docker_daemon.url, image=tag, pool_size=0)
    try:
        result, out, err = await run(box, "echo unfiltered", "bash")
        assert result.status == "failed" and result.exit_code == 126, (result, out, err)
        assert out == "" and NO_PYTHON in err
    finally:
        await box.close()
        client.images.remove(tag, force=True)
        client.close()


def test_syscall_numbers_match_the_kernel_headers():
    """The filter's tables (x86_64, aarch64 = the generic table) against linux-libc-dev."""
    import re

    headers = {0: Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), 1: Path("/usr/include/asm-generic/unistd.h")}
    require("kernel headers", all(p.exists() for p in headers.values()), "apt-get install linux-libc-dev")
    for column, path in headers.items():
        text = path.read_text()
        for name, numbers in {**SYSCALLS, **SPECIAL}.items():
            found = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
            expected = int(found.group(1)) if found else None
            assert numbers[column] == expected, (path.name, name, numbers[column], expected)


# ---------------------------------------------------------------- interactive input abuse
def rss_bytes() -> int:
    """This process's resident memory (the runner's, here: the sandbox lives in this process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def start_reading(box: Sandbox, code: str, limits: Limits):
    """Start a Python run and collect its output in the background (as the room would)."""
    execution = await box.start(LANGS.get("python").spec(code, limits))
    out = bytearray()

    async def read() -> None:
        async for chunk in execution:
            out.extend(chunk.data)

    return execution, out, asyncio.create_task(read())


async def test_input_flood_is_bounded_and_the_run_ends_by_its_limits(sandbox):
    limits = dataclasses.replace(LIMITS, wall_seconds=5)
    # Reads everything it gets, slowly, and never ends on its own (no end of input comes).
    code = ("import sys, time\nprint('reading', flush=True)\n"
            "while sys.stdin.buffer.read1(4096):\n    time.sleep(0.01)\ntime.sleep(60)\n")
    execution, out, reader = await start_reading(sandbox, code, limits)
    await wait_for(lambda: b"reading" in out, timeout=30, what="the program to start")
    chunk = b"y" * 4096
    before = rss_bytes()
    accepted = attempted = peak = 0
    reasons: set[str] = set()
    deadline = time.monotonic() + 3
    for _ in range(200_000):  # bounded: ~3 s of writing as fast as the loop goes
        if time.monotonic() > deadline:
            break
        result = await execution.write_stdin(chunk)
        attempted += len(chunk)
        accepted += result.bytes
        if not result.accepted:
            reasons.add(result.reason)
        peak = max(peak, execution.stdin_pending)
        await asyncio.sleep(0)
    grown = rss_bytes() - before
    assert attempted > 50 * limits.stdin_bytes, attempted  # a real flood was tried
    assert accepted <= limits.stdin_bytes, accepted
    assert peak <= limits.stdin_buffer, peak
    assert "input too fast (at most 16 KiB a second)" in reasons, reasons
    assert grown < 32 * 1024 * 1024, f"runner grew by {grown} bytes"
    result = await asyncio.wait_for(execution.wait(), 30)
    await reader
    assert (result.status, result.reason) == ("timeout", "wall clock limit exceeded"), result
    await assert_still_serving(sandbox)


async def test_input_to_a_program_that_never_reads_cannot_pile_up(sandbox):
    # Rate and total out of the way: only the unread-buffer bound may refuse.
    limits = dataclasses.replace(LIMITS, wall_seconds=6, stdin_bytes=8 * 1024 * 1024,
                                 stdin_rate=8 * 1024 * 1024, stdin_buffer=16 * 1024)
    execution, out, reader = await start_reading(
        sandbox, "import time\nprint('not reading', flush=True)\ntime.sleep(60)\n", limits)
    await wait_for(lambda: b"not reading" in out, timeout=30, what="the program to start")
    chunk = b"z" * 4096
    accepted = peak = 0
    refusal = None
    deadline = time.monotonic() + 4
    for _ in range(20_000):
        if time.monotonic() > deadline:
            break
        result = await execution.write_stdin(chunk)
        accepted += result.bytes
        peak = max(peak, execution.stdin_pending)
        if not result.accepted:
            refusal = result.reason
            break
        await asyncio.sleep(0.001)
    assert refusal == "the program is not reading its input; wait until it does", (refusal, accepted)
    # What was taken is the pipes' own capacity plus our small buffer, not megabytes.
    assert accepted < 2 * 1024 * 1024, accepted
    assert peak <= limits.stdin_buffer
    again = await execution.write_stdin(chunk)
    assert not again.accepted and again.reason == refusal
    result = await asyncio.wait_for(execution.wait(), 30)
    await reader
    assert (result.status, result.reason) == ("timeout", "wall clock limit exceeded"), result
    await assert_still_serving(sandbox)


async def test_input_after_exit_is_refused_with_a_reason_not_an_exception(sandbox):
    # Reads one line, answers, exits while more input keeps coming.
    execution, out, reader = await start_reading(
        sandbox, "import sys\nprint('got', sys.stdin.readline().strip(), flush=True)\n", LIMITS)
    results = []
    for i in range(400):  # bounded: the program ends after the first line
        results.append(await execution.write_stdin(f"line {i}\n".encode()))
        if execution._ended():
            break
        await asyncio.sleep(0.01)
    result = await asyncio.wait_for(execution.wait(), 30)
    await reader
    assert (result.status, bytes(out)) == ("finished", b"got line 0\n"), (result, bytes(out))
    assert results[0].accepted
    for late in (await execution.write_stdin(b"after\n"), await execution.close_stdin(),
                 await execution.write_stdin(b"")):
        assert (late.accepted, late.reason) == (False, "the program has ended"), late
    await assert_still_serving(sandbox)


async def test_close_stdin_twice_and_input_after_it(sandbox):
    execution, out, reader = await start_reading(
        sandbox, "import sys\nprint('read', len(sys.stdin.read()), flush=True)\nimport time\ntime.sleep(1)", LIMITS)
    assert (await execution.write_stdin(b"abc")).accepted
    assert (await execution.close_stdin()).accepted
    assert (await execution.close_stdin()).reason == "input is closed (end of input was sent)"
    assert (await execution.write_stdin(b"more")).reason == "input is closed (end of input was sent)"
    result = await asyncio.wait_for(execution.wait(), 30)
    await reader
    assert (result.status, bytes(out)) == ("finished", b"read 3\n")


# ---------------------------------------------------------------- projects with hostile paths
HOSTILE_PATHS = {
    "../escape.py": "'..' part",
    "app/../../escape.py": "'..' part",
    "/tmp/escape.py": "is absolute",
    "C:/escape.py": "is absolute",
    "app\\..\\escape.py": "backslash",
    "CON": "reserved device name",
    "app/nul.txt": "reserved device name",
    "app//x.py": "'..' part",
    "./x.py": "'..' part",
    ".codesync/main": "reserved for the runner",
    "bad\x00name.py": "control character",
    "x" * 300: "longer than",
}


@pytest.mark.parametrize("path", sorted(HOSTILE_PATHS), ids=lambda p: repr(p[:20]))
async def test_hostile_project_paths_are_refused_before_anything_is_written(sandbox, path):
    from runner.languages import LanguageError
    from runner.sandbox.base import RunSpec, SandboxError

    marker = f"escape{secrets.token_hex(4)}"
    files = {path: f"print('{marker}')".encode(), "main.py": b"print('hello')"}
    with pytest.raises(LanguageError, match=HOSTILE_PATHS[path]):
        LANGS.get("python").project_spec(files, "main.py", LIMITS)
    # And the sandbox refuses it on its own (a caller that skipped the language table).
    containers = _run_containers(sandbox)
    with pytest.raises(SandboxError, match=HOSTILE_PATHS[path]):
        await sandbox.start(RunSpec(files=files, run=["python3", "main.py"], limits=LIMITS))
    assert _run_containers(sandbox) == containers  # docker: no container was taken or started
    assert not processes_with(marker)
    await assert_still_serving(sandbox)


def _run_containers(box: Sandbox) -> set[str] | None:
    if box.name != "docker":
        return None
    return {c.id for c in box.client.containers.list(all=True)}


async def test_project_size_and_shape_limits(sandbox):
    from runner.languages import LanguageError
    from runner.sandbox import project

    python = LANGS.get("python")
    too_many = {f"m{i}.py": b"" for i in range(project.MAX_FILES + 1)}
    with pytest.raises(LanguageError, match=f"at most {project.MAX_FILES} can run"):
        python.project_spec(too_many, "m0.py")
    with pytest.raises(LanguageError, match="larger than 2048 KiB"):
        python.project_spec({"main.py": b"#" * (project.MAX_FILE_BYTES + 1)}, "main.py")
    big = {f"d{i}.txt": b"x" * project.MAX_FILE_BYTES for i in range(5)}
    with pytest.raises(LanguageError, match="larger than 8 MiB"):
        python.project_spec({**big, "main.py": b""}, "main.py")
    with pytest.raises(LanguageError, match="both a file and a folder"):
        python.project_spec({"lib": b"", "lib/x.py": b"", "main.py": b""}, "main.py")
    # The largest project that is allowed runs: 400 files, nested folders, ~6 MiB.
    files = {f"pkg{i % 20}/data{i}.txt": b"d" * 15000 for i in range(400)}
    files["main.py"] = (b"import os\nn = sum(len(fs) for _, _, fs in os.walk('.'))\n"
                        b"print(n, sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk('.') for f in fs))")
    result, chunks = await run_collect(sandbox, python.project_spec(files, "main.py", LIMITS))
    out = b"".join(c.data for c in chunks).decode()
    assert (result.status, out.split()[0]) == ("finished", "401"), (result, out)
    assert int(out.split()[1]) == sum(len(v) for v in files.values())


def test_uploaded_archives_with_links_are_refused_whole():
    import io
    import stat
    import tarfile
    import zipfile

    from runner.sandbox.project import ProjectError, from_tar, from_zip

    def zip_of(*entries):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name)
                info.external_attr = mode << 16
                archive.writestr(info, data)
        return buffer.getvalue()

    good = ("main.py", b"print(1)", stat.S_IFREG | 0o644)
    assert from_zip(zip_of(good, ("lib/util.py", b"X = 1", stat.S_IFREG | 0o644))) == {
        "main.py": b"print(1)", "lib/util.py": b"X = 1"}
    with pytest.raises(ProjectError, match="'passwd' is a symbolic link"):
        from_zip(zip_of(good, ("passwd", b"/etc/passwd", stat.S_IFLNK | 0o777)))
    with pytest.raises(ProjectError, match="'..' part"):
        from_zip(zip_of(good, ("../evil.py", b"x", stat.S_IFREG | 0o644)))
    with pytest.raises(ProjectError, match="is absolute"):
        from_zip(zip_of(good, ("/etc/cron.d/evil", b"x", stat.S_IFREG | 0o644)))
    with pytest.raises(ProjectError, match="not a readable zip"):
        from_zip(b"PK\x03\x04 not really")

    def tar_of(*members):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for info, data in members:
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return buffer.getvalue()

    def member(name, kind=tarfile.REGTYPE, data=b"", link=""):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, link
        return info, (data if kind == tarfile.REGTYPE else None)

    assert from_tar(tar_of(member("./main.py", data=b"print(2)"))) == {"main.py": b"print(2)"}
    for kind, what in ((tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link"),
                       (tarfile.CHRTYPE, "not a regular file"), (tarfile.FIFOTYPE, "not a regular file")):
        with pytest.raises(ProjectError, match=what):
            from_tar(tar_of(member("main.py", data=b"x"), member("lib", kind, link="/etc")))
    with pytest.raises(ProjectError, match="'..' part"):
        from_tar(tar_of(member("../../etc/evil", data=b"x")))


# ---------------------------------------------------------------- compile bomb
async def test_compile_bomb_is_stopped_by_the_limits(sandbox):
    bomb = """
#include <utility>
template <class T, int N> struct Grow { using type = typename Grow<std::pair<T, T>, N - 1>::type; };
template <class T> struct Grow<T, 0> { using type = T; };
int main() { typename Grow<int, 40>::type value{}; (void)value; return 0; }
"""
    started = time.monotonic()
    result, out, err = await run(sandbox, bomb, "cpp")
    assert result.status in ("killed", "timeout"), (result, err[-500:])
    assert result.reason in ("memory limit exceeded", "cpu time limit exceeded", "wall clock limit exceeded",
                             "killed (memory or process limit)"), result
    assert time.monotonic() - started < LIMITS.wall_seconds + 10
    assert not processes_with("cc1plus") or all(_not_ours(pid) for pid in processes_with("cc1plus"))
    await assert_still_serving(sandbox)


def _not_ours(pid: int) -> bool:
    """A cc1plus of another engineer's build is not a leftover of this run (ours run as 65534)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid != NOBODY
    except OSError:
        return True
