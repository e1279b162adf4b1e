"""The one sandbox interface both backends (bubblewrap, Docker) implement.

A run is: some files written into a private, writable, size-limited work directory, then a
shell script (compile, then run) executed as an unprivileged user with no network and a
read-only system, under the same limits on every backend — wall clock, CPU seconds, memory,
process count, output bytes. Output comes back as ``(stream, bytes)`` chunks in arrival
order, so the caller can append stdout and stderr interleaved as they happened; ``stop()``
may be called from any other task and kills everything the run started.

Why an async iterator plus ``stop()`` rather than a callback: the runner service batches
output every ~50 ms while a user may press Stop at any moment; both are ordinary tasks
around one ``Execution`` object.

Interactive input: the program's stdin stays open (a pipe; no terminal — docs/runner.md says
why) and ``write_stdin(bytes)`` / ``close_stdin()`` feed it from any task. Input is bounded
per run (``Limits.stdin_bytes``), per second (``stdin_rate``) and in what may wait for a
program that does not read (``stdin_buffer``); every write gets a ``StdinResult`` — refused
with a reason, never an exception — also after the program has ended.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import shlex
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("codesync.runner.sandbox")

Stream = Literal["stdout", "stderr"]
Status = Literal["finished", "failed", "timeout", "killed"]

TRUNCATED_MARKER = "\n[output truncated]\n"

# Where a run's files are and the whole environment it sees: the same in every backend,
# so a program behaves alike under bubblewrap and docker.
WORK_DIR = "/work"
RUN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK_DIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class Limits:
    """Per-run limits; every backend enforces every field."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 256 * 1024 * 1024
    # RLIMIT_AS where the backend uses it; Node reserves ~1 GB of address space at start.
    address_space_bytes: int = 4 * 1024 * 1024 * 1024
    processes: int = 64
    output_bytes: int = 64 * 1024
    work_dir_bytes: int = 64 * 1024 * 1024
    file_bytes: int = 32 * 1024 * 1024
    open_files: int = 256
    # Interactive input: bytes per run in all, bytes per second (also the burst), and bytes
    # accepted but not yet taken by the program (one that never reads cannot grow it).
    stdin_bytes: int = 64 * 1024
    stdin_rate: int = 16 * 1024
    stdin_buffer: int = 16 * 1024


# The runner's build output (binaries, class files, caches) inside the work dir; project
# paths may not use it (runner/sandbox/project.py).
BUILD_DIR = ".codesync"


@dataclass(frozen=True)
class RunSpec:
    """What to run: the project's files for the work dir (relative paths, folders allowed,
    checked by ``project.check_project``) and the commands (compile, then run)."""

    files: dict[str, bytes]
    run: list[str]
    compile: list[str] | None = None
    image: str | None = None  # the Docker image; bubblewrap uses the host's /usr
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)  # on top of RUN_ENV, for compile and run
    # Keep the program's stdin open for ``write_stdin``; False: it reads end-of-file at once.
    stdin_open: bool = True

    def script(self) -> str:
        """The ``sh -c`` script: compile (if any) and, only when it succeeded, exec the run command.

        The compiler reads no input (``</dev/null``: what the user types is the program's) and
        its stdout goes to stderr (tsc prints its diagnostics on stdout): a compile error is a
        ``failed`` run whose stderr holds the compiler's message, with its exit status.

        A compiler driver hides how its passes died: gcc turns a ``cc1plus`` stopped by the CPU
        limit into "internal compiler error", exit 4. So when the compile step fails, the
        script asks the shell (``times``: CPU of every process it reaped, with theirs) whether
        the step used up the CPU limit, and then exits as a process killed by SIGXCPU would
        (128 + 24): the run is a ``timeout`` ("cpu time limit exceeded"), not a compile error.
        """
        steps = [f"export {key}={shlex.quote(value)}" for key, value in self.env.items()]
        if self.compile:
            steps.append(f"mkdir -p {BUILD_DIR}")
            steps.append(f"{{ {shlex.join(self.compile)} </dev/null >&2 || {{ s=$?; {self._cpu_limit_check()}; exit $s; }}; }}")
        steps.append("exec " + shlex.join(self.run))
        return " && ".join(steps)

    def _cpu_limit_check(self) -> str:
        """sh that exits 152 when the shell's reaped children used the CPU limit (in 1/100 s;
        dash's ``times`` prints ``0m2.990000s``, bash's ``0m2.990s``). A pass killed at the limit
        is reported a little under it (2.96–2.99 s of 3 measured; the kernel scales the sampled
        user/system split to the precise total), so 95 % of the limit counts as used up.
        ``times`` runs in this shell, not in a ``$(...)`` subshell, which has no children."""
        centis = 'c() { v=${1%s}; m=${v%%m*}; r=${v#*m}; f=$(printf %.2s "${r#*.}00"); n=$(( (m * 60 + ${r%%.*}) * 100 + 1$f - 100 )); }'
        limit = self.limits.cpu_seconds * 95
        used = f"times >{BUILD_DIR}/times; {{ read x; read u t; }} <{BUILD_DIR}/times; c $u; a=$n; c $t"
        return f"{centis}; {used}; [ $((a + n)) -lt {limit} ] || exit 152"


@dataclass(frozen=True)
class Chunk:
    stream: Stream
    data: bytes


@dataclass(frozen=True)
class StdinResult:
    """What became of one ``write_stdin`` / ``close_stdin``: taken (``bytes`` of it) or refused
    with a reason a user can read."""

    accepted: bool
    bytes: int = 0
    reason: str = ""


STDIN_ENDED = "the program has ended"
STDIN_CLOSED = "input is closed (end of input was sent)"
STDIN_GONE = "the program closed its input"
STDIN_WRITE_CHUNK = 16 * 1024


@dataclass
class RunResult:
    status: Status
    exit_code: int | None
    reason: str = ""
    truncated: bool = False
    duration: float = 0.0
    output_bytes: int = 0


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the user's code): missing binary, dockerd down, no image."""


class SandboxUnavailable(SandboxError):
    """The sandbox cannot isolate a run the way it promises (no cgroup limits, no seccomp
    filter, engine without limit support): the run is refused rather than run weaker.
    ``Sandbox.health()`` reports the same reason until it is fixed."""


@dataclass(frozen=True)
class Health:
    """Whether the backend can start runs with every promised limit, and if not, why."""

    ready: bool
    reason: str = ""

    @classmethod
    def ok(cls) -> "Health":
        return cls(True)


class Execution(abc.ABC):
    """One running sandbox. Iterate it for output chunks; ``await wait()`` for the result.

    Subclasses feed ``_queue`` with ``Chunk`` objects and ``None`` at the end, and set
    ``_result``. Output beyond ``limits.output_bytes`` is cut, the run is killed, and
    ``truncated`` is set; the caller appends ``TRUNCATED_MARKER``.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self._queue: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self._done = asyncio.Event()
        self._result: RunResult | None = None
        self._stop_reason: tuple[Status, str] | None = None
        self._emitted = 0
        self.truncated = False
        # Interactive input (write_stdin): what waits for the program, the totals, the pump.
        self._stdin_pending = bytearray()
        self._stdin_total = 0
        self._stdin_eof = False  # close_stdin was asked
        self._stdin_broken = False  # the program's end of the pipe is gone
        self._stdin_wake = asyncio.Event()
        self._stdin_task: asyncio.Task | None = None
        self._stdin_tokens = float(limits.stdin_rate)
        self._stdin_at = time.monotonic()

    # ---------------------------------------------------------------- public
    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk

    async def stop(self, status: Status = "killed", reason: str = "stopped") -> None:
        """Kill the run (idempotent; safe from any task). The first reason given wins."""
        if self._stop_reason is None and not self._done.is_set():
            self._stop_reason = (status, reason)
        await self._kill()

    async def wait(self) -> RunResult:
        await self._done.wait()
        assert self._result is not None
        return self._result

    async def write_stdin(self, data: bytes) -> StdinResult:
        """Queue ``data`` for the program's stdin; returns at once (a pump task writes it).

        All or nothing per call. Refused (with the reason) when the program has ended or
        closed its input, after ``close_stdin``, beyond the per-run total, faster than the
        rate, or when what waits unread would exceed ``stdin_buffer`` — so a program that
        never reads costs the runner at most that buffer plus the pipe's own.
        """
        limits = self.limits
        if self._ended():
            return StdinResult(False, 0, STDIN_ENDED)
        if self._stdin_eof:
            return StdinResult(False, 0, STDIN_CLOSED)
        if self._stdin_broken:
            return StdinResult(False, 0, STDIN_GONE)
        if not data:
            return StdinResult(True, 0)
        size = len(data)
        if self._stdin_total + size > limits.stdin_bytes:
            return StdinResult(False, 0, f"input limit reached ({limits.stdin_bytes // 1024} KiB per run)")
        if len(self._stdin_pending) + size > limits.stdin_buffer:
            return StdinResult(False, 0, "the program is not reading its input; wait until it does")
        now = time.monotonic()
        self._stdin_tokens = min(float(limits.stdin_rate), self._stdin_tokens + (now - self._stdin_at) * limits.stdin_rate)
        self._stdin_at = now
        if size > self._stdin_tokens:
            return StdinResult(False, 0, f"input too fast (at most {limits.stdin_rate // 1024} KiB a second)")
        self._stdin_tokens -= size
        self._stdin_total += size
        self._stdin_pending += data
        self._pump()
        return StdinResult(True, size)

    async def close_stdin(self) -> StdinResult:
        """End of input (Ctrl-D): the program reads EOF once what is queued has been taken."""
        if self._ended():
            return StdinResult(False, 0, STDIN_ENDED)
        if self._stdin_eof:
            return StdinResult(False, 0, STDIN_CLOSED)
        self._stdin_eof = True
        self._pump()
        return StdinResult(True, 0)

    @property
    def stdin_pending(self) -> int:
        """Bytes accepted by ``write_stdin`` that the program has not been handed yet."""
        return len(self._stdin_pending)

    # ---------------------------------------------------------------- for subclasses
    def _ended(self) -> bool:
        """The program is gone (input can no longer reach it)."""
        return self._done.is_set()

    async def _stdin_send(self, data: bytes) -> bool:
        """Hand ``data`` to the program's stdin (may wait while it does not read); False
        when its end of the pipe is gone."""
        return False

    async def _stdin_close(self) -> None:
        """Close our end of the program's stdin (it reads EOF)."""

    def _pump(self) -> None:
        self._stdin_wake.set()
        if self._stdin_task is None:
            self._stdin_task = asyncio.create_task(self._stdin_loop(), name="stdin-pump")

    async def _stdin_loop(self) -> None:
        """The one writer of the program's stdin: pending bytes in order, then EOF if asked."""
        try:
            while not self._done.is_set():
                await self._stdin_wake.wait()
                self._stdin_wake.clear()
                while self._stdin_pending and not self._done.is_set():
                    chunk = bytes(self._stdin_pending[:STDIN_WRITE_CHUNK])
                    ok = await self._stdin_send(chunk)
                    del self._stdin_pending[: len(chunk)]
                    if not ok:
                        self._stdin_broken = True
                        self._stdin_pending.clear()
                        return
                if self._stdin_eof and not self._stdin_pending:
                    await self._stdin_close()
                    return
        except Exception as exc:  # noqa: BLE001 - a vanished program/socket: input is just gone
            log.debug("stdin pump ended: %s", exc)
            self._stdin_broken = True
            self._stdin_pending.clear()

    def _stop_stdin(self) -> None:
        """The run is over: drop what waits and end the pump (called by ``_finish``)."""
        self._stdin_pending.clear()
        if self._stdin_task is not None and not self._stdin_task.done():
            self._stdin_task.cancel()

    def _emit(self, stream: Stream, data: bytes) -> bool:
        """Queue output within the cap; return False once the cap is reached (caller kills)."""
        if self.truncated or not data:
            return not self.truncated
        room = self.limits.output_bytes - self._emitted
        if len(data) > room:
            data = data[: max(room, 0)]
            self.truncated = True
        if data:
            self._emitted += len(data)
            self._queue.put_nowait(Chunk(stream, data))
        if self.truncated and self._stop_reason is None:
            self._stop_reason = ("killed", "output limit exceeded")
        return not self.truncated

    def _finish(self, status: Status, exit_code: int | None, reason: str = "") -> None:
        if self._stop_reason is not None:
            status, reason = self._stop_reason
        self._result = RunResult(
            status=status,
            exit_code=exit_code,
            reason=reason,
            truncated=self.truncated,
            duration=time.monotonic() - self.started,
            output_bytes=self._emitted,
        )
        self._queue.put_nowait(None)
        self._done.set()
        self._stop_stdin()

    @abc.abstractmethod
    async def _kill(self) -> None: ...


class Sandbox(abc.ABC):
    """A backend. ``start`` returns once the run is launched (or raises ``SandboxError``).

    The service calls ``prepare(limits)`` once at start and ``health()`` from ``/healthz``;
    neither raises. A backend that cannot apply its limits says so in ``health()`` and
    refuses runs with ``SandboxUnavailable`` (the run record then says why); the reason is
    logged once when the state changes, not once per refused run.
    """

    name: str
    _health: Health | None = None

    @abc.abstractmethod
    async def start(self, spec: RunSpec) -> Execution: ...

    async def prepare(self, limits: Limits) -> Health:
        """Everything a backend does before serving (Docker: leftovers, image, warm pool)."""
        return await self.health()

    async def health(self) -> Health:
        """Ready to start runs with every limit applied? (Checked live; cheap.)"""
        return self._note(Health.ok())

    def _note(self, health: Health) -> Health:
        """Remember the state; log only when it changes (so a broken host logs once)."""
        previous, self._health = self._health, health
        if previous != health:
            if not health.ready:
                log.error("%s sandbox not ready: %s; runs are refused until this is fixed", self.name, health.reason)
            elif previous is not None:
                log.info("%s sandbox ready again", self.name)
        return health

    def _unavailable(self, reason: str) -> SandboxUnavailable:
        """Mark the sandbox not ready and return the error to raise for this run."""
        self._note(Health(False, reason))
        return SandboxUnavailable(reason)

    async def probe(self, commands: list[str], image: str | None = None) -> set[str]:
        """Which of ``commands`` (names looked up on the run PATH, or absolute paths) a run
        in this sandbox would *not* find — the languages that need them are left out."""
        return set()

    async def prewarm(self, limits: Limits, image: str | None = None) -> None:
        """Get ready for runs with these limits (Docker: pre-start containers); returns when ready."""

    async def close(self) -> None:
        """Release backend resources (clients, cgroup roots)."""


def classify_exit(exit_code: int | None) -> tuple[Status, str]:
    """Status for a process exit code (shell convention: 128+N means killed by signal N)."""
    if exit_code == 0:
        return "finished", ""
    if exit_code is None:
        return "killed", "no exit status"
    if exit_code in (128 + 24, -24):  # SIGXCPU: RLIMIT_CPU soft limit
        return "timeout", "cpu time limit exceeded"
    if exit_code in (128 + 9, -9):
        return "killed", "killed (memory or process limit)"
    if exit_code > 128:
        return "failed", f"terminated by signal {exit_code - 128}"
    return "failed", f"exit code {exit_code}"


async def run_collect(sandbox: Sandbox, spec: RunSpec) -> tuple[RunResult, list[Chunk]]:
    """Convenience for tests and benchmarks: run to completion, collecting every chunk."""
    execution = await sandbox.start(spec)
    chunks = [chunk async for chunk in execution]
    return await execution.wait(), chunks
