"""Run management for one room, independent of transport: requests in, the ``runs`` map out.

The code comes from the main document's ``source``; run records go to the ``runs`` map of the
room's named document ``runs`` (docs/protocol.md, "The room documents"), which every CodeSync
peer accepts only from the runner (and the persistence peer serving it from storage).

The runner service (runner/service.py) turns app messages into ``RunRequest``s and sends back
the ``Decision``; everything else happens here, on the room's pycrdt ``Doc``:

- only editors/owners (the server-stamped role, never a claim of the peer) may run or stop;
- a per-user token bucket and a short queue (one run at a time per room) bound the load;
  across rooms, ``runner.capacity`` bounds the sandboxes of the whole runner (at once, per
  user) and admits only as many waiting runs as can start within a bounded time: every
  accepted run waits ``queued`` in one fair line (the room's runs in their order), its
  ``queue_position`` (1 = next) kept current in its run entry;
- before accepting, wait until our document covers the requester's state vector, so the code
  that runs is exactly what the requester saw (plus anything newer); too slow -> refused;
- the run lives in ``runs[run_id]`` (DESIGN.md, "The room document"): status, language,
  requested_by, started_at / finished_at (epoch ms), exit_code, ``output`` Y.Text. Output is
  appended in ~50 ms batches (one transaction each, so peers get few, larger updates), stderr
  with the attribute ``{"stream": "stderr"}``, capped by the sandbox with a clear marker;
- only the newest ``keep_runs`` runs are kept, so the document does not grow without bound;
- a refusal an editor/owner should see in the room (unknown language, queue full, rate
  limit, state vector not reached, bad state vector) is also written as a run with status
  ``refused`` and its ``reason`` — at most ``refusal_burst`` of them per user and then
  ``refusal_per_minute``, pruned like any run; viewers, unknown users, bad or duplicate run
  ids never write anything, they only get the reply;
- every run entry names its owner (``runner_instance``, ``runner_session``, runner/identity.py)
  and its ``updated_at`` is refreshed every ``heartbeat`` seconds while it is queued/running.
  ``recover()`` (called by ``maintain()``) fails queued/running runs nobody serves any more:
  at once for an earlier, dead session of our own instance; otherwise only once the entry
  has not changed for ``stale_after`` seconds of *our* clock (no clock-skew assumptions), so
  two runners sharing a room never fail each other's live runs;
- ``input()`` feeds what an editor/owner types to the running program's stdin (or ends it,
  Ctrl-D) and echoes it into the run's ``output`` with ``{"stream": "stdin"}``, in order with
  the program's output, so everyone in the room sees the conversation; per-user rate limited,
  bounded per run by the sandbox (``Limits.stdin_*``).
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

from peer import workspace
from peer.protocol import decode_state_vector
from peer.ratelimit import TokenBucket

from .capacity import Capacity, Ticket
from .identity import RunnerIdentity, session_alive
from .languages import LanguageError, LanguageTable
from .sandbox.base import TRUNCATED_MARKER, Execution, Limits, RunSpec, Sandbox, SandboxError, SandboxUnavailable

log = logging.getLogger(__name__)

RUNS = Counter("codesync_runner_runs_total", "finished runs by final status and language", ["status", "language"])
FIRST_OUTPUT = Histogram(
    "codesync_runner_first_output_seconds",
    "run start (sandbox launch) to its first output byte",
    buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5),
)

RUN_ROLES = frozenset({"editor", "owner"})
INPUT_START_WAIT = 10.0  # input typed while the sandbox starts waits this long for it
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
    refusal_per_minute: float = 6.0  # refused runs written into the document, per user
    refusal_burst: float = 3.0
    input_per_second: float = 20.0  # input messages per user (token bucket), all runs of the room
    input_burst: float = 40.0
    max_input_bytes: int = 16 * 1024  # one input message (a pasted block); the sandbox bounds the run
    heartbeat: float = 5.0  # refresh updated_at of our live runs; look for stale ones
    stale_after: float = 20.0  # another runner's live run unchanged this long is failed
    # Sandboxes of the whole runner process (shared by every room given this config);
    # None: unlimited, one Capacity made on first use.
    capacity: Capacity | None = None


@dataclass(frozen=True)
class RunRequest:
    run_id: str
    language: str
    user_id: str
    user_name: str
    role: str | None
    state_vector: bytes | None = None
    # Schema v2 rooms (peer/workspace.py): run the whole file tree from this entry file — a
    # file id (preferred) or a path. Neither: the v1 single file ``source``.
    entry: str | None = None
    entry_path: str | None = None


@dataclass(frozen=True)
class Decision:
    accepted: bool
    run_id: str
    reason: str = ""

    def message(self, op: str = "run") -> dict:
        """The reply: ``{op}-accepted`` / ``{op}-refused`` (run, stop, input) with the reason."""
        msg: dict = {"op": f"{op}-accepted" if self.accepted else f"{op}-refused", "run_id": self.run_id}
        if self.reason:
            msg["reason"] = self.reason
        return msg


@dataclass
class _Pending:
    request: RunRequest
    source: str
    language: str
    spec: RunSpec | None = None  # a project from the file tree (None: the single file ``source``)
    execution: Execution | None = None
    stop_reason: str | None = None
    ticket: Ticket | None = None
    writer: "_OutputWriter | None" = None  # set with ``execution``: input echoes go through it
    # Set once the sandbox started (execution and writer are there) or the run is over:
    # input typed while the sandbox starts waits for it instead of being refused.
    started: asyncio.Event = field(default_factory=asyncio.Event)


def covers(ours: dict[int, int], theirs: dict[int, int]) -> bool:
    return all(ours.get(client, 0) >= clock for client, clock in theirs.items())


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
        identity: RunnerIdentity | None = None,
        runs_doc: pycrdt.Doc | None = None,
    ) -> None:
        self.doc = doc  # the main document: the code to run (``source``) and its state vector
        self.runs_doc = runs_doc if runs_doc is not None else doc  # where run records go
        self.sandbox = sandbox
        self.languages = languages
        self.config = config or RunnerConfig()
        self.runs: pycrdt.Map = self.runs_doc.get("runs", type=pycrdt.Map)
        self._monotonic = monotonic
        self._queue: deque[_Pending] = deque()
        self._current: _Pending | None = None
        self._worker: asyncio.Task | None = None
        self.identity = identity or RunnerIdentity.current()
        self._buckets: dict[str, TokenBucket] = {}
        self._refusal_buckets: dict[str, TokenBucket] = {}
        self._reserved: set[str] = set()  # run ids accepted-in-progress (waiting for sync)
        self._seen: dict[str, tuple[tuple, float]] = {}  # run id -> (what it looked like, since)
        self._doc_changed = asyncio.Event()
        self._runs_changed = asyncio.Event()
        self._subscriptions = [(d, d.observe(self._on_doc_change)) for d in {id(doc): doc, id(self.runs_doc): self.runs_doc}.values()]
        self._maintainer: asyncio.Task | None = None
        self._closed = False

    def _on_doc_change(self, _event) -> None:
        self._doc_changed.set()
        self._runs_changed.set()

    # ------------------------------------------------------------------ requests
    async def request(self, req: RunRequest) -> Decision:
        refuse = lambda reason: Decision(False, req.run_id, reason)  # noqa: E731
        if self._closed:
            return refuse("runner is shutting down")
        if not isinstance(req.run_id, str) or not req.run_id or len(req.run_id) > MAX_RUN_ID:
            return refuse("invalid run_id")
        if req.role not in RUN_ROLES:
            return refuse("only editors and owners may run code")
        if req.run_id in self.runs or req.run_id in self._reserved:
            return refuse("duplicate run_id")
        # From here on the requester may write runs: a refusal is also shown in the room.
        try:
            language = self.languages.get(req.language)
        except LanguageError as exc:
            return self._refuse_visibly(req, req.language, str(exc))
        if self._waiting() >= self.config.queue_size:
            return self._refuse_visibly(req, language.name, "too many runs queued in this room; try again shortly")
        bucket = self._buckets.setdefault(
            req.user_id, TokenBucket(self.config.rate_per_minute / 60.0, self.config.rate_burst, clock=self._monotonic)
        )
        ticket = self.capacity.admit(req.user_id, group=self)
        if isinstance(ticket, str):
            return self._refuse_visibly(req, language.name, ticket)
        if not bucket.take():
            ticket.release()
            return self._refuse_visibly(req, language.name, "rate limit: too many runs, wait a moment")
        self._reserved.add(req.run_id)
        queued = False
        try:
            if req.state_vector is not None:
                try:
                    theirs = decode_state_vector(req.state_vector)
                except ValueError:
                    self._reserved.discard(req.run_id)
                    return self._refuse_visibly(req, language.name, "invalid state_vector")
                if not await self._wait_covered(theirs, self.config.sync_timeout):
                    self._reserved.discard(req.run_id)
                    return self._refuse_visibly(
                        req, language.name, "the runner has not received your latest edits yet; try again"
                    )
            if self._closed:
                return refuse("runner is shutting down")
            spec = None
            if req.entry is not None or req.entry_path is not None:
                # The files as they are in our copy now (it covers the requester's state vector).
                try:
                    files, entry_path = workspace.project(self.doc, req.entry, req.entry_path)
                    spec = language.project_spec(files, entry_path, self.config.limits)
                except (workspace.WorkspaceError, LanguageError) as exc:
                    self._reserved.discard(req.run_id)
                    return self._refuse_visibly(req, language.name, str(exc))
                source = ""
            else:
                source = str(self.doc.get("source", type=pycrdt.Text))
            pending = _Pending(req, source, language.name, spec=spec, ticket=ticket)
            self._write_new(req, language.name)
            self._queue.append(pending)
            queued = True
            ticket.enter(lambda position, run_id=req.run_id: self._set_position(run_id, position))
        finally:
            self._reserved.discard(req.run_id)
            if not queued:
                ticket.release()
        self._prune()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="room-runs")
        return Decision(True, req.run_id)

    def _refuse_visibly(self, req: RunRequest, language: str, reason: str) -> Decision:
        """Refuse, and record the refusal as a ``refused`` run unless this user already wrote
        their share of refusals lately (the reply is sent either way)."""
        if self._closed or req.run_id in self.runs or req.run_id in self._reserved:
            return Decision(False, req.run_id, reason)
        bucket = self._refusal_buckets.setdefault(
            req.user_id, TokenBucket(self.config.refusal_per_minute / 60.0, self.config.refusal_burst, clock=self._monotonic)
        )
        if bucket.take():
            self._write_new(req, language[:40], status="refused", reason=reason, finished_at=_now_ms())
            self._prune()
        return Decision(False, req.run_id, reason)

    async def stop(self, run_id: str, role: str | None, by: str = "") -> Decision:
        if role not in RUN_ROLES:
            return Decision(False, run_id, "only editors and owners may stop runs")
        reason = f"stopped by {by}" if by else "stopped"
        for pending in list(self._queue):
            if pending.request.run_id == run_id:
                self._queue.remove(pending)
                if pending.ticket is not None:
                    pending.ticket.release()
                self._set(run_id, status="killed", reason=reason, finished_at=_now_ms(), queue_position=None)
                return Decision(True, run_id)
        current = self._current
        if current is not None and current.request.run_id == run_id:
            current.stop_reason = reason
            if current.execution is not None:
                await current.execution.stop("killed", reason)
            elif current.ticket is not None and current.ticket.state != "running":
                current.ticket.abort()  # waiting for a sandbox: _execute records the stop
            return Decision(True, run_id)
        return Decision(False, run_id, "no such queued or running run")

    async def input(self, run_id: str, data: str | bytes | None, user_id: str, role: str | None,
                    eof: bool = False) -> Decision:
        """Feed ``data`` to the running program's stdin and echo it into the run's output
        (``{"stream": "stdin"}``), or with ``eof`` end its input (Ctrl-D; nothing echoed).

        Editors and owners only (the server-stamped role, as for ``stop``); viewers and
        unknown users are refused and nothing is written. Per user ``input_per_second``
        messages (burst ``input_burst``), each at most ``max_input_bytes``; the sandbox
        bounds the run's total, its rate and what may wait unread. A refusal — also input
        for a run that has ended or has not started — is a reply with the reason, never an
        exception, and echoes nothing.
        """
        refuse = lambda reason: Decision(False, run_id if isinstance(run_id, str) else "", reason)  # noqa: E731
        if not isinstance(run_id, str) or not run_id or len(run_id) > MAX_RUN_ID:
            return refuse("invalid run_id")
        if role not in RUN_ROLES or not user_id:
            return refuse("only editors and owners may type into a run")
        if eof:
            payload = b""
        elif isinstance(data, str):
            payload = data.encode("utf-8", errors="replace")
        elif isinstance(data, (bytes, bytearray)):
            payload = bytes(data)
        else:
            return refuse("input must be text")
        if len(payload) > self.config.max_input_bytes:
            return refuse(f"input larger than {self.config.max_input_bytes // 1024} KiB at once")
        bucket = self._input_buckets().setdefault(
            user_id, TokenBucket(self.config.input_per_second, self.config.input_burst, clock=self._monotonic))
        if not bucket.take():
            return refuse("input rate limit: too many inputs, slow down")
        current = self._current
        if current is None or current.request.run_id != run_id:
            queued = any(p.request.run_id == run_id for p in self._queue) or run_id in self._reserved
            return refuse("the run has not started yet" if queued else "no such running run")
        if current.execution is None:
            entry = self._entry(run_id)
            if entry is None or entry.get("status") != "running":
                return refuse("the run has not started yet")  # still waiting for a sandbox
            # The sandbox is starting (a fraction of a second): hold the input until it runs.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(current.started.wait(), INPUT_START_WAIT)
        execution, writer = current.execution, current.writer
        if execution is None or writer is None:
            return refuse("the run has not started yet" if self._current is current else "no such running run")
        result = await (execution.close_stdin() if eof else execution.write_stdin(payload))
        if not result.accepted:
            return refuse(result.reason)
        if payload:
            writer.echo(payload.decode("utf-8", errors="replace"))
        return Decision(True, run_id)

    # Per-user input buckets, made on the first input (so __init__ stays as it is).
    _input_rate: dict[str, TokenBucket] | None = None

    def _input_buckets(self) -> dict[str, TokenBucket]:
        if self._input_rate is None:
            self._input_rate = {}
        return self._input_rate

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
                pending.started.set()  # wakes input that waited for a sandbox that never came
                if pending.ticket is not None:
                    pending.ticket.release()

    async def _execute(self, pending: _Pending) -> None:
        run_id = pending.request.run_id
        language = self.languages.get(pending.language)
        ticket = pending.ticket
        if ticket is not None and not pending.stop_reason:
            await ticket.acquire()
        if pending.stop_reason or (ticket is not None and ticket.state != "running"):
            reason = pending.stop_reason or ("runner shutting down" if self._closed else "stopped")
            self._set(run_id, status="killed", reason=reason, finished_at=_now_ms(), queue_position=None)
            return
        self._set(run_id, status="running", started_at=_now_ms(), queue_position=None)
        try:
            spec = pending.spec or language.spec(pending.source, self.config.limits)
            execution = await self.sandbox.start(spec)
        except (SandboxError, LanguageError) as exc:
            # An unavailable sandbox was logged once by the sandbox itself; not once per run.
            log.log(logging.DEBUG if isinstance(exc, SandboxUnavailable) else logging.WARNING,
                    "run %s could not start: %s", run_id, exc)
            self._set(run_id, status="failed", reason=str(exc), finished_at=_now_ms())
            return
        writer = _OutputWriter(self, run_id, self.config.batch_interval)
        pending.execution, pending.writer = execution, writer
        pending.started.set()
        if pending.stop_reason:
            await execution.stop("killed", pending.stop_reason)
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

    # ------------------------------------------------------------------ capacity
    @property
    def capacity(self) -> Capacity:
        """The runner-wide sandbox capacity (``config.capacity``; unlimited when not given)."""
        if self.config.capacity is None:
            self.config.capacity = Capacity.unlimited()
        return self.config.capacity

    def _set_position(self, run_id: str, position: int) -> None:
        """A queued run moved in the runner-wide line (1 = next)."""
        entry = self._entry(run_id)
        if entry is not None and entry.get("status") == "queued" and entry.get("queue_position") != position:
            self._set(run_id, queue_position=position)

    # ------------------------------------------------------------------ document
    def _entry(self, run_id: str) -> pycrdt.Map | None:
        entry = self.runs.get(run_id)
        return entry if isinstance(entry, pycrdt.Map) else None

    def _write_new(self, req: RunRequest, language: str, status: str = "queued", **extra) -> None:
        now = _now_ms()
        with self.runs_doc.transaction(origin="runner"):
            self.runs[req.run_id] = pycrdt.Map(
                {
                    "status": status,
                    "language": language,
                    "requested_by": req.user_id,
                    "requested_by_name": req.user_name,
                    "requested_at": now,
                    "started_at": None,
                    "finished_at": None,
                    "exit_code": None,
                    "backend": self.sandbox.name,
                    "runner_instance": self.identity.instance,
                    "runner_session": self.identity.session,
                    "updated_at": now,
                    "output": pycrdt.Text(),
                    **extra,
                }
            )

    def _set(self, run_id: str, **values) -> None:
        entry = self._entry(run_id)
        if entry is None:  # pruned or deleted by a peer meanwhile
            return
        with self.runs_doc.transaction(origin="runner"):
            for key, value in values.items():
                entry[key] = value
            entry["updated_at"] = _now_ms()

    def _prune(self) -> None:
        """Keep at most ``keep_runs`` runs: drop refused ones first, then the oldest finished
        (by request time); never a queued/running one (ours or another runner's)."""
        live = self._live_ids()
        candidates: list[tuple[bool, float, str]] = []
        kept = 0
        for run_id in list(self.runs.keys()):
            entry = self._entry(run_id)
            status = entry.get("status") if entry is not None else None
            if run_id in live or status in ("queued", "running"):
                kept += 1
                continue
            at = entry.get("requested_at") if entry is not None else None
            candidates.append((status != "refused", float(at) if isinstance(at, (int, float)) else 0.0, run_id))
        excess = len(candidates) + kept - self.config.keep_runs
        if excess <= 0:
            return
        candidates.sort()
        with self.runs_doc.transaction(origin="runner"):
            for _, _, run_id in candidates[:excess]:
                del self.runs[run_id]

    def _live_ids(self) -> set[str]:
        live = {p.request.run_id for p in self._queue} | set(self._reserved)
        if self._current is not None:
            live.add(self._current.request.run_id)
        return live

    def recover(self) -> int:
        """Fail queued/running runs that no live runner serves; returns how many.

        Ours (this session) but not live: lost, failed. An earlier dead session of our own
        instance: failed at once ("runner restarted"). Anyone else's (another instance, or
        an entry without owner): failed only once it has not changed for ``stale_after``
        seconds of our monotonic clock — a live owner refreshes ``updated_at`` every
        ``heartbeat`` seconds. A session that is a live process on this host is never failed.
        """
        now = self._monotonic()
        live = self._live_ids()
        stale: list[tuple[str, str]] = []
        seen: dict[str, tuple[tuple, float]] = {}
        for run_id in list(self.runs.keys()):
            entry = self._entry(run_id)
            if entry is None or run_id in live or entry.get("status") not in ("queued", "running"):
                continue
            instance, session = entry.get("runner_instance"), entry.get("runner_session")
            if session == self.identity.session:
                stale.append((run_id, "runner lost the run"))
            elif self.identity.owns_leftover(instance, session):
                stale.append((run_id, "runner restarted"))
            elif isinstance(session, str) and session_alive(session):
                continue
            else:
                looks = (entry.get("status"), entry.get("updated_at"), session)
                before = self._seen.get(run_id)
                since = before[1] if before is not None and before[0] == looks else now
                if now - since >= self.config.stale_after:
                    stale.append((run_id, "runner stopped responding"))
                else:
                    seen[run_id] = (looks, since)
        self._seen = seen
        for run_id, reason in stale:
            log.info("run %s: marking failed (%s)", run_id, reason)
            self._set(run_id, status="failed", reason=reason, finished_at=_now_ms())
        return len(stale)

    def heartbeat(self) -> None:
        """Refresh ``updated_at`` of our queued/running runs (other runners watch it)."""
        for run_id in self._live_ids():
            entry = self._entry(run_id)
            if entry is not None and entry.get("status") in ("queued", "running"):
                self._set(run_id)

    def start(self) -> None:
        """Start ``maintain()`` in the background (``close()`` ends it)."""
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self.maintain(), name="room-runs-maintain")

    async def maintain(self) -> None:
        """Heartbeat our runs and recover stale ones: every ``heartbeat`` seconds, and soon
        after the runs change (entries synced from peers after joining are looked at at once)."""
        interval = self.config.heartbeat
        next_beat = self._monotonic() + interval
        while not self._closed:
            try:
                self.recover()
                if self._monotonic() >= next_beat:
                    self.heartbeat()
                    next_beat = self._monotonic() + interval
            except Exception:  # noqa: BLE001 - a malformed entry must not end maintenance
                log.exception("runs maintenance failed")
            self._runs_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._runs_changed.wait(), max(next_beat - self._monotonic(), 0.01))
            await asyncio.sleep(min(0.2, interval))  # at most a few sweeps a second while typing

    async def close(self) -> None:
        self._closed = True
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._maintainer
        for pending in list(self._queue):
            if pending.ticket is not None:
                pending.ticket.release()
            self._set(pending.request.run_id, status="killed", reason="runner shutting down", finished_at=_now_ms(),
                      queue_position=None)
        self._queue.clear()
        if self._current is not None and self._current.execution is not None:
            await self._current.execution.stop("killed", "runner shutting down")
        elif self._current is not None and self._current.ticket is not None:
            self._current.ticket.abort()  # still waiting for a sandbox
        if self._worker is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._worker), 10)
        for observed, subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                observed.unobserve(subscription)

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
        self.eager = False  # the next output is flushed at once (it answers an input)

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
            # So does the first output after someone typed (the program's answer).
            delay = self.interval if self.flushed and not self.eager else 0.0
            self.timer = asyncio.get_running_loop().call_later(delay, self.flush)

    def flush(self) -> None:
        self.timer = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.eager = batch[-1][0] == "stdin"  # the answer to this input goes out at once
        self.flushed = True
        entry = self.owner._entry(self.run_id)
        if entry is None:
            return
        output = entry.get("output")
        if not isinstance(output, pycrdt.Text):
            return
        with self.owner.runs_doc.transaction(origin="runner"):
            for stream, text in batch:
                # pycrdt 0.14 indexes UTF-8 bytes and len() agrees, so len() is the end.
                # Explicit {"stream": None} for stdout: an insert right after a stderr (or
                # stdin echo) span would otherwise inherit its formatting (Yjs semantics).
                output.insert(len(output), text, {"stream": stream if stream in ("stderr", "stdin") else None})

    def echo(self, text: str) -> None:
        """Input someone typed: after the output that came before it, in one transaction now
        (everyone sees it at once, the program's answer follows)."""
        self._queue("stdin", text)
        if self.timer is not None:
            self.timer.cancel()
        self.flush()

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
