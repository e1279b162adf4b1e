"""Per-run cgroups for the bubblewrap backend, v1 or v2, whatever this host allows.

rlimits alone are not enough (they are per process, and ``RLIMIT_NPROC`` counts a whole
uid), so each run gets its own cgroup: a memory limit the kernel enforces with the OOM
killer, a pids limit that stops fork bombs, and a CPU quota. Hosts differ: this one is a
hybrid whose memory/pids/cpu controllers exist only as cgroup v1 hierarchies (DESIGN.md,
"Sandboxes here"); a pure v2 host has them in the unified tree if delegated. We detect at
run time; ``missing()`` says which of memory, pids and cpu cannot be applied and why, and
``create()`` raises ``CgroupError`` rather than hand back a run without its limits — the
sandbox refuses such runs (``CODESYNC_RUNNER_REQUIRE_CGROUPS``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
WANTED = ("memory", "pids", "cpu")


class CgroupError(RuntimeError):
    """A run's cgroup could not be created or configured (message says which file and why)."""


def _own_paths() -> dict[str, str]:
    """Controller (or "" for the unified tree) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:
            paths[""] = path
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


def _cgroup_mounts() -> dict[str, str]:
    """Mount point -> "cgroup" | "cgroup2", from /proc/self/mountinfo: a directory tree that
    merely looks like cgroupfs (a wrong ``CODESYNC_RUNNER_CGROUP_ROOT``) must not pass."""
    mounts: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype in ("cgroup", "cgroup2"):
            mounts[fields[4].replace("\\040", " ")] = fstype
    return mounts


def _is_mount(path: Path, mounts: dict[str, str], fstype: str) -> bool:
    return mounts.get(os.path.realpath(path)) == fstype


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


@dataclass
class RunCgroup:
    """The cgroup directories of one run (one per v1 controller, or one v2 directory)."""

    version: int
    dirs: dict[str, Path] = field(default_factory=dict)  # controller -> dir (v2: every key same dir)

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    @property
    def controllers(self) -> list[str]:
        return sorted(self.dirs)

    def join(self, pid: int) -> None:
        """Move ``pid`` in; safe to call between fork and exec (no allocation-heavy work)."""
        for procs in self.procs_files:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)

    def oom_killed(self) -> bool:
        d = self.dirs.get("memory")
        if d is None:
            return False
        try:
            if self.version == 1:
                for line in (d / "memory.oom_control").read_text().splitlines():
                    if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                        return True
                return False
            for line in (d / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def pids_exhausted(self) -> bool:
        d = self.dirs.get("pids")
        if d is None:
            return False
        with contextlib.suppress(OSError, ValueError):
            for line in (d / "pids.events").read_text().splitlines():
                if line.startswith("max ") and int(line.split()[1]) > 0:
                    return True
        return False

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in Path(procs).read_text().split())
        return found

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGKILL everything still inside (a fork bomb may race us, so repeat), then remove."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("cgroup still has %d processes after kill", len(pids))
                break
            time.sleep(0.005)
        for d in set(self.dirs.values()):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last zombies are reaped
                    time.sleep(0.01)


class CgroupManager:
    """Detects what the host offers once; creates and configures one cgroup per run."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = Path(root)
        self.version = 0
        self.parents: dict[str, Path] = {}
        self.detect()

    def detect(self) -> None:
        """(Re)read what this host offers: cheap (a few stat calls), so health checks call it."""
        self.version, self.parents = 0, {}
        self._detect()

    def missing(self) -> str:
        """"" when memory, pids and cpu limits can all be applied; otherwise why not."""
        absent = [c for c in WANTED if c not in self.parents]
        if not absent:
            return ""
        if not self.parents:
            return (f"no writable cgroup with the {', '.join(WANTED)} controllers under {self.root} "
                    "(cgroup v1 hierarchies or delegated v2 controllers)")
        return f"no writable cgroup for {', '.join(absent)} under {self.root} (cgroup v{self.version})"

    def _detect(self) -> None:
        own = _own_paths()
        mounts = _cgroup_mounts()
        v1: dict[str, Path] = {}
        for c in WANTED:
            if c in own:
                base = self.root / c
                parent = base / own[c].lstrip("/")
                if _is_mount(base, mounts, "cgroup") and _writable_dir(parent):
                    v1[c] = parent
        if v1:
            self.version, self.parents = 1, v1
            return
        # Pure v2 (or the unified tree of a hybrid) with the controllers delegated to us.
        for unified in (self.root, self.root / "unified"):
            if not _is_mount(unified, mounts, "cgroup2") or "" not in own:
                continue
            parent = unified / own[""].lstrip("/")
            try:
                enabled = set((parent / "cgroup.subtree_control").read_text().split())
            except OSError:
                continue
            usable = [c for c in WANTED if c in enabled]
            if usable and _writable_dir(parent):
                self.version = 2
                self.parents = {c: parent for c in usable}
                return

    @property
    def available(self) -> list[str]:
        return sorted(self.parents)

    def create(self, memory_bytes: int, pids: int, cpus: float = 1.0) -> RunCgroup:
        """A configured cgroup for one run; ``CgroupError`` if any limit cannot be set."""
        if not self.parents:
            raise CgroupError(self.missing())
        name = f"codesync-run-{secrets.token_hex(6)}"
        group = RunCgroup(self.version)
        try:
            if self.version == 1:
                for c, parent in self.parents.items():
                    d = parent / name
                    d.mkdir()
                    group.dirs[c] = d
                    _check_made(d)
                _write(group.dirs.get("memory"), "memory.limit_in_bytes", memory_bytes)
                _write(group.dirs.get("memory"), "memory.memsw.limit_in_bytes", memory_bytes, optional=True)
                _write(group.dirs.get("memory"), "memory.swappiness", 0, optional=True)
                _write(group.dirs.get("pids"), "pids.max", pids)
                _write(group.dirs.get("cpu"), "cpu.cfs_period_us", 100_000)
                _write(group.dirs.get("cpu"), "cpu.cfs_quota_us", int(100_000 * cpus))
            else:
                parent = next(iter(self.parents.values()))
                d = parent / name
                d.mkdir()
                group.dirs = {c: d for c in self.parents}
                _check_made(d)
                _write(group.dirs.get("memory"), "memory.max", memory_bytes)
                _write(group.dirs.get("memory"), "memory.swap.max", 0, optional=True)
                _write(group.dirs.get("pids"), "pids.max", pids)
                if "cpu" in group.dirs:
                    (d / "cpu.max").write_text(f"{int(100_000 * cpus)} 100000")
        except OSError as exc:
            group.kill_all(0.1)
            where = f" ({exc.filename})" if exc.filename else ""
            raise CgroupError(f"cgroup setup failed: {exc.strerror or exc}{where}") from exc
        return group


def _check_made(directory: Path) -> None:
    """The kernel fills a new cgroup directory with its control files; a plain one is not a cgroup."""
    if not (directory / "cgroup.procs").exists():
        raise OSError(0, "not a cgroup (no cgroup.procs after mkdir)", str(directory))


def _write(directory: Path | None, name: str, value: int, optional: bool = False) -> None:
    if directory is None:
        return
    try:
        (directory / name).write_text(str(value))
    except OSError:
        if not optional:
            raise
