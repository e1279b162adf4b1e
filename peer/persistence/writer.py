"""One room's write path: validated updates -> group commit -> compaction -> "saved" state.

Why a dedicated writer task per room: updates arrive one by one (often one per keystroke),
but a transaction costs far more than an INSERT. The writer commits whatever has queued up
while the previous transaction ran (plus a few ms of linger), so the delay an update sees
stays bounded (~``max_delay``) while throughput scales with batch size. Each batch is merged
(pycrdt ``merge_updates``, in slices) into log rows. Compaction runs in the same task, between
commits, so appends and compactions of one room never interleave.

Invariant the caller keeps: every change to ``doc`` (the room's live document) is either the
stored document it was loaded from or an update passed to :meth:`submit`. Then the state
vector of ``doc`` taken when a batch is cut is exactly what is durable once that batch commits
— that is the ``saved`` state published to clients.

History (docs/history.md): every update is its own row (never merged with another: playback
shows each one, and each keeps its own author, time and client ranges), so a batch is one
transaction of many rows. The same transaction stores what attribution learnt (authors,
client bindings) and extends the timeline's open burst (main document only). Anything that
deletes history (``delete_history``, retention) runs through :meth:`RoomWriter.exclusive`,
between two commits.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collections.abc import Awaitable

from pycrdt import Doc, get_state

from codesync.models import MAIN_DOC

from . import history
from .attribution import Attribution
from .store import DocumentStore, Row, StoredDocument, now_ms
from .timeline import BurstBuilder, Entry
from .yupdate import Range, encode_ranges, inserted_ranges, key_client

log = logging.getLogger("codesync.persistence.writer")


class LeaseLost(RuntimeError):
    """The room's lease is gone: this process must not write to the room any more."""


@dataclass
class SaveState:
    """What clients see under awareness ``saved`` (see :meth:`as_awareness`)."""

    status: str = "loading"  # loading | saved | saving | error
    state_vector: bytes = b"\x00"
    commits: int = 0  # transactions committed by this writer (monotonic per load)
    stored_updates: int = 0  # updates made durable by this writer
    pending: int = 0
    error: str | None = None

    def as_awareness(self) -> dict:
        out = {
            "status": self.status,
            "state_vector": base64.b64encode(self.state_vector).decode(),
            "seq": self.commits,
            "pending": self.pending,
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class WriterConfig:
    max_delay: float = 0.05  # an update waits at most about this long before its commit starts
    linger: float = 0.002  # after the first queued update, wait this long for company
    compact_rows: int = 200  # compact once the log holds this many rows ...
    compact_bytes: int = 512 * 1024  # ... or this many bytes
    retry_max: float = 5.0  # backoff ceiling after a failed commit
    max_pending_bytes: int = 64 * 1024 * 1024  # beyond this, submit() refuses (the DB is gone)
    history_days: int = 0  # retention: 0 keeps every update; N keeps N days, then daily snapshots
    prune_interval: float = 3600.0  # seconds between two retention passes of a room
    prune_rows: int = 50_000  # rows one retention pass replaces at most


@dataclass(frozen=True)
class _Pending:
    update: bytes
    at: int
    via: int | None
    ranges: list[Range]


@dataclass
class _Stats:
    log_rows: int = 0
    log_bytes: int = 0
    compactions: int = 0
    commit_seconds: list[float] = field(default_factory=list)


class RoomWriter:
    """Durable, batched storage of one room document's updates (``name``: the main document
    by default, or a named document such as ``runs``)."""

    def __init__(
        self,
        store: DocumentStore,
        room_id: str,
        doc: Doc,
        *,
        config: WriterConfig | None = None,
        on_saved: Callable[[SaveState], None] | None = None,
        may_write: Callable[[], bool | None] | None = None,
        name: str = MAIN_DOC,
        attribution: Attribution | None = None,
    ) -> None:
        self.store = store
        self.room_id = room_id
        self.name = name
        self.doc = doc
        self.config = config or WriterConfig()
        self.state = SaveState()
        self.stats = _Stats()
        self._on_saved = on_saved
        self._may_write = may_write
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self.attribution = attribution
        # the timeline's bursts: main document only
        self._bursts: BurstBuilder | None = (
            BurstBuilder(None, self._author_of) if attribution is not None and name == MAIN_DOC else None
        )
        self._lock = asyncio.Lock()  # one commit, compaction or exclusive job at a time
        # the first retention pass comes a little after the room is loaded, not at once
        self._last_prune = time.monotonic() - self.config.prune_interval + min(60.0, self.config.prune_interval)
        self.last_seq = 0  # highest seq this writer committed (or loaded)
        self._first_pending_at = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._loaded = False
        self._task: asyncio.Task | None = None
        self.failed: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    async def load(self) -> StoredDocument:
        """Read the stored document (call before anything is submitted).

        The caller applies ``stored.update`` to ``doc`` (e.g. ``room.load``) — or lets
        :meth:`load_into_doc` do it.
        """
        stored = await self.store.load(self.room_id, self.name)
        self.stats.log_rows, self.stats.log_bytes = stored.log_rows, stored.log_bytes
        self.last_seq = stored.last_seq
        if self._bursts is not None:
            self._bursts.adopt(await history.last_burst(self.store.engine, self.room_id))
        return stored

    async def load_into_doc(self) -> StoredDocument:
        stored = await self.load()
        self.doc.apply_update(stored.update)
        self.mark_loaded(stored)
        return stored

    def mark_loaded(self, stored: StoredDocument) -> None:
        """``stored`` is in ``doc``: that much is saved; commits may start now.

        Updates submitted while loading wait for this, so that the state vector of the first
        commit already includes the stored document.
        """
        self._loaded = True
        self.state.state_vector = get_state(stored.update)
        if self.state.status == "loading":
            self.state.status = "saving" if self._pending else "saved"
        self._publish()
        if self._pending:
            self.start()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"persist-writer:{self.room_id}:{self.name}")

    async def close(self, *, compact: bool = True, timeout: float = 10.0) -> None:
        """Flush everything queued, optionally compact, stop the task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                log.error("room %s: flush did not finish in %.1fs; %d updates unsaved", self.room_id, timeout,
                          len(self._pending))
                self._task.cancel()
        if self.failed is None and self._allowed():
            try:
                await self.store_attribution()
            except Exception:  # noqa: BLE001 - bindings are re-learnt next time
                log.exception("room %s: storing attribution at close failed", self.room_id)
        if compact and self.failed is None and self.stats.log_rows > 1 and self._allowed():
            try:
                async with self._lock:
                    await self._compact()
            except Exception:  # noqa: BLE001 - a failed compaction loses nothing
                log.exception("room %s: compaction at close failed", self.room_id)

    # ------------------------------------------------------------------ input
    def accept(self, update: bytes, via: int | None = None, at: int | None = None) -> None:
        """Apply ``update`` to ``doc`` (validation) and queue it. Raises ValueError if pycrdt rejects it."""
        try:
            self.doc.apply_update(update)
        except Exception as exc:  # noqa: BLE001 - pycrdt raises ValueError or a Rust panic
            raise ValueError(f"update rejected by pycrdt: {exc}") from None
        self.submit(update, via, at)

    def submit(self, update: bytes, via: int | None = None, at: int | None = None) -> None:
        """Queue an update that is already applied to ``doc``; ``via`` is the room-local
        author number of the link it arrived on (attribution), ``at`` when it arrived (epoch
        ms, default now; imports and benchmarks give their own)."""
        if self.failed is not None:
            raise self.failed
        if self._pending_bytes + len(update) > self.config.max_pending_bytes:
            raise RuntimeError(f"room {self.room_id}: {self._pending_bytes} bytes unsaved, refusing more")
        if not self._pending:
            self._first_pending_at = time.monotonic()
        try:
            ranges = inserted_ranges(update)
        except ValueError:
            log.warning("room %s: could not read the client ranges of an update (%d bytes); stored without",
                        self.room_id, len(update))
            ranges = []
        if self.attribution is not None:
            self.attribution.observe(ranges, via)
        self._pending.append(_Pending(update, now_ms() if at is None else at, via, ranges))
        self._pending_bytes += len(update)
        self._idle.clear()
        self.state.pending = len(self._pending)
        if self.state.status == "saved":
            self.state.status = "saving"
        self._wake.set()
        if self._loaded:
            self.start()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed. False on timeout."""
        if self._pending and self._loaded:
            self.start()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # ------------------------------------------------------------------ the task
    async def _run(self) -> None:
        backoff = 0.05
        try:
            while True:
                if not self._pending:
                    self._idle.set()
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                linger = self.config.linger - (time.monotonic() - self._first_pending_at)
                if linger > 0 and not self._closing:
                    await asyncio.sleep(min(linger, self.config.max_delay))
                await self._wait_allowed()
                await self._lock.acquire()
                batch, self._pending = self._pending, []
                batch_bytes, self._pending_bytes = self._pending_bytes, 0
                state_vector = self.doc.get_state()
                try:
                    await self._commit(batch)
                except BaseException as exc:
                    self._lock.release()
                    if not isinstance(exc, Exception) or isinstance(exc, LeaseLost):
                        raise
                    # DB down, connection reset...: retry the same batch
                    self._pending[:0] = batch
                    self._pending_bytes += batch_bytes
                    self.state.status, self.state.error = "error", f"{type(exc).__name__}: {exc}"[:200]
                    self.state.pending = len(self._pending)
                    self._publish()
                    log.warning("room %s: commit of %d updates failed (%s); retrying in %.2fs", self.room_id,
                                len(batch), exc, backoff)
                    if self._closing and backoff >= self.config.retry_max:
                        log.error("room %s: giving up with %d updates unsaved", self.room_id, len(self._pending))
                        return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.config.retry_max)
                    continue
                backoff = 0.05
                self.state.commits += 1
                self.state.stored_updates += len(batch)
                self.state.state_vector = state_vector
                self.state.pending = len(self._pending)
                self.state.error = None
                self.state.status = "saving" if self._pending else "saved"
                self._publish()
                try:
                    if self.stats.log_rows >= self.config.compact_rows or self.stats.log_bytes >= self.config.compact_bytes:
                        try:
                            await self._compact()
                        except Exception:  # noqa: BLE001 - the log still holds everything
                            log.exception("room %s: compaction failed (log kept)", self.room_id)
                    await self._maybe_prune()
                finally:
                    self._lock.release()
        except LeaseLost as exc:
            self.failed = exc
            self.state.status, self.state.error = "error", "lease lost"
            log.error("%s", exc)
        finally:
            self._idle.set()

    async def _commit(self, batch: list[_Pending]) -> None:
        """One transaction: a row per update, plus what attribution and the timeline learnt."""
        rows = [Row(p.update, p.at, p.via, encode_ranges(p.ranges) if p.ranges else None) for p in batch]
        attribution = self.attribution
        dirty = attribution.take_dirty() if attribution is not None else ({}, {})
        planned: list = []

        async def also(conn, seqs: list[int]) -> None:
            touched = []
            if self._bursts is not None:
                entries = []
                for p, seq in zip(batch, seqs):
                    client = key_client(p.ranges)
                    entries.append(Entry(seq, p.at, client, p.via, sum(e - s for _, s, e in p.ranges),
                                         self._author_of(client, p.via)))
                current, touched = self._bursts.plan(entries)
                planned.append(current)
            if attribution is not None:
                await history.write_history(conn, self.room_id, *dirty, touched)

        started = time.perf_counter()
        self.last_seq = max(self.last_seq, await self.store.append(self.room_id, rows, self.name, also=also))
        elapsed = time.perf_counter() - started
        if attribution is not None:
            attribution.written(*dirty)
        if self._bursts is not None and planned:
            self._bursts.adopt(planned[0])
        if len(self.stats.commit_seconds) < 10000:
            self.stats.commit_seconds.append(elapsed)
        self.stats.log_rows += len(rows)
        self.stats.log_bytes += sum(len(r.data) for r in rows)

    async def _compact(self) -> None:
        result = await self.store.compact(self.room_id, self.name)
        self.stats.compactions += 1
        self.stats.log_rows, self.stats.log_bytes = await self.store.log_stats(self.room_id, self.name)
        if result:
            log.debug("room %s: compacted %d rows into %d bytes (upto %d)", self.room_id, result.merged_rows,
                      result.snapshot_bytes, result.upto_seq)

    def _author_of(self, client: int | None, via: int | None) -> int | None:
        return self.attribution.author_for(client, via) if self.attribution is not None else via

    async def exclusive(self, job: Callable[[], Awaitable[object]], timeout: float = 30.0) -> object:
        """Run ``job`` between two commits (nothing of this writer touches the store meanwhile).

        Everything submitted before is committed first, so ``job`` sees it."""
        await self.flush(timeout)
        async with self._lock:
            if self.failed is not None:
                raise self.failed
            if not self._allowed():
                raise LeaseLost(f"room {self.room_id}: not the owner")
            return await job()

    async def store_attribution(self) -> None:
        """Write what attribution learnt since the last commit (awareness claims, new authors)
        even when no update comes to carry it."""
        if self.attribution is None or not (self.attribution.dirty_authors or self.attribution.dirty_clients):
            return
        async with self._lock:
            dirty = self.attribution.take_dirty()
            if not self._allowed():
                return
            async with self.store.engine.begin() as conn:
                await history.write_history(conn, self.room_id, *dirty)
            self.attribution.written(*dirty)

    def forget_bursts(self) -> None:
        """The stored bursts were deleted ("delete history"): start a new one next time."""
        if self._bursts is not None:
            self._bursts.adopt(None)

    async def refresh_stats(self) -> None:
        self.stats.log_rows, self.stats.log_bytes = await self.store.log_stats(self.room_id, self.name)

    async def _maybe_prune(self) -> None:
        """Retention (``history_days``): at most every ``prune_interval`` seconds, replace the
        rows older than that by daily snapshots (main writer only; it prunes every document)."""
        if self.config.history_days <= 0 or self.name != MAIN_DOC or self.attribution is None:
            return
        if time.monotonic() - self._last_prune < self.config.prune_interval:
            return
        self._last_prune = time.monotonic()
        try:
            cutoff = history.retention_cutoff(now_ms(), self.config.history_days)
            upto = await history.retention_boundary(self.store.engine, self.room_id, cutoff)
            if upto and self._allowed():
                pruned = await history.prune(self.store.engine, self.room_id, upto, daily=True,
                                             max_rows=self.config.prune_rows)
                if pruned is not None:
                    log.info("room %s: retention replaced %d updates up to seq %d by %d daily snapshot(s)",
                             self.room_id, pruned.rows, pruned.upto_seq, pruned.snapshots)
                    await self.refresh_stats()
        except Exception:  # noqa: BLE001 - retention is housekeeping; the log is intact
            log.exception("room %s: retention pass failed", self.room_id)

    def _allowed(self) -> bool:
        return self._may_write is None or self._may_write() is True

    async def _wait_allowed(self) -> None:
        """Commit only while ``may_write()`` is True; None means "not sure yet" (a lease renewal
        running late): wait for it; False means gone for good."""
        while not self._allowed():
            if self._may_write() is False:
                raise LeaseLost(f"room {self.room_id}: lease lost with {len(self._pending)} updates queued")
            await asyncio.sleep(0.02)

    def _publish(self) -> None:
        if self._on_saved is not None:
            try:
                self._on_saved(self.state)
            except Exception:  # noqa: BLE001
                log.exception("room %s: on_saved callback failed", self.room_id)

