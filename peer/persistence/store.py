"""Durable storage of room documents: an append-only update log plus snapshots.

Why this shape: a Yjs update is only ever *added* to a document, so the cheapest durable
write is an INSERT of the new bytes (``document_updates``), batched by the caller into one
transaction (group commit). The log is the room's history (docs/history.md): it is **kept**,
one row per received update with its arrival time and attribution (``via``, ``clients``).

Loading reads the newest snapshot and the rows above its ``upto_seq`` (the *tail*). To keep
loading cheap the tail is periodically *compacted*: the snapshot and the tail are replayed
into a pycrdt ``Doc`` whose encoding becomes a new snapshot — one INSERT, so a crash at any
instant leaves either the old newest snapshot or the new one, and both load to the same
document. Snapshots double as seek points for history: opening an old version starts at the
newest snapshot at or below it. To keep their storage in proportion, the previous snapshot
is dropped again unless the log between it and the snapshot kept before it is at least
``SEEK_RATIO`` times its size or ``SEEK_ROWS`` rows long (so snapshots take about as much room
as the log while documents are small, and a seek replays at most about ``SEEK_ROWS`` rows
however large the document's structure grows).

A snapshot at ``upto_seq`` is exactly the state after every row up to it: rows that changed
nothing when replayed (*inert*: duplicates, or pending updates whose dependencies were
missing) are merged into it losslessly, and ``upto_seq`` is the newest row that did change
something, so inert rows above it stay in the tail and are replayed on every load until
their dependencies arrive. Undecodable rows (never written by this code) are skipped.

A room has several documents (docs/protocol.md, "The room documents"): the main one
(``doc = MAIN_DOC``, the default of every method) and named ones such as ``runs``. Each has
its own rows and snapshots; they share the room id and the one ``seq`` sequence, so rows of
both documents are ordered against each other (playback).

Nothing here talks to the network, and nothing here validates updates: the caller applies
each update to its in-memory ``pycrdt.Doc`` first and stores only what pycrdt accepted (and
what the peer library's writer check let through).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pycrdt import Doc, merge_updates
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from codesync import db
from codesync.models import HISTORY_TABLES, MAIN_DOC, DocumentSnapshot, DocumentUpdate, HistorySettings
from codesync.settings import Settings
from peer.protocol import EMPTY_UPDATE

log = logging.getLogger("codesync.persistence.store")

UPDATES = DocumentUpdate.__table__
SNAPSHOTS = DocumentSnapshot.__table__
SETTINGS = HistorySettings.__table__

SEEK_RATIO = 1.0  # keep a snapshot when the log since the previous kept one is >= this x its size ...
SEEK_ROWS = 8000  # ... or has this many rows (a seek replays at most about this many)
_FETCH_ROWS = 2000  # rows per fetch when streaming a range


def now_ms() -> int:
    return int(time.time() * 1000)


def to_ms(value: datetime | None) -> int:
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


@dataclass(frozen=True)
class Row:
    """One update to append, with its history metadata."""

    data: bytes
    at: int  # epoch ms it arrived
    via: int | None = None  # history_authors.num of the link it came on
    clients: bytes | None = None  # yupdate.encode_ranges(...)


@dataclass(frozen=True)
class StoredDocument:
    """What :meth:`DocumentStore.load` found for a room."""

    update: bytes  # newest snapshot and tail merged into one update (EMPTY_UPDATE when nothing stored)
    snapshot_seq: int  # the newest snapshot's upto_seq (0 without a snapshot)
    log_rows: int  # tail rows (above the newest snapshot)
    log_bytes: int
    last_seq: int  # highest seq seen (snapshot or tail), 0 when nothing stored
    skipped_rows: int = 0  # rows that could not be decoded (never written by us; reported)

    @property
    def empty(self) -> bool:
        return self.snapshot_seq == 0 and self.log_rows == 0


@dataclass(frozen=True)
class Compaction:
    upto_seq: int
    merged_rows: int
    snapshot_bytes: int


@dataclass(frozen=True)
class Snapshot:
    upto_seq: int
    at: int
    data: bytes


class DocumentStore:
    """Room documents in SQL (SQLite or PostgreSQL), through one async engine."""

    def __init__(self, engine: AsyncEngine, *, own_engine: bool = False) -> None:
        self.engine = engine
        self._own_engine = own_engine

    @classmethod
    async def open(cls, settings: Settings) -> "DocumentStore":
        """Engine from settings, migrations applied (idempotent)."""
        engine = db.create_engine(settings)
        try:
            await db.migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, own_engine=True)

    async def close(self) -> None:
        if self._own_engine:
            await self.engine.dispose()

    # ------------------------------------------------------------------ writes
    async def append(
        self,
        room_id: str,
        updates: Sequence[bytes] | Sequence[Row],
        doc: str = MAIN_DOC,
        *,
        also: Callable[[AsyncConnection, list[int]], Awaitable[None]] | None = None,
    ) -> int:
        """Append ``updates`` (bytes, or :class:`Row` with history metadata) in one transaction
        (group commit), one row each; returns the highest seq.

        ``also(conn, seqs)`` runs inside the same transaction once the rows have their seqs
        (the writer keeps the history tables there, so they commit or fail with the rows).
        """
        if not updates:
            return 0
        now = now_ms()
        rows = [u if isinstance(u, Row) else Row(bytes(u), now) for u in updates]
        values = [
            {"room_id": room_id, "doc": doc, "data": r.data, "created_at": from_ms(r.at), "via": r.via,
             "clients": r.clients}
            for r in rows
        ]
        async with self.engine.begin() as conn:
            if len(values) == 1:
                result = await conn.execute(insert(UPDATES).values(**values[0]).returning(UPDATES.c.seq))
                seqs = [int(result.scalar_one())]
            elif conn.dialect.name == "sqlite":
                # SQLite: the transaction holds the database's write lock and AUTOINCREMENT
                # hands out max+1 each time, so one executemany's seqs are consecutive — and
                # plain executemany is ~6x faster than RETURNING row by row.
                await conn.execute(insert(UPDATES), values)
                top = int((await conn.execute(select(func.max(UPDATES.c.seq)))).scalar_one())
                seqs = list(range(top - len(values) + 1, top + 1))
            else:
                result = await conn.execute(
                    insert(UPDATES).returning(UPDATES.c.seq, sort_by_parameter_order=True), values
                )
                seqs = [int(s) for s in result.scalars().all()]
            if also is not None:
                await also(conn, seqs)
            return max(seqs)

    async def compact(self, room_id: str, doc: str = MAIN_DOC) -> Compaction | None:
        """Replay the newest snapshot + the tail into a new snapshot (the rows stay: history).

        Returns None when there is nothing to absorb. Rows that cannot be decoded are left
        out (and reported).
        """
        async with self.engine.begin() as conn:
            snap = await self._newest_snapshot(conn, room_id, doc, for_update=True)
            base = snap.upto_seq if snap else 0
            rows = (
                await conn.execute(
                    select(UPDATES.c.seq, UPDATES.c.data, UPDATES.c.created_at)
                    .where(*_of(room_id, doc), UPDATES.c.seq > base)
                    .order_by(UPDATES.c.seq)
                )
            ).all()
            if not rows:
                return None
            parts = ([snap.data] if snap else []) + [bytes(r.data) for r in rows]
            replay = await asyncio.to_thread(_replay, parts)
            offset = 1 if snap else 0
            if offset and 0 in replay.bad:
                raise StoreCorrupt(f"snapshot of room {room_id} cannot be decoded")
            changed = [i for i in range(offset, len(parts)) if i not in replay.bad and i not in replay.inert]
            if not changed:
                return None
            last = changed[-1]
            upto_row = rows[last - offset]
            # Inert parts below the new upto are part of the state "after every row up to it"
            # (pending structs a Doc does not encode): merged in losslessly.
            keep = {i for i in replay.inert if i < last}
            merged = _with_inert(replay, parts, keep)
            await conn.execute(
                insert(SNAPSHOTS).values(
                    room_id=room_id, doc=doc, upto_seq=upto_row.seq, data=merged, at=to_ms(upto_row.created_at),
                    updated_at=from_ms(now_ms()),
                )
            )
            if snap is not None:
                await self._thin(conn, room_id, doc, snap)
            if replay.bad:
                log.error("room %s: %d undecodable log rows left out of the snapshot", room_id, len(replay.bad))
            merged_rows = sum(1 for i in range(offset, last + 1) if i not in replay.bad)
            return Compaction(upto_seq=upto_row.seq, merged_rows=merged_rows, snapshot_bytes=len(merged))

    async def _thin(self, conn: AsyncConnection, room_id: str, doc: str, prev: Snapshot) -> None:
        """Drop ``prev`` (the snapshot that was newest until now) unless it is a useful seek
        point: the log between the snapshot kept before it and it is at least SEEK_RATIO x
        its size. Snapshots below ``detail_from`` (daily ones) are never dropped here."""
        if prev.upto_seq < await detail_from(conn, room_id):
            return
        below = (
            await conn.execute(
                select(func.max(SNAPSHOTS.c.upto_seq)).where(*_snap_of(room_id, doc), SNAPSHOTS.c.upto_seq < prev.upto_seq)
            )
        ).scalar()
        span_rows, span = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(func.length(UPDATES.c.data)), 0)).where(
                    *_of(room_id, doc), UPDATES.c.seq > (below or 0), UPDATES.c.seq <= prev.upto_seq
                )
            )
        ).one()
        if int(span or 0) < SEEK_RATIO * len(prev.data) and int(span_rows) < SEEK_ROWS:
            await conn.execute(delete(SNAPSHOTS).where(*_snap_of(room_id, doc), SNAPSHOTS.c.upto_seq == prev.upto_seq))

    async def delete_room(self, room_id: str) -> None:
        """Every document of the room and its history."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(UPDATES).where(UPDATES.c.room_id == room_id))
            await conn.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.room_id == room_id))
            for model in HISTORY_TABLES:
                table = model.__table__
                await conn.execute(delete(table).where(table.c.room_id == room_id))

    # ------------------------------------------------------------------ reads
    async def load(self, room_id: str, doc: str = MAIN_DOC) -> StoredDocument:
        """The room's stored document ``doc`` as one update (newest snapshot, then the tail)."""
        async with self.engine.connect() as conn:
            snap = await self._newest_snapshot(conn, room_id, doc)
            rows = (
                await conn.execute(
                    select(UPDATES.c.seq, UPDATES.c.data)
                    .where(*_of(room_id, doc), UPDATES.c.seq > (snap.upto_seq if snap else 0))
                    .order_by(UPDATES.c.seq)
                )
            ).all()
        parts = ([snap.data] if snap else []) + [bytes(r.data) for r in rows]
        if not parts:
            return StoredDocument(EMPTY_UPDATE, 0, 0, 0, 0)
        replay = await asyncio.to_thread(_replay, parts)
        bad = replay.bad
        if snap and 0 in bad:
            raise StoreCorrupt(f"snapshot of room {room_id} cannot be decoded")
        if bad:
            log.error("room %s: skipped %d undecodable log rows while loading", room_id, len(bad))
        merged = _with_inert(replay, parts, replay.inert)
        last = max([snap.upto_seq if snap else 0] + [r.seq for r in rows])
        return StoredDocument(
            update=merged,
            snapshot_seq=snap.upto_seq if snap else 0,
            log_rows=len(rows),
            log_bytes=sum(len(r.data) for r in rows),
            last_seq=last,
            skipped_rows=len(bad),
        )

    async def log_stats(self, room_id: str, doc: str = MAIN_DOC) -> tuple[int, int]:
        """(rows, bytes) of the tail (rows above the newest snapshot) of the room's document ``doc``."""
        async with self.engine.connect() as conn:
            snap = (
                await conn.execute(select(func.max(SNAPSHOTS.c.upto_seq)).where(*_snap_of(room_id, doc)))
            ).scalar()
            row = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(func.length(UPDATES.c.data)), 0)).where(
                        *_of(room_id, doc), UPDATES.c.seq > (snap or 0)
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def _newest_snapshot(
        self, conn: AsyncConnection, room_id: str, doc: str = MAIN_DOC, for_update: bool = False
    ) -> Snapshot | None:
        return await snapshot_at(conn, room_id, doc, None, for_update=for_update)


async def snapshot_at(
    conn: AsyncConnection, room_id: str, doc: str, seq: int | None, *, for_update: bool = False
) -> Snapshot | None:
    """The newest snapshot of ``doc`` with ``upto_seq <= seq`` (any, when ``seq`` is None)."""
    stmt = select(SNAPSHOTS.c.data, SNAPSHOTS.c.upto_seq, SNAPSHOTS.c.at).where(*_snap_of(room_id, doc))
    if seq is not None:
        stmt = stmt.where(SNAPSHOTS.c.upto_seq <= seq)
    stmt = stmt.order_by(SNAPSHOTS.c.upto_seq.desc()).limit(1)
    if for_update and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return Snapshot(int(row.upto_seq), int(row.at or 0), bytes(row.data)) if row else None


async def detail_from(conn: AsyncConnection, room_id: str) -> int:
    """Rows with a seq below this may be gone (retention, "delete history", pre-0004
    compaction); 0 = the room's whole log is there."""
    value = (await conn.execute(select(SETTINGS.c.detail_from).where(SETTINGS.c.room_id == room_id))).scalar()
    return int(value or 0)


def _of(room_id: str, doc: str) -> tuple:
    return UPDATES.c.room_id == room_id, UPDATES.c.doc == doc


def _snap_of(room_id: str, doc: str) -> tuple:
    return SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.doc == doc


class StoreCorrupt(RuntimeError):
    """The stored snapshot cannot be decoded (never written by this code; refuse to guess)."""


@dataclass
class _Replay:
    update: bytes  # the replayed document, encoded (deleted content garbage-collected)
    bad: set[int]  # parts pycrdt could not decode
    inert: set[int]  # non-empty parts that changed nothing: duplicates, or pending (missing deps)


class Replayer:
    """Apply parts in order to one Doc, noting which were undecodable or changed nothing.

    Why not ``merge_updates``: it keeps every deleted character (the rustcode trace stores
    1.37 MB instead of 0.31 MB and loads 16x slower) and its cost grows with the square of the
    number of updates (37k keystrokes: 48 s; replaying them: ~0.1 s). A Doc, though, does not
    encode *pending* structs (whose dependencies are missing); a part that changes nothing when
    applied may be one of those, so callers keep such parts as they are.
    """

    def __init__(self) -> None:
        self.doc = Doc()
        self.count = 0
        self.bad: set[int] = set()
        self.inert: set[int] = set()
        self.inert_parts: list[bytes] = []
        self._changed: list[bool] = []

    def feed(self, parts: Sequence[bytes], keep_inert: bool = False) -> None:
        sub = self.doc.observe(lambda event: self._changed.append(event.update != EMPTY_UPDATE))
        try:
            for part in parts:
                i = self.count
                self.count += 1
                self._changed.clear()
                try:
                    self.doc.apply_update(part)
                except Exception:  # noqa: BLE001 - pycrdt raises ValueError or a Rust panic
                    self.bad.add(i)
                    continue
                if not any(self._changed) and part != EMPTY_UPDATE:
                    self.inert.add(i)
                    if keep_inert:
                        self.inert_parts.append(part)
        finally:
            self.doc.unobserve(sub)

    def encode(self) -> bytes:
        """The state after every part fed so far (kept inert parts merged in)."""
        update = self.doc.get_update()
        return merge_updates(update, *self.inert_parts) if self.inert_parts else update


def _replay(parts: list[bytes]) -> _Replay:
    replayer = Replayer()
    replayer.feed(parts)
    return _Replay(replayer.doc.get_update(), replayer.bad, replayer.inert)


def _with_inert(replay: _Replay, parts: list[bytes], keep: set[int]) -> bytes:
    """The replayed document plus the given inert parts (losslessly, with merge_updates)."""
    extra = [parts[i] for i in sorted(keep)]
    return merge_updates(replay.update, *extra) if extra else replay.update
