"""Durable storage of room documents: an append-only update log plus a compacted snapshot.

Why this shape: a Yjs update is only ever *added* to a document, so the cheapest durable
write is an INSERT of the new bytes (``document_updates``), batched by the caller into one
transaction (group commit). Loading replays snapshot + log; to keep loading cheap the log is
periodically *compacted*: snapshot and log rows are replayed into a pycrdt ``Doc`` whose
encoding becomes the new snapshot, and exactly those rows are deleted — in ONE transaction, so a crash at any
instant leaves either the old snapshot with the full log or the new snapshot with the rest
of the log. Both load to the same document.

Loading reads *every* remaining log row of the room, not only rows above the snapshot's
``upto_seq``: rows are deleted only together with the snapshot that absorbed them, so every
row still present is needed (or harmless: applying a Yjs update twice is a no-op). That
makes the store indifferent to sequence reuse (SQLite rowids) and to commit order.

A room has several documents (docs/protocol.md, "The room documents"): the main one
(``doc = MAIN_DOC``, the default of every method) and named ones such as ``runs``. Each has
its own log and snapshot; they share nothing but the room id.

Nothing here talks to the network, and nothing here validates updates: the caller applies
each update to its in-memory ``pycrdt.Doc`` first and stores only what pycrdt accepted (and
what the peer library's writer check let through).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pycrdt import Doc, merge_updates
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from codesync import db
from codesync.models import MAIN_DOC, DocumentSnapshot, DocumentUpdate, utcnow
from codesync.settings import Settings

log = logging.getLogger("codesync.persistence.store")

UPDATES = DocumentUpdate.__table__
SNAPSHOTS = DocumentSnapshot.__table__

# An empty Yjs update (no structs, empty delete set): what an empty document encodes to.
EMPTY_UPDATE = b"\x00\x00"
_DELETE_CHUNK = 500  # seqs per DELETE ... IN (...) statement (bound-parameter limits)


@dataclass(frozen=True)
class StoredDocument:
    """What :meth:`DocumentStore.load` found for a room."""

    update: bytes  # snapshot and log merged into one update (EMPTY_UPDATE when nothing stored)
    snapshot_seq: int  # the snapshot's upto_seq (0 without a snapshot)
    log_rows: int  # log rows not yet compacted
    log_bytes: int
    last_seq: int  # highest seq seen (snapshot or log), 0 when nothing stored
    skipped_rows: int = 0  # rows that could not be decoded (never written by us; reported)

    @property
    def empty(self) -> bool:
        return self.snapshot_seq == 0 and self.log_rows == 0


@dataclass(frozen=True)
class Compaction:
    upto_seq: int
    merged_rows: int
    snapshot_bytes: int


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
    async def append(self, room_id: str, updates: Sequence[bytes], doc: str = MAIN_DOC) -> int:
        """Append ``updates`` in one transaction (group commit); returns the highest seq."""
        if not updates:
            return 0
        now = utcnow()
        async with self.engine.begin() as conn:
            if len(updates) == 1:
                result = await conn.execute(
                    insert(UPDATES)
                    .values(room_id=room_id, doc=doc, data=updates[0], created_at=now)
                    .returning(UPDATES.c.seq)
                )
                return int(result.scalar_one())
            await conn.execute(
                insert(UPDATES), [{"room_id": room_id, "doc": doc, "data": u, "created_at": now} for u in updates]
            )
            result = await conn.execute(select(func.max(UPDATES.c.seq)).where(*_of(room_id, doc)))
            return int(result.scalar_one() or 0)

    async def compact(self, room_id: str, doc: str = MAIN_DOC) -> Compaction | None:
        """Merge snapshot + log into a new snapshot and delete the merged rows, atomically.

        Returns None when the log is empty. Rows that cannot be decoded are left in place
        (and reported) rather than silently dropped.
        """
        async with self.engine.begin() as conn:
            snap = await self._snapshot(conn, room_id, doc, for_update=True)
            rows = (
                await conn.execute(
                    select(UPDATES.c.seq, UPDATES.c.data).where(*_of(room_id, doc)).order_by(UPDATES.c.seq)
                )
            ).all()
            if not rows:
                return None
            parts = ([snap[0]] if snap else []) + [bytes(r.data) for r in rows]
            replay = await asyncio.to_thread(_replay, parts)
            offset = 1 if snap else 0
            if offset and 0 in replay.bad:
                raise StoreCorrupt(f"snapshot of room {room_id} cannot be decoded")
            # Undecodable and inert log rows stay in the log (inert ones are re-applied on every
            # load, harmlessly); an inert snapshot is carried into the new one.
            bad_seqs = {rows[i - offset].seq for i in replay.bad | replay.inert if i >= offset}
            merged_seqs = [r.seq for r in rows if r.seq not in bad_seqs]
            if not merged_seqs:
                return None
            merged = _with_inert(replay, parts, {0} & replay.inert if offset else set())
            upto = max(max(merged_seqs), snap[1] if snap else 0)
            values = {"data": merged, "upto_seq": upto, "updated_at": utcnow()}
            if snap:
                await conn.execute(update(SNAPSHOTS).where(*_snap_of(room_id, doc)).values(**values))
            else:
                await conn.execute(insert(SNAPSHOTS).values(room_id=room_id, doc=doc, **values))
            for i in range(0, len(merged_seqs), _DELETE_CHUNK):
                chunk = merged_seqs[i : i + _DELETE_CHUNK]
                await conn.execute(delete(UPDATES).where(*_of(room_id, doc), UPDATES.c.seq.in_(chunk)))
            if replay.bad:
                log.error("room %s: %d undecodable log rows kept out of the snapshot", room_id, len(replay.bad))
            return Compaction(upto_seq=upto, merged_rows=len(merged_seqs), snapshot_bytes=len(merged))

    async def delete_room(self, room_id: str) -> None:
        """Every document of the room."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(UPDATES).where(UPDATES.c.room_id == room_id))
            await conn.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.room_id == room_id))

    # ------------------------------------------------------------------ reads
    async def load(self, room_id: str, doc: str = MAIN_DOC) -> StoredDocument:
        """The room's stored document ``doc`` as one update (snapshot then log, merged)."""
        async with self.engine.connect() as conn:
            snap = await self._snapshot(conn, room_id, doc)
            rows = (
                await conn.execute(
                    select(UPDATES.c.seq, UPDATES.c.data).where(*_of(room_id, doc)).order_by(UPDATES.c.seq)
                )
            ).all()
        parts = ([snap[0]] if snap else []) + [bytes(r.data) for r in rows]
        if not parts:
            return StoredDocument(EMPTY_UPDATE, 0, 0, 0, 0)
        replay = await asyncio.to_thread(_replay, parts)
        bad = replay.bad
        if snap and 0 in bad:
            raise StoreCorrupt(f"snapshot of room {room_id} cannot be decoded")
        if bad:
            log.error("room %s: skipped %d undecodable log rows while loading", room_id, len(bad))
        merged = _with_inert(replay, parts, replay.inert)
        last = max([snap[1] if snap else 0] + [r.seq for r in rows])
        return StoredDocument(
            update=merged,
            snapshot_seq=snap[1] if snap else 0,
            log_rows=len(rows),
            log_bytes=sum(len(r.data) for r in rows),
            last_seq=last,
            skipped_rows=len(bad),
        )

    async def log_stats(self, room_id: str, doc: str = MAIN_DOC) -> tuple[int, int]:
        """(rows, bytes) in the uncompacted log of the room's document ``doc``."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(func.length(UPDATES.c.data)), 0)).where(
                        *_of(room_id, doc)
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def _snapshot(
        self, conn: AsyncConnection, room_id: str, doc: str = MAIN_DOC, for_update: bool = False
    ) -> tuple[bytes, int] | None:
        stmt = select(SNAPSHOTS.c.data, SNAPSHOTS.c.upto_seq).where(*_snap_of(room_id, doc))
        if for_update and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).first()
        return (bytes(row.data), int(row.upto_seq)) if row else None


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


def _replay(parts: list[bytes]) -> _Replay:
    """Apply the parts in order to a fresh Doc and encode it.

    Why not ``merge_updates``: it keeps every deleted character (the rustcode trace stores
    1.37 MB instead of 0.31 MB and loads 16x slower) and its cost grows with the square of the
    number of updates (37k keystrokes: 48 s; replaying them: ~0.1 s). A Doc, though, does not
    encode *pending* structs (whose dependencies are missing); a part that changes nothing when
    applied may be one of those, so the caller keeps such parts as they are.
    """
    doc = Doc()
    changed: list[bool] = []
    sub = doc.observe(lambda event: changed.append(event.update != EMPTY_UPDATE))
    bad: set[int] = set()
    inert: set[int] = set()
    try:
        for i, part in enumerate(parts):
            changed.clear()
            try:
                doc.apply_update(part)
            except Exception:  # noqa: BLE001 - pycrdt raises ValueError or a Rust panic
                bad.add(i)
                continue
            if not any(changed) and part != EMPTY_UPDATE:
                inert.add(i)
    finally:
        doc.unobserve(sub)
    return _Replay(doc.get_update(), bad, inert)


def _with_inert(replay: _Replay, parts: list[bytes], keep: set[int]) -> bytes:
    """The replayed document plus the given inert parts (losslessly, with merge_updates)."""
    extra = [parts[i] for i in sorted(keep)]
    return merge_updates(replay.update, *extra) if extra else replay.update
