"""The embedded default sandbox: bubblewrap namespaces + a per-run cgroup + rlimits + nobody.

Layers, each because the others leave a gap (DESIGN.md, "Sandboxes here"):
- ``bwrap --unshare-all``: no network (empty net namespace), own pid namespace (when its
  init exits the kernel kills every process left, so detached children die with the run),
  read-only binds of the system dirs only — the host's /work, /root, data dir, secret key
  and database are simply not there — and a size-limited tmpfs as the work dir.
- The launcher drops to uid/gid 65534 *before* bwrap, so the user's code is unprivileged in
  the initial namespace too and ``RLIMIT_NPROC`` applies (it is ignored for root).
- A cgroup per run (v1 or v2, whatever exists) for memory, pids and CPU quota; rlimits for
  CPU seconds, address space, file size, open files, no core dumps. When the cgroup cannot
  be made the run is refused (``SandboxUnavailable``, health not ready) — rlimits alone are
  not a sandbox (DESIGN.md) — unless the operator opted out (``require_cgroups=False``).
- A seccomp deny-list (``seccomp.py``) handed to ``bwrap --seccomp FD``: no nested user
  namespaces, keyrings, bpf, ptrace, mounts, perf events, module loading and the like.

The project's files arrive as one memfd each (``--file FD /work/path``; bwrap makes the
folders), the vendored npm toolchains (TypeScript, ``runner/toolchains``) are bound read-only
at ``/opt/codesync``, and the program's stdin is a pipe the runner writes ``write_stdin`` into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import stat
from pathlib import Path

from ..image import SANDBOX_TOOLCHAINS, TOOLCHAINS_DIR
from .base import (
    RUN_ENV,
    WORK_DIR,
    Execution,
    Health,
    Limits,
    RunSpec,
    Sandbox,
    SandboxError,
    classify_exit,
)
from .project import ProjectError, check_project
from .cgroups import CGROUP_ROOT, CgroupError, CgroupManager, RunCgroup
from .seccomp import SeccompUnsupported, build_filter

log = logging.getLogger(__name__)

NOBODY = 65534
# Only what compilers and interpreters need from /etc; nothing else of the host is visible.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/nsswitch.conf",
)
# Toolchain configuration Debian keeps under /etc (the JDK's conf/ is symlinks into it).
ETC_GLOBS = ("java-*-openjdk",)
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
READ_SIZE = 16 * 1024


def _raise_open_files_limit() -> None:
    """A run holds one memfd per project file while bwrap starts (up to project.MAX_FILES):
    lift this process's soft open-files limit to its hard limit so a few runs starting at
    once do not run out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


def _visible_to_nobody(path: Path) -> bool:
    """Can uid 65534 reach ``path`` (bwrap binds it after dropping to that uid)?"""
    try:
        target = path.resolve(strict=True)
        for parent in [*reversed(target.parents)]:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        mode = target.stat().st_mode
        return bool(mode & stat.S_IROTH and (not stat.S_ISDIR(mode) or mode & stat.S_IXOTH))
    except OSError:
        return False


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    for pattern in ETC_GLOBS:
        for path in sorted(Path("/etc").glob(pattern)):
            args += ["--ro-bind", str(path), str(path)]
    if _visible_to_nobody(TOOLCHAINS_DIR):
        args += ["--ro-bind", str(TOOLCHAINS_DIR), SANDBOX_TOOLCHAINS]
    elif TOOLCHAINS_DIR.exists():
        # bwrap resolves every bind source as uid 65534 (even --ro-bind-fd goes back to the
        # path), so a checkout under a private folder (/root, a `mktemp -d`) hides them.
        log.warning("%s is not reachable by uid 65534 (a parent folder is private): the vendored "
                    "toolchains (TypeScript) are left out; put the checkout where others may traverse",
                    TOOLCHAINS_DIR)
    return args


def host_path(command: str, search: str = RUN_ENV["PATH"]) -> Path | None:
    """Where a sandboxed ``command`` would be found on the host (the sandbox sees the host's
    /usr and the toolchains dir), or None."""
    if command.startswith(SANDBOX_TOOLCHAINS + "/"):
        candidate = TOOLCHAINS_DIR / command[len(SANDBOX_TOOLCHAINS) + 1:]
        return candidate if candidate.exists() and _visible_to_nobody(candidate) else None
    if command.startswith("/"):
        top = command.split("/")[1]
        candidate = Path(command)
        ok = top == "usr" or top in SYSTEM_DIRS
        return candidate if ok and candidate.exists() and os.access(candidate, os.X_OK) else None
    for folder in search.split(":"):
        candidate = Path(folder) / command
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class BubblewrapSandbox(Sandbox):
    name = "bubblewrap"

    def __init__(
        self,
        bwrap: str | None = None,
        uid: int = NOBODY,
        gid: int = NOBODY,
        cgroup_root: Path | str = CGROUP_ROOT,
        require_cgroups: bool = True,
    ) -> None:
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        # As root we drop to ``uid`` before bwrap; as an ordinary user we already are one, and
        # bwrap maps us to ``uid`` inside its user namespace.
        self.drop_privileges = os.geteuid() == 0
        self.uid, self.gid = uid, gid
        self.cgroups = CgroupManager(Path(cgroup_root))
        self.require_cgroups = require_cgroups
        self._system = _system_binds()
        _raise_open_files_limit()
        try:
            self.seccomp_filter: bytes | None = build_filter()
            self._seccomp_problem = ""
        except SeccompUnsupported as exc:
            self.seccomp_filter, self._seccomp_problem = None, str(exc)
        self._warned_rlimits_only = False

    def _check(self, redetect: bool = False) -> Health:
        """Can a run get every layer? The first problem found, worded for an operator."""
        if not os.access(self.bwrap, os.X_OK):
            return Health(False, f"bubblewrap not found at {self.bwrap} (apt-get install bubblewrap)")
        if self.seccomp_filter is None:
            return Health(False, self._seccomp_problem)
        if redetect:
            self.cgroups.detect()
        missing = self.cgroups.missing()
        if missing and self.require_cgroups:
            return Health(False, f"cgroup limits cannot be applied: {missing}")
        if missing and not self._warned_rlimits_only:
            self._warned_rlimits_only = True
            log.warning("cgroup limits cannot be applied (%s); running with rlimits only, as "
                        "CODESYNC_RUNNER_REQUIRE_CGROUPS=false asks", missing)
        return Health.ok()

    async def health(self) -> Health:
        return self._note(self._check(redetect=True))

    async def probe(self, commands: list[str], image: str | None = None) -> set[str]:
        return {command for command in commands if host_path(command) is None}

    def command(self, spec: RunSpec, file_fds: dict[str, int], seccomp_fd: int | None = None) -> list[str]:
        limits = spec.limits
        args = [
            self.bwrap,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
            "--hostname",
            "sandbox",
            "--uid",
            str(self.uid),
            "--gid",
            str(self.gid),
            *self._system,
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(16 * 1024 * 1024),
            "--tmpfs",
            "/tmp",
            "--size",
            str(limits.work_dir_bytes),
            "--perms",
            "0755",
            "--tmpfs",
            WORK_DIR,
        ]
        for name, fd in file_fds.items():
            args += ["--perms", "0644", "--file", str(fd), f"{WORK_DIR}/{name}"]
        # bwrap's root is a tmpfs it builds the tree in; freeze it so only /work and /tmp are writable.
        args += ["--remount-ro", "/", "--chdir", WORK_DIR, "--clearenv"]
        for key, value in RUN_ENV.items():
            args += ["--setenv", key, value]
        args += ["--", "/bin/sh", "-c", spec.script()]
        return args

    async def start(self, spec: RunSpec) -> "BubblewrapExecution":
        # Not ready before: look again (the operator may have fixed it); ready: trust the cache.
        health = self._check(redetect=self._health is not None and not self._health.ready)
        if not health.ready:
            raise self._unavailable(health.reason)
        limits = spec.limits
        fds: dict[str, int] = {}
        seccomp_fd: int | None = None
        group: RunCgroup | None = None
        try:
            files = check_project(spec.files)
        except ProjectError as exc:
            raise SandboxError(str(exc)) from exc
        try:
            for name, content in files.items():
                fd = os.memfd_create("codesync-file", 0)
                os.write(fd, content)
                os.lseek(fd, 0, os.SEEK_SET)
                fds[name] = fd
            assert self.seccomp_filter is not None
            seccomp_fd = os.memfd_create("codesync-seccomp", 0)
            os.write(seccomp_fd, self.seccomp_filter)
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
            try:
                group = self.cgroups.create(limits.memory_bytes, limits.processes)
            except CgroupError as exc:
                if self.require_cgroups:
                    raise self._unavailable(f"cgroup limits cannot be applied: {exc}") from exc
            preexec = _make_preexec(limits, group, self.uid, self.gid, self.drop_privileges)
            proc = await asyncio.create_subprocess_exec(
                *self.command(spec, fds, seccomp_fd),
                stdin=asyncio.subprocess.PIPE if spec.stdin_open else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(*fds.values(), seccomp_fd),
                start_new_session=True,
                preexec_fn=preexec,
                env={},
                cwd="/",
            )
        except SandboxError:
            if group:
                group.kill_all(0.1)
            raise
        except OSError as exc:
            if group:
                group.kill_all(0.1)
            raise SandboxError(f"could not start bubblewrap: {exc}") from exc
        finally:
            for fd in (*fds.values(), *([seccomp_fd] if seccomp_fd is not None else [])):
                os.close(fd)
        self._note(Health.ok())
        return BubblewrapExecution(proc, limits, group)


def _make_preexec(limits: Limits, group: RunCgroup | None, uid: int, gid: int, drop: bool = True):
    procs = [os.fsencode(p) for p in (group.procs_files if group else [])]
    # Without a pids cgroup RLIMIT_NPROC is the only process limit; with one it is a backstop
    # (it counts every process of uid 65534, so concurrent runs share it).
    nproc = limits.processes if group is None or "pids" not in group.dirs else limits.processes * 8
    rlimits = [
        (resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)),
        (resource.RLIMIT_AS, (limits.address_space_bytes, limits.address_space_bytes)),
        (resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
    ]

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        pid = str(os.getpid()).encode()
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, pid)
            os.close(fd)
        for which, value in rlimits:
            resource.setrlimit(which, value)
        if drop:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

    return preexec


class BubblewrapExecution(Execution):
    def __init__(self, proc: asyncio.subprocess.Process, limits: Limits, group: RunCgroup | None) -> None:
        super().__init__(limits)
        self.proc = proc
        self.group = group
        self._stdin_eof = proc.stdin is None  # RunSpec(stdin_open=False): EOF from the start
        self._task = asyncio.create_task(self._supervise(), name=f"bwrap-{proc.pid}")

    async def _read(self, stream: asyncio.StreamReader, name) -> None:
        while True:
            data = await stream.read(READ_SIZE)
            if not data:
                return
            if not self._emit(name, data):
                await self._kill()
                return

    async def _supervise(self) -> None:
        assert self.proc.stdout and self.proc.stderr
        readers = [
            asyncio.create_task(self._read(self.proc.stdout, "stdout")),
            asyncio.create_task(self._read(self.proc.stderr, "stderr")),
        ]
        exit_code: int | None = None
        try:
            try:
                exit_code = await asyncio.wait_for(self.proc.wait(), self.limits.wall_seconds)
            except asyncio.TimeoutError:
                await self.stop("timeout", "wall clock limit exceeded")
                exit_code = await self.proc.wait()
            # The pid namespace is gone with its init, so pipes close promptly; bound it anyway.
            await asyncio.wait(readers, timeout=2.0)
        finally:
            for task in readers:
                task.cancel()
            await self._cleanup()
            # A reader that stopped early (output cap) leaves its pipe open; close it now.
            transport = getattr(self.proc, "_transport", None)
            if transport is not None:
                transport.close()
            status, reason = classify_exit(exit_code)
            if status != "finished" and self.group is not None:
                if self.group.oom_killed():
                    status, reason = "killed", "memory limit exceeded"
                elif self.group.pids_exhausted() and status == "failed":
                    reason = f"{reason}; process limit reached"
            if self.group is not None:
                await asyncio.to_thread(self.group.kill_all)
            self._finish(status, exit_code, reason)

    def _ended(self) -> bool:
        return self._done.is_set() or self.proc.returncode is not None

    async def _stdin_send(self, data: bytes) -> bool:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return False
        try:
            stdin.write(data)
            await stdin.drain()  # waits while the pipe is full (the program is not reading)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def _stdin_close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    async def _cleanup(self) -> None:
        if self.proc.returncode is None:
            await self._kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)

    async def _kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.group is not None:
            for pid in self.group.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
