"""Run management for one room, independent of transport: requests in, the ``runs`` map out.

The runner service (runner/service.py) turns app messages into ``RunRequest``s and sends back
the ``Decision``; everything else happens here, on the room's pycrdt ``Doc``:

- only editors/owners (the server-stamped role, never a claim of the peer) may run or stop;
- a per-user token bucket and a short queue (one run at a time per room) bound the load;
- before accepting, wait until our document covers the requester's state vector, so the code
  that runs is exactly what the requester saw (plus anything newer); too slow -> refused;
- the run lives in ``runs[run_id]`` (DESIGN.md, "The room document"): status, language,
  requested_by, started_at / finished_at (epoch ms), exit_code, ``output`` Y.Text. Output is
  appended in ~50 ms batches (one transaction each, so peers get few, larger updates), stderr
  with the attribute ``{"stream": "stderr"}``, capped by the sandbox with a clear marker;
- only the newest ``keep_runs`` runs are kept, so the document does not grow without bound.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pycrdt
from prometheus_client import Counter, Histogram

from .languages import LanguageError, LanguageTable
from .sandbox.base import TRUNCATED_MARKER, Execution, Limits, Sandbox, SandboxError

log = logging.getLogger(__name__)

RUNS = Counter("codesync_runner_runs_total", "finished runs by final status and language", ["status", "language"])
FIRST_OUTPUT = Histogram(
    "codesync_runner_first_output_seconds",
    "run start (sandbox launch) to its first output byte",
    buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5),
)

RUN_ROLES = frozenset({"editor", "owner"})
FINAL = frozenset({"finished", "failed", "timeout", "killed", "refused"})
MAX_RUN_ID = 64


@dataclass
class RunnerConfig:
    limits: Limits = field(default_factory=Limits)
    queue_size: int = 3  # waiting runs per room, besides the running one
    rate_per_minute: float = 20.0  # per user, token bucket
    rate_burst: float = 5.0
    keep_runs: int = 20
    batch_interval: float = 0.05
    sync_timeout: float = 5.0  # waiting for the requester's state vector


@dataclass(frozen=True)
class RunRequest:
    run_id: str
    language: str
    user_id: str
    user_name: str
    role: str | None
    state_vector: bytes | None = None


@dataclass(frozen=True)
class Decision:
    accepted: bool
    run_id: str
    reason: str = ""

    def message(self) -> dict:
        msg: dict = {"op": "run-accepted" if self.accepted else "run-refused", "run_id": self.run_id}
        if self.reason:
            msg["reason"] = self.reason
        return msg


@dataclass
class _Pending:
    request: RunRequest
    source: str
    language: str
    execution: Execution | None = None
    stop_reason: str | None = None


def decode_state_vector(data: bytes) -> dict[int, int]:
    """lib0 encoding: varUint count, then (varUint client, varUint clock) pairs."""
    pos = 0

    def var_uint() -> int:
        nonlocal pos
        value, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError("truncated or oversized varUint")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    count = var_uint()
    if count > 100_000:
        raise ValueError("state vector too large")
    return {var_uint(): var_uint() for _ in range(count)}


def covers(ours: dict[int, int], theirs: dict[int, int]) -> bool:
    return all(ours.get(client, 0) >= clock for client, clock in theirs.items())


class _Bucket:
    def __init__(self, rate_per_second: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate_per_second, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


class RoomRuns:
    """All runs of one room. ``request``/``stop`` are called by the transport; ``close`` at exit."""

    def __init__(
        self,
        doc: pycrdt.Doc,
        sandbox: Sandbox,
        languages: LanguageTable,
        config: RunnerConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.doc = doc
        self.sandbox = sandbox
        self.languages = languages
        self.config = config or RunnerConfig()
        self.runs: pycrdt.Map = doc.get("runs", type=pycrdt.Map)
        self._monotonic = monotonic
        self._queue: deque[_Pending] = deque()
        self._current: _Pending | None = None
        self._worker: asyncio.Task | None = None
        self._buckets: dict[str, _Bucket] = {}
        self._reserved: set[str] = set()  # run ids accepted-in-progress (waiting for sync)
        self._doc_changed = asyncio.Event()
        self._subscription = doc.observe(lambda _event: self._doc_changed.set())
        self._closed = False

    # ------------------------------------------------------------------ requests
    async def request(self, req: RunRequest) -> Decision:
        refuse = lambda reason: Decision(False, req.run_id, reason)  # noqa: E731
        if self._closed:
            return refuse("runner is shutting down")
        if not isinstance(req.run_id, str) or not req.run_id or len(req.run_id) > MAX_RUN_ID:
            return refuse("invalid run_id")
        if req.role not in RUN_ROLES:
            return refuse("only editors and owners may run code")
        try:
            language = self.languages.get(req.language)
        except LanguageError as exc:
            return refuse(str(exc))
        if req.run_id in self.runs or req.run_id in self._reserved:
            return refuse("duplicate run_id")
        if self._waiting() >= self.config.queue_size:
            return refuse("too many runs queued in this room; try again shortly")
        bucket = self._buckets.setdefault(
            req.user_id, _Bucket(self.config.rate_per_minute / 60.0, self.config.rate_burst, self._monotonic())
        )
        if not bucket.take(self._monotonic()):
            return refuse("rate limit: too many runs, wait a moment")
        self._reserved.add(req.run_id)
        try:
            if req.state_vector is not None:
                try:
                    theirs = decode_state_vector(req.state_vector)
                except ValueError:
                    return refuse("invalid state_vector")
                if not await self._wait_covered(theirs, self.config.sync_timeout):
                    return refuse("the runner has not received your latest edits yet; try again")
            if self._closed:
                return refuse("runner is shutting down")
            source = str(self.doc.get("source", type=pycrdt.Text))
            pending = _Pending(req, source, language.name)
            self._write_new(req, language.name)
            self._queue.append(pending)
        finally:
            self._reserved.discard(req.run_id)
        self._prune()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="room-runs")
        return Decision(True, req.run_id)

    async def stop(self, run_id: str, role: str | None, by: str = "") -> Decision:
        if role not in RUN_ROLES:
            return Decision(False, run_id, "only editors and owners may stop runs")
        reason = f"stopped by {by}" if by else "stopped"
        for pending in list(self._queue):
            if pending.request.run_id == run_id:
                self._queue.remove(pending)
                self._set(run_id, status="killed", reason=reason, finished_at=_now_ms())
                return Decision(True, run_id)
        current = self._current
        if current is not None and current.request.run_id == run_id:
            current.stop_reason = reason
            if current.execution is not None:
                await current.execution.stop("killed", reason)
            return Decision(True, run_id)
        return Decision(False, run_id, "no such queued or running run")

    def _waiting(self) -> int:
        """Runs ahead of a new request that are not running yet (the next one to start excluded)."""
        occupied = len(self._queue) + len(self._reserved) + (1 if self._current is not None else 0)
        return max(occupied - 1, 0)

    async def _wait_covered(self, theirs: dict[int, int], timeout: float) -> bool:
        deadline = self._monotonic() + timeout
        while True:
            self._doc_changed.clear()
            if covers(decode_state_vector(self.doc.get_state()), theirs):
                return True
            left = deadline - self._monotonic()
            if left <= 0 or self._closed:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._doc_changed.wait(), left)

    # ------------------------------------------------------------------ execution
    async def _work(self) -> None:
        while self._queue and not self._closed:
            pending = self._queue.popleft()
            self._current = pending
            try:
                await self._execute(pending)
            except Exception:  # noqa: BLE001 - one broken run must not stop the room
                log.exception("run %s crashed", pending.request.run_id)
                self._set(pending.request.run_id, status="failed", reason="runner error", finished_at=_now_ms())
            finally:
                self._current = None

    async def _execute(self, pending: _Pending) -> None:
        run_id = pending.request.run_id
        language = self.languages.get(pending.language)
        if pending.stop_reason:
            return
        self._set(run_id, status="running", started_at=_now_ms())
        try:
            execution = await self.sandbox.start(language.spec(pending.source, self.config.limits))
        except (SandboxError, LanguageError) as exc:
            log.warning("run %s could not start: %s", run_id, exc)
            self._set(run_id, status="failed", reason=str(exc), finished_at=_now_ms())
            return
        pending.execution = execution
        if pending.stop_reason:
            await execution.stop("killed", pending.stop_reason)
        writer = _OutputWriter(self, run_id, self.config.batch_interval)
        launched = time.monotonic()
        try:
            async for chunk in execution:
                if not writer.flushed and not writer.pending:
                    FIRST_OUTPUT.observe(time.monotonic() - launched)
                writer.add(chunk.stream, chunk.data)
            result = await execution.wait()
        except asyncio.CancelledError:
            await execution.stop("killed", "runner shutting down")
            raise
        finally:
            writer.close()
        RUNS.labels(result.status, pending.language).inc()
        if result.truncated:
            writer.append_now("stderr", TRUNCATED_MARKER)
        self._set(
            run_id,
            status=result.status,
            exit_code=result.exit_code,
            reason=result.reason,
            truncated=result.truncated,
            finished_at=_now_ms(),
        )

    # ------------------------------------------------------------------ document
    def _entry(self, run_id: str) -> pycrdt.Map | None:
        entry = self.runs.get(run_id)
        return entry if isinstance(entry, pycrdt.Map) else None

    def _write_new(self, req: RunRequest, language: str) -> None:
        with self.doc.transaction(origin="runner"):
            self.runs[req.run_id] = pycrdt.Map(
                {
                    "status": "queued",
                    "language": language,
                    "requested_by": req.user_id,
                    "requested_by_name": req.user_name,
                    "requested_at": _now_ms(),
                    "started_at": None,
                    "finished_at": None,
                    "exit_code": None,
                    "backend": self.sandbox.name,
                    "output": pycrdt.Text(),
                }
            )

    def _set(self, run_id: str, **values) -> None:
        entry = self._entry(run_id)
        if entry is None:  # pruned or deleted by a peer meanwhile
            return
        with self.doc.transaction(origin="runner"):
            for key, value in values.items():
                entry[key] = value

    def _prune(self) -> None:
        """Keep the newest ``keep_runs`` finished runs (by request time); never touch live ones."""
        live = {p.request.run_id for p in self._queue}
        if self._current is not None:
            live.add(self._current.request.run_id)
        finished: list[tuple[float, str]] = []
        for run_id in list(self.runs.keys()):
            entry = self._entry(run_id)
            if run_id in live:
                continue
            at = entry.get("requested_at") if entry is not None else None
            finished.append((float(at) if isinstance(at, (int, float)) else 0.0, run_id))
        excess = len(finished) + len(live) - self.config.keep_runs
        if excess <= 0:
            return
        finished.sort()
        with self.doc.transaction(origin="runner"):
            for _, run_id in finished[:excess]:
                del self.runs[run_id]

    def recover(self) -> int:
        """Mark runs a previous runner left queued/running as failed (call once after loading)."""
        stale = []
        for run_id in list(self.runs.keys()):
            entry = self._entry(run_id)
            if entry is not None and entry.get("status") in ("queued", "running"):
                stale.append(run_id)
        for run_id in stale:
            self._set(run_id, status="failed", reason="runner restarted", finished_at=_now_ms())
        return len(stale)

    async def close(self) -> None:
        self._closed = True
        for pending in list(self._queue):
            self._set(pending.request.run_id, status="killed", reason="runner shutting down", finished_at=_now_ms())
        self._queue.clear()
        if self._current is not None and self._current.execution is not None:
            await self._current.execution.stop("killed", "runner shutting down")
        if self._worker is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._worker), 10)
        with contextlib.suppress(Exception):
            self.doc.unobserve(self._subscription)

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue) or bool(self._reserved)


class _OutputWriter:
    """Collects output and appends it to ``runs[run_id].output`` every ``interval`` seconds."""

    def __init__(self, owner: RoomRuns, run_id: str, interval: float) -> None:
        self.owner = owner
        self.run_id = run_id
        self.interval = interval
        self.pending: list[tuple[str, str]] = []
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        self.timer: asyncio.TimerHandle | None = None
        self.flushed = False

    def add(self, stream: str, data: bytes) -> None:
        text = self.decoders[stream].decode(data)
        if text:
            self._queue(stream, text)

    def _queue(self, stream: str, text: str) -> None:
        if self.pending and self.pending[-1][0] == stream:
            self.pending[-1] = (stream, self.pending[-1][1] + text)
        else:
            self.pending.append((stream, text))
        if self.timer is None:
            # The first output goes out at once (time to first byte is what users feel);
            # after that, one transaction per interval.
            delay = self.interval if self.flushed else 0.0
            self.timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        self.timer = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.flushed = True
        entry = self.owner._entry(self.run_id)
        if entry is None:
            return
        output = entry.get("output")
        if not isinstance(output, pycrdt.Text):
            return
        with self.owner.doc.transaction(origin="runner"):
            for stream, text in batch:
                # pycrdt 0.14 indexes UTF-8 bytes and len() agrees, so len() is the end.
                # Explicit {"stream": None} for stdout: an insert right after a stderr span
                # would otherwise inherit its formatting (Yjs semantics).
                output.insert(len(output), text, {"stream": "stderr" if stream == "stderr" else None})

    def append_now(self, stream: str, text: str) -> None:
        self._queue(stream, text)
        self.close()

    def close(self) -> None:
        for stream, decoder in self.decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self.pending.append((stream, tail))
        if self.timer is not None:
            self.timer.cancel()
        self.flush()
