"""A room's history in SQL: versions, update ranges, the timeline, checkpoints, export,
deleting history and retention (docs/history.md). No network here.

Reads run beside the writer (SQLite WAL / PostgreSQL MVCC); everything that deletes
(``delete_history``, ``prune``) is run by the room's writer between two commits
(``RoomWriter.exclusive``), so it never races an append or a compaction.

Versions are rebuilt from the newest snapshot at or below the wanted seq plus the rows after
it, replayed into a pycrdt ``Doc`` on the one history thread (:data:`EXECUTOR`): a single
worker bounds both the CPU history takes from live editing and the memory it holds (one
document being rebuilt, one fetch of rows) however many requests arrive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from codesync.models import (
    MAIN_DOC,
    HistoryAuthor,
    HistoryBurst,
    HistoryCheckpoint,
    HistoryClient,
    HistorySettings,
)

from ..workspace import FILES, SOURCE_ID, text_name
from .attribution import Attribution, Author, Binding
from .store import SNAPSHOTS, UPDATES, Replayer, detail_from, from_ms, now_ms, snapshot_at, to_ms
from .timeline import Burst
from .yupdate import decode_ranges

if TYPE_CHECKING:
    from pycrdt import Doc

log = logging.getLogger("codesync.persistence.history")

AUTHORS = HistoryAuthor.__table__
CLIENTS = HistoryClient.__table__
BURSTS = HistoryBurst.__table__
CHECKPOINTS = HistoryCheckpoint.__table__
SETTINGS = HistorySettings.__table__

DOCS = (MAIN_DOC, "runs")  # the documents a version holds (docs/protocol.md, "The room documents")
FETCH_ROWS = 2000  # rows per SELECT when replaying a range
EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
DAY_MS = 86_400_000


class NotKept(LookupError):
    """That point of the history is no longer stored (retention, or history deleted)."""


# ----------------------------------------------------------------------------- dialect helpers
async def _upsert(conn: AsyncConnection, table, rows: list[dict], keys: list[str]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(table)
    columns = [c for c in rows[0] if c not in keys]
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns})
    await conn.execute(stmt, rows)


# ----------------------------------------------------------------------------- loading / writing
async def load_attribution(engine: AsyncEngine, room_id: str) -> Attribution:
    async with engine.connect() as conn:
        authors = (await conn.execute(select(AUTHORS).where(AUTHORS.c.room_id == room_id))).all()
        clients = (
            await conn.execute(
                select(CLIENTS.c.client, CLIENTS.c.author, CLIENTS.c.direct).where(CLIENTS.c.room_id == room_id)
            )
        ).all()
    return Attribution(
        (Author(r.num, r.user_id, r.service, r.name) for r in authors),
        ((int(r.client), Binding(int(r.author), bool(r.direct))) for r in clients),
    )


async def last_burst(engine: AsyncEngine, room_id: str) -> Burst | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(BURSTS).where(BURSTS.c.room_id == room_id).order_by(BURSTS.c.start_seq.desc()).limit(1)
            )
        ).first()
    return _burst(row) if row else None


def _burst(row: Any) -> Burst:
    return Burst(int(row.start_seq), int(row.end_seq), int(row.start_at), int(row.end_at),
                 None if row.client is None else int(row.client), row.via, int(row.updates), int(row.inserted))


async def write_history(
    conn: AsyncConnection,
    room_id: str,
    authors: dict[int, Author],
    clients: dict[int, Binding],
    bursts: Iterable[Burst] = (),
) -> None:
    """Inside the writer's commit: new/renamed authors, changed client bindings, touched bursts."""
    await _upsert(conn, AUTHORS, [
        {"room_id": room_id, "num": a.num, "user_id": a.user_id, "service": a.service, "name": a.name}
        for a in authors.values()
    ], ["room_id", "num"])
    await _upsert(conn, CLIENTS, [
        {"room_id": room_id, "client": c, "author": b.author, "direct": b.direct} for c, b in clients.items()
    ], ["room_id", "client"])
    await _upsert(conn, BURSTS, [
        {"room_id": room_id, "start_seq": b.start_seq, "end_seq": b.end_seq, "start_at": b.start_at,
         "end_at": b.end_at, "client": b.client, "via": b.via, "updates": b.updates, "inserted": b.inserted}
        for b in bursts
    ], ["room_id", "start_seq"])


# ----------------------------------------------------------------------------- bounds
@dataclass(frozen=True)
class Bounds:
    first_seq: int  # 0 when nothing is stored
    last_seq: int
    first_at: int
    last_at: int
    detail_from: int  # exact versions exist from detail_from - 1 on (0: from the start)


async def bounds(engine: AsyncEngine, room_id: str) -> Bounds:
    async with engine.connect() as conn:
        row = (await conn.execute(select(func.min(UPDATES.c.seq), func.max(UPDATES.c.seq)).where(
            UPDATES.c.room_id == room_id))).one()
        first, last = int(row[0] or 0), int(row[1] or 0)
        snap_first = (await conn.execute(select(func.min(SNAPSHOTS.c.upto_seq)).where(
            SNAPSHOTS.c.room_id == room_id))).scalar()
        snap_last = (await conn.execute(select(func.max(SNAPSHOTS.c.upto_seq)).where(
            SNAPSHOTS.c.room_id == room_id))).scalar()
        if snap_first is not None:
            first = min(first, int(snap_first)) if first else int(snap_first)
            last = max(last, int(snap_last))
        first_at = await _at_of(conn, room_id, first)
        last_at = await _at_of(conn, room_id, last)
        df = await detail_from(conn, room_id)
    return Bounds(first, last, first_at, last_at, df)


async def _at_of(conn: AsyncConnection, room_id: str, seq: int) -> int:
    if not seq:
        return 0
    value = (await conn.execute(select(UPDATES.c.created_at).where(UPDATES.c.room_id == room_id,
                                                                   UPDATES.c.seq == seq))).scalar()
    if value is not None:
        return to_ms(value)
    value = (await conn.execute(select(func.max(SNAPSHOTS.c.at)).where(SNAPSHOTS.c.room_id == room_id,
                                                                       SNAPSHOTS.c.upto_seq == seq))).scalar()
    return int(value or 0)


async def seq_at(engine: AsyncEngine, room_id: str, at: int) -> int:
    """The newest seq stored at or before ``at`` (epoch ms); 0 before the first update."""
    async with engine.connect() as conn:
        burst = (await conn.execute(
            select(BURSTS.c.start_seq).where(BURSTS.c.room_id == room_id, BURSTS.c.start_at <= at)
            .order_by(BURSTS.c.start_seq.desc()).limit(1)
        )).scalar()
        after = (await conn.execute(
            select(BURSTS.c.start_seq).where(BURSTS.c.room_id == room_id, BURSTS.c.start_seq > (burst or 0))
            .order_by(BURSTS.c.start_seq).limit(1)
        )).scalar()
        conds = [UPDATES.c.room_id == room_id, UPDATES.c.created_at <= from_ms(at)]
        if burst is not None:
            conds.append(UPDATES.c.seq >= burst)
        if after is not None:
            conds.append(UPDATES.c.seq < after)
        seq = (await conn.execute(select(func.max(UPDATES.c.seq)).where(*conds))).scalar()
        if seq is None:
            # nothing in the log at or before ``at`` (or it was pruned): a daily snapshot?
            seq = (await conn.execute(select(func.max(SNAPSHOTS.c.upto_seq)).where(
                SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.at <= at, SNAPSHOTS.c.at > 0))).scalar()
        return int(seq or 0)


# ----------------------------------------------------------------------------- versions
@dataclass(frozen=True)
class Version:
    seq: int  # the point it shows (may be below the asked one when not exact)
    at: int
    exact: bool
    docs: dict[str, bytes]  # document name ("" = main) -> Yjs update of it as it was


async def version(engine: AsyncEngine, room_id: str, seq: int, *, max_bytes: int | None = None) -> Version:
    """The room's documents as they were after every row up to ``seq``.

    Below ``detail_from - 1`` only (daily) snapshots are left: the newest one at or below
    ``seq`` is returned with ``exact=False``. Raises :class:`NotKept` when nothing that old
    is stored, ``ValueError`` when the result would exceed ``max_bytes``.
    """
    loop = asyncio.get_running_loop()
    async with engine.connect() as conn:
        last = (await conn.execute(select(func.max(UPDATES.c.seq)).where(UPDATES.c.room_id == room_id))).scalar()
        seq = max(0, min(seq, int(last or 0))) if last is not None else max(0, seq)
        df = await detail_from(conn, room_id)
        exact = df == 0 or seq >= df - 1
        if not exact:
            main = await snapshot_at(conn, room_id, MAIN_DOC, seq)
            if main is None:
                raise NotKept(f"no version at or before {seq} is kept")
            seq = main.upto_seq
        docs: dict[str, bytes] = {}
        for name in DOCS:
            snap = await snapshot_at(conn, room_id, name, seq)
            replayer = await loop.run_in_executor(EXECUTOR, Replayer)
            if snap is not None:  # straight in: watching a 1 MB apply costs as much again
                await loop.run_in_executor(EXECUTOR, fast_replay, replayer.doc, [snap.data])
            low = snap.upto_seq if snap is not None else 0
            if exact:
                while True:
                    rows = (await conn.execute(
                        select(UPDATES.c.seq, UPDATES.c.data)
                        .where(UPDATES.c.room_id == room_id, UPDATES.c.doc == name, UPDATES.c.seq > low,
                               UPDATES.c.seq <= seq)
                        .order_by(UPDATES.c.seq).limit(FETCH_ROWS)
                    )).all()
                    if not rows:
                        break
                    await loop.run_in_executor(EXECUTOR, fast_replay, replayer.doc, [bytes(r.data) for r in rows])
                    low = rows[-1].seq
                    if len(rows) < FETCH_ROWS:
                        break
            docs[name] = await loop.run_in_executor(EXECUTOR, replayer.encode)
            if max_bytes is not None and sum(len(d) for d in docs.values()) > max_bytes:
                raise ValueError(f"the version is larger than {max_bytes} bytes")
        at = await _at_of(conn, room_id, seq)
    return Version(seq, at, exact, docs)


def file_text(update: bytes, file_id: str = SOURCE_ID) -> tuple[str, bool]:
    """One file's code in a main-document update, and whether the file existed in it (schema
    v2: an entry of ``files``; a v1 document has only ``source``, the first file's text)."""
    from pycrdt import Doc, Map, Text

    doc = Doc()
    doc.apply_update(update)
    files = doc.get(FILES, type=Map)
    exists = file_id in files if len(files) else file_id == SOURCE_ID
    return (str(doc.get(text_name(file_id), type=Text)) if exists else ""), exists


MERGE_ROWS = 32  # rows merged into one apply while replaying (halves the cost; 256 would double it)


def fast_replay(doc: "Doc", parts: list[bytes]) -> None:
    """Apply log rows in order, merged in small groups.

    Rows the persistence peer wrote are the integrated diffs of transactions (``on_update``),
    never pending, so nothing needs watching here (compaction's replay does watch, and keeps
    pending parts in snapshots). A group that fails to merge or apply is applied row by row,
    skipping undecodable rows as loading does."""
    from pycrdt import merge_updates

    for i in range(0, len(parts), MERGE_ROWS):
        group = parts[i : i + MERGE_ROWS]
        try:
            doc.apply_update(group[0] if len(group) == 1 else merge_updates(*group))
            continue
        except Exception:  # noqa: BLE001 - pycrdt raises ValueError or a Rust panic
            pass
        for part in group:
            try:
                doc.apply_update(part)
            except Exception:  # noqa: BLE001
                log.warning("skipped an undecodable row while rebuilding a version")


# ----------------------------------------------------------------------------- update ranges
@dataclass(frozen=True)
class StoredUpdate:
    seq: int
    at: int
    doc: str
    via: int | None
    ranges: list[tuple[int, int, int]]
    data: bytes


async def updates(engine: AsyncEngine, room_id: str, after: int, *, limit: int, max_bytes: int,
                  until: int | None = None) -> tuple[list[StoredUpdate], bool]:
    """Rows of every document with ``after < seq [<= until]``, in order, at most ``limit``
    rows and about ``max_bytes`` of data (at least one row). Returns (rows, more_after)."""
    conds = [UPDATES.c.room_id == room_id, UPDATES.c.seq > after]
    if until is not None:
        conds.append(UPDATES.c.seq <= until)
    async with engine.connect() as conn:
        result = await conn.stream(
            select(UPDATES.c.seq, UPDATES.c.created_at, UPDATES.c.doc, UPDATES.c.via, UPDATES.c.clients,
                   UPDATES.c.data).where(*conds).order_by(UPDATES.c.seq).limit(limit + 1)
        )
        out: list[StoredUpdate] = []
        size = 0
        more = False
        async for r in result:
            data = bytes(r.data)
            if len(out) >= limit or (out and size + len(data) > max_bytes):
                more = True
                break
            out.append(StoredUpdate(int(r.seq), to_ms(r.created_at), r.doc, r.via, decode_ranges(r.clients), data))
            size += len(data)
        await result.close()
    return out, more


# ----------------------------------------------------------------------------- timeline
async def bursts(engine: AsyncEngine, room_id: str, *, before: int | None, limit: int) -> tuple[list[Burst], bool]:
    """The newest ``limit`` bursts starting below ``before`` (all: None), oldest first."""
    conds = [BURSTS.c.room_id == room_id]
    if before is not None:
        conds.append(BURSTS.c.start_seq < before)
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(BURSTS).where(*conds).order_by(BURSTS.c.start_seq.desc()).limit(limit + 1)
        )).all()
    more = len(rows) > limit
    return [_burst(r) for r in reversed(rows[:limit])], more


@dataclass(frozen=True)
class Checkpoint:
    id: str
    seq: int
    at: int
    name: str
    author: int | None

    def as_json(self) -> dict:
        return {"id": self.id, "seq": self.seq, "at": self.at, "name": self.name, "author": self.author}


async def checkpoints(engine: AsyncEngine, room_id: str, limit: int = 1000) -> list[Checkpoint]:
    async with engine.connect() as conn:
        rows = (await conn.execute(
            select(CHECKPOINTS).where(CHECKPOINTS.c.room_id == room_id).order_by(CHECKPOINTS.c.seq).limit(limit)
        )).all()
    return [Checkpoint(r.id, int(r.seq), int(r.at), r.name, r.author) for r in rows]


async def add_checkpoint(engine: AsyncEngine, room_id: str, checkpoint: Checkpoint, *, max_per_room: int) -> bool:
    async with engine.begin() as conn:
        count = (await conn.execute(select(func.count()).where(CHECKPOINTS.c.room_id == room_id))).scalar()
        if int(count or 0) >= max_per_room:
            return False
        await conn.execute(insert(CHECKPOINTS).values(
            id=checkpoint.id, room_id=room_id, seq=checkpoint.seq, at=checkpoint.at, name=checkpoint.name,
            author=checkpoint.author))
    return True


# ----------------------------------------------------------------------------- policy
async def viewers_read(engine: AsyncEngine, room_id: str) -> bool | None:
    async with engine.connect() as conn:
        return (await conn.execute(select(SETTINGS.c.viewers_read).where(SETTINGS.c.room_id == room_id))).scalar()


async def set_viewers_read(engine: AsyncEngine, room_id: str, value: bool | None) -> None:
    async with engine.begin() as conn:
        await _upsert_settings(conn, room_id, viewers_read=value)


async def _upsert_settings(conn: AsyncConnection, room_id: str, **values: Any) -> None:
    values["updated_at"] = from_ms(now_ms())
    done = await conn.execute(update(SETTINGS).where(SETTINGS.c.room_id == room_id).values(**values))
    if done.rowcount == 0:
        await conn.execute(insert(SETTINGS).values(room_id=room_id, **values))


# ----------------------------------------------------------------------------- export
EXPORT_FORMAT = "codesync-history/1"


def _line(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


async def export_page(engine: AsyncEngine, room_id: str, cursor: str | None, *, max_bytes: int,
                      attribution: Attribution) -> tuple[str, str | None]:
    """One page of the room's history as JSON lines (docs/history.md, "Export") and the cursor
    of the next page (None: done). Pages are pulled one by one: the persistence peer never
    holds more than one page."""
    phase, _, value = (cursor or "meta:").partition(":")
    lines: list[str] = []
    size = 0

    def add(obj: dict) -> bool:
        nonlocal size
        line = _line(obj)
        if lines and size + len(line) > max_bytes:
            return False
        lines.append(line)
        size += len(line)
        return True

    if phase == "meta":
        b = await bounds(engine, room_id)
        add({"type": "room", "format": EXPORT_FORMAT, "room_id": room_id, "exported_at": now_ms(),
             "first_seq": b.first_seq, "last_seq": b.last_seq, "detail_from": b.detail_from})
        for author in sorted(attribution.authors.values(), key=lambda a: a.num):
            add({"type": "author", **author.as_json()})
        for cp in await checkpoints(engine, room_id):
            add({"type": "checkpoint", **cp.as_json()})
        return "".join(lines), "clients:-1"
    if phase == "clients":
        after = int(value)
        for client in sorted(c for c in attribution.clients if c > after):
            b = attribution.clients[client]
            if not add({"type": "client", "client": client, "author": b.author, "direct": b.direct}):
                return "".join(lines), f"clients:{client - 1}"
        return "".join(lines), "snapshots:-1"
    if phase == "snapshots":
        # only snapshots below detail_from carry history the log no longer has (daily ones)
        after = int(value)
        async with engine.connect() as conn:
            df = await detail_from(conn, room_id)
            row = (await conn.execute(
                select(SNAPSHOTS.c.doc, SNAPSHOTS.c.upto_seq, SNAPSHOTS.c.at, SNAPSHOTS.c.data)
                .where(SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.upto_seq > after,
                       SNAPSHOTS.c.upto_seq <= max(df - 1, 0))
                .order_by(SNAPSHOTS.c.upto_seq, SNAPSHOTS.c.doc).limit(1)
            )).first()
        if row is None:
            return "", "updates:0"
        # one snapshot per page (a snapshot can be large); documents sharing an upto_seq follow
        add({"type": "snapshot", "doc": row.doc, "upto_seq": int(row.upto_seq), "at": int(row.at),
             "data": base64.b64encode(bytes(row.data)).decode()})
        async with engine.connect() as conn:
            others = (await conn.execute(
                select(SNAPSHOTS.c.doc, SNAPSHOTS.c.at, SNAPSHOTS.c.data)
                .where(SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.upto_seq == row.upto_seq, SNAPSHOTS.c.doc != row.doc)
            )).all()
        for other in others:
            lines.append(_line({"type": "snapshot", "doc": other.doc, "upto_seq": int(row.upto_seq),
                                "at": int(other.at), "data": base64.b64encode(bytes(other.data)).decode()}))
        return "".join(lines), f"snapshots:{int(row.upto_seq)}"
    if phase == "updates":
        rows, more = await updates(engine, room_id, int(value), limit=5000, max_bytes=max_bytes // 2)
        for r in rows:
            owner = attribution.author_for(_key(r.ranges), r.via)
            lines.append(_line({"type": "update", "seq": r.seq, "at": r.at, "doc": r.doc, "via": r.via,
                                "author": owner, "clients": [list(x) for x in r.ranges],
                                "data": base64.b64encode(r.data).decode()}))
        return "".join(lines), (f"updates:{rows[-1].seq}" if more and rows else None)
    raise ValueError("bad cursor")


def _key(ranges: list[tuple[int, int, int]]) -> int | None:
    from .yupdate import key_client

    return key_client(ranges)


# ----------------------------------------------------------------------------- deleting
@dataclass(frozen=True)
class Pruned:
    upto_seq: int  # rows up to here are gone
    rows: int
    snapshots: int  # snapshots written


async def prune(engine: AsyncEngine, room_id: str, upto: int, *, daily: bool, max_rows: int | None = None) -> Pruned | None:
    """Replace the room's rows up to ``upto`` by snapshots and delete them.

    ``daily=True`` (retention): one snapshot per document per UTC day at that day's last row;
    ``daily=False`` ("delete history"): one snapshot per document at ``upto`` and every older
    snapshot, burst and checkpoint goes too. At most ``max_rows`` rows per call (the caller
    calls again). Run by the room's writer (``RoomWriter.exclusive``): nothing appends meanwhile.
    """
    loop = asyncio.get_running_loop()
    async with engine.begin() as conn:
        df = await detail_from(conn, room_id)
        start = max(df - 1, 0)
        if upto <= start:
            return None
        if max_rows is not None:
            limit_seq = (await conn.execute(
                select(UPDATES.c.seq).where(UPDATES.c.room_id == room_id, UPDATES.c.seq > start,
                                            UPDATES.c.seq <= upto)
                .order_by(UPDATES.c.seq).offset(max_rows - 1).limit(1)
            )).scalar()
            if limit_seq is not None:
                upto = int(limit_seq)
        # One replayer per document, from its newest snapshot at or below the start (every
        # row above that snapshot is still there: the invariant every pruning keeps).
        replayers: dict[str, Replayer] = {}
        last_pos: dict[str, tuple[int, int]] = {}  # doc -> (seq, at) of the last thing fed
        for name in DOCS:
            snap = await snapshot_at(conn, room_id, name, start)
            replayers[name] = await loop.run_in_executor(EXECUTOR, Replayer)
            low = snap.upto_seq if snap else 0
            if snap is not None:
                await loop.run_in_executor(EXECUTOR, replayers[name].feed, [snap.data], True)
                last_pos[name] = (snap.upto_seq, snap.at)
            rows = (await conn.execute(
                select(UPDATES.c.seq, UPDATES.c.created_at, UPDATES.c.data)
                .where(UPDATES.c.room_id == room_id, UPDATES.c.doc == name, UPDATES.c.seq > low,
                       UPDATES.c.seq <= start).order_by(UPDATES.c.seq)
            )).all()
            if rows:
                await loop.run_in_executor(EXECUTOR, replayers[name].feed, [bytes(r.data) for r in rows], True)
                last_pos[name] = (int(rows[-1].seq), to_ms(rows[-1].created_at))
        written: list[tuple[str, int]] = []
        pending: set[str] = set()  # documents fed since the last snapshot was cut
        day: str | None = None
        count = 0
        low = start

        async def cut(names: Iterable[str]) -> None:
            for name in list(names):
                seq, at = last_pos[name]
                data = await loop.run_in_executor(EXECUTOR, replayers[name].encode)
                gone = SNAPSHOTS.c.upto_seq == seq
                if daily:  # one per day: this one replaces any earlier one of the same day
                    day_start = at - at % DAY_MS
                    gone = gone | and_(SNAPSHOTS.c.upto_seq < seq, SNAPSHOTS.c.at >= day_start,
                                       SNAPSHOTS.c.at < day_start + DAY_MS)
                await conn.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.doc == name,
                                                           gone))
                await conn.execute(insert(SNAPSHOTS).values(room_id=room_id, doc=name, upto_seq=seq, data=data, at=at,
                                                            updated_at=from_ms(now_ms())))
                written.append((name, seq))

        while True:
            rows = (await conn.execute(
                select(UPDATES.c.seq, UPDATES.c.doc, UPDATES.c.created_at, UPDATES.c.data)
                .where(UPDATES.c.room_id == room_id, UPDATES.c.seq > low, UPDATES.c.seq <= upto)
                .order_by(UPDATES.c.seq).limit(FETCH_ROWS)
            )).all()
            if not rows:
                break
            for r in rows:
                at = to_ms(r.created_at)
                this_day = datetime.fromtimestamp(at / 1000, timezone.utc).strftime("%Y-%m-%d")
                if daily and day is not None and this_day != day and pending:
                    await cut(pending)
                    pending.clear()
                day = this_day
                if r.doc not in replayers:
                    continue
                await loop.run_in_executor(EXECUTOR, replayers[r.doc].feed, [bytes(r.data)], True)
                last_pos[r.doc] = (int(r.seq), at)
                pending.add(r.doc)
                count += 1
            low = rows[-1].seq
        # daily: the last day's snapshots; delete: one snapshot per document that has content
        await cut(pending if daily else last_pos.keys())
        keep = set(written)
        # snapshots in the pruned range that are not the ones just written (daily: the others
        # of each day; delete: all older ones) go, rows too
        old = (await conn.execute(
            select(SNAPSHOTS.c.doc, SNAPSHOTS.c.upto_seq).where(
                SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.upto_seq <= upto,
                *(() if not daily else (SNAPSHOTS.c.upto_seq > start,)))
        )).all()
        for r in old:
            if (r.doc, int(r.upto_seq)) not in keep:
                await conn.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.doc == r.doc,
                                                           SNAPSHOTS.c.upto_seq == r.upto_seq))
        await conn.execute(delete(UPDATES).where(UPDATES.c.room_id == room_id, UPDATES.c.seq <= upto))
        if not daily:
            await conn.execute(delete(BURSTS).where(BURSTS.c.room_id == room_id))
            await conn.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.room_id == room_id))
        await _upsert_settings(conn, room_id, detail_from=upto + 1)
    return Pruned(upto, count, len(written))


def retention_cutoff(now: int, days: int) -> int:
    """Full detail is kept for the last ``days`` whole UTC days and today."""
    return (now - days * DAY_MS) - (now - days * DAY_MS) % DAY_MS


async def retention_boundary(engine: AsyncEngine, room_id: str, cutoff_ms: int) -> int:
    """The newest seq that arrived before ``cutoff_ms`` (0: none)."""
    async with engine.connect() as conn:
        seq = (await conn.execute(select(func.max(UPDATES.c.seq)).where(
            UPDATES.c.room_id == room_id, UPDATES.c.created_at < from_ms(cutoff_ms)))).scalar()
    return int(seq or 0)


async def last_seq(engine: AsyncEngine, room_id: str, doc: str | None = None) -> int:
    conds = [UPDATES.c.room_id == room_id] + ([UPDATES.c.doc == doc] if doc is not None else [])
    async with engine.connect() as conn:
        seq = (await conn.execute(select(func.max(UPDATES.c.seq)).where(*conds))).scalar()
        if seq is None:
            seq = (await conn.execute(select(func.max(SNAPSHOTS.c.upto_seq)).where(
                SNAPSHOTS.c.room_id == room_id, *([SNAPSHOTS.c.doc == doc] if doc is not None else [])))).scalar()
    return int(seq or 0)


__all__ = [
    "Bounds", "Checkpoint", "NotKept", "Pruned", "StoredUpdate", "Version", "add_checkpoint", "bounds", "bursts",
    "checkpoints", "export_page", "last_burst", "last_seq", "load_attribution", "prune", "retention_boundary",
    "seq_at", "set_viewers_read", "updates", "version", "viewers_read", "write_history",
]
