"""Document storage (peer/persistence/store.py, writer.py) on SQLite and PostgreSQL.

Real databases, real child processes for the crash test (SIGKILL at a random instant, many
times over, while the writer commits and compacts as fast as it can).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path

import pytest
from pycrdt import Array, Doc, Map, Text, merge_updates
from sqlalchemy import insert, select

from peer.persistence.store import DocumentStore, UPDATES, SNAPSHOTS
from peer.protocol import EMPTY_UPDATE
from peer.persistence.writer import RoomWriter, WriterConfig
from peer.protocol import decode_state_vector
from codesync.models import utcnow
from tests.helpers.components import ROOT
from tests.helpers.processes import child_env
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)


def state_vector_total(sv: bytes) -> int:
    """Sum of clocks in a Yjs state vector."""
    return sum(decode_state_vector(sv).values())


def recorder(doc: Doc) -> list[bytes]:
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return updates


@pytest.fixture
async def store(make_settings, database_url):
    s = await DocumentStore.open(make_settings(database_url=database_url))
    try:
        yield s
    finally:
        await s.close()


def text_of(update: bytes) -> str:
    doc = Doc()
    doc.apply_update(update)
    return str(doc.get("source", type=Text))


async def test_empty_room_loads_empty(store: DocumentStore):
    stored = await store.load("nothing-here")
    assert stored.empty and stored.update == EMPTY_UPDATE
    assert text_of(stored.update) == ""
    assert await store.compact("nothing-here") is None


async def test_round_trip_and_compaction(store: DocumentStore):
    doc = Doc()
    updates = recorder(doc)
    text = doc.get("source", type=Text)
    for i in range(60):
        text.insert(len(text), f"line {i}\n")
    await store.append("r1", updates[:1])
    await store.append("r1", updates[1:30])  # one transaction, many rows
    stored = await store.load("r1")
    assert stored.log_rows == 30 and stored.snapshot_seq == 0
    assert text_of(stored.update) == "".join(f"line {i}\n" for i in range(30))

    result = await store.compact("r1")
    assert result is not None and result.merged_rows == 30
    assert await store.log_stats("r1") == (0, 0)
    stored = await store.load("r1")
    assert stored.log_rows == 0 and stored.snapshot_seq == result.upto_seq
    assert text_of(stored.update) == "".join(f"line {i}\n" for i in range(30))

    await store.append("r1", updates[30:])
    stored = await store.load("r1")
    assert stored.log_rows == 30
    assert text_of(stored.update) == str(text)
    second = await store.compact("r1")
    assert second is not None and second.upto_seq > result.upto_seq
    assert text_of((await store.load("r1")).update) == str(text)
    # rooms do not leak into each other
    assert (await store.load("r2")).empty


async def test_named_documents_have_their_own_log_and_snapshot(store: DocumentStore):
    """A room's main document and its ``runs`` document never mix: appends, loads, compactions
    and writers of one leave the other as it was; deleting the room removes both."""
    main, runs = Doc(), Doc()
    main_updates, runs_updates = recorder(main), recorder(runs)
    text = main.get("source", type=Text)
    records = runs.get("runs", type=Map)
    for i in range(12):
        text.insert(len(text), f"line {i}\n")
        records[f"r{i}"] = Map({"status": "finished", "output": Text(f"out {i}")})
    await store.append("room", main_updates)
    await store.append("room", runs_updates, doc="runs")
    assert (await store.log_stats("room")) [0] == 12 and (await store.log_stats("room", "runs"))[0] == 12
    assert text_of((await store.load("room")).update) == str(text)
    loaded = Doc()
    loaded.apply_update((await store.load("room", "runs")).update)
    assert sorted(loaded.get("runs", type=Map).keys()) == sorted(records.keys())
    assert (await store.load("other", "runs")).empty

    compacted = await store.compact("room", "runs")
    assert compacted is not None and compacted.merged_rows == 12
    assert await store.log_stats("room", "runs") == (0, 0)
    assert (await store.log_stats("room"))[0] == 12  # the main document's log is untouched
    async with store.engine.connect() as conn:
        snaps = (await conn.execute(select(SNAPSHOTS.c.doc))).scalars().all()
    assert snaps == ["runs"]
    await store.compact("room")
    stored_runs = Doc()
    stored_runs.apply_update((await store.load("room", "runs")).update)
    assert str(stored_runs.get("runs", type=Map)["r11"]["output"]) == "out 11"
    assert text_of((await store.load("room")).update) == str(text)

    writer = RoomWriter(store, "room", runs, name="runs")
    writer.mark_loaded(await writer.load())
    records["late"] = Map({"status": "queued"})
    writer.submit(runs_updates[-1])
    assert await writer.flush(10)
    await writer.close(compact=False)
    assert (await store.log_stats("room", "runs"))[0] == 1 and (await store.log_stats("room"))[0] == 0

    await store.delete_room("room")
    assert (await store.load("room")).empty and (await store.load("room", "runs")).empty


async def test_undecodable_row_is_reported_not_fatal(store: DocumentStore):
    """A row nobody should ever have written: loading skips it, compaction keeps it aside."""
    doc = Doc()
    updates = recorder(doc)
    doc.get("source", type=Text).insert(0, "kept")
    await store.append("r", updates)
    async with store.engine.begin() as conn:
        await conn.execute(insert(UPDATES).values(room_id="r", data=b"\xff\xfe garbage", created_at=utcnow()))
    stored = await store.load("r")
    assert stored.skipped_rows == 1 and text_of(stored.update) == "kept"
    result = await store.compact("r")
    assert result is not None and result.merged_rows == 1
    assert (await store.log_stats("r"))[0] == 1  # the bad row stays for a human to look at
    assert text_of((await store.load("r")).update) == "kept"


async def test_pending_updates_survive_compaction(store: DocumentStore):
    """An update whose dependencies are missing is kept until they arrive — never compacted away."""
    doc = Doc()
    updates = recorder(doc)
    text = doc.get("source", type=Text)
    text.insert(0, "abc")
    text.insert(3, "def")
    text.insert(6, "ghi")
    first, second, third = updates
    await store.append("p", [first, third])  # "def" missing: "ghi" is pending
    assert text_of((await store.load("p")).update) == "abc"
    assert (await store.compact("p")).merged_rows == 1
    assert await store.log_stats("p") == (1, len(third)), "the pending row must stay in the log"
    await store.append("p", [second])
    assert text_of((await store.load("p")).update) == "abcdefghi"
    await store.compact("p")
    assert text_of((await store.load("p")).update) == "abcdefghi"


async def test_compaction_keeps_the_document_and_drops_deleted_text(store: DocumentStore):
    doc = Doc()
    updates = recorder(doc)
    text = doc.get("source", type=Text)
    for i in range(300):
        text.insert(len(text), "x" * 50)
        if i % 2:
            del text[0:50]
    await store.append("gc", updates)
    await store.compact("gc")
    after = (await store.load("gc")).update
    assert text_of(after) == str(text)
    assert len(after) < len(merge_updates(*updates)) / 2, "deleted text was stored in the snapshot"


async def test_writer_group_commits_and_reports_saved(store: DocumentStore):
    source = Doc()
    updates = recorder(source)
    items = source.get("items", type=Array)
    for i in range(2000):
        items.append(i)

    doc = Doc()
    seen = []
    writer = RoomWriter(store, "g", doc, config=WriterConfig(compact_rows=5), on_saved=lambda s: seen.append(s.status))
    await writer.load_into_doc()
    for i, u in enumerate(updates):
        writer.accept(u)
        if i % 20 == 0:
            await asyncio.sleep(0.001)
    assert await writer.flush(30)
    assert writer.state.status == "saved" and writer.state.stored_updates == 2000
    assert 5 < writer.state.commits < 2000 / 5, "updates were not grouped into transactions"
    assert "saving" in seen and seen[-1] == "saved"
    assert writer.state.state_vector == doc.get_state() == source.get_state()
    assert writer.stats.compactions >= 1
    await writer.close()

    loaded = Doc()
    loaded.apply_update((await store.load("g")).update)
    assert list(loaded.get("items", type=Array)) == list(range(2000))


async def test_writer_never_stores_rejected_updates(store: DocumentStore):
    doc = Doc()
    writer = RoomWriter(store, "bad", doc)
    await writer.load_into_doc()
    good = Doc()
    updates = recorder(good)
    good.get("meta", type=Map)["language"] = "python"
    for junk in [b"", b"\x01", b"\xff" * 40, updates[0][: len(updates[0]) // 2]]:
        with pytest.raises(ValueError):
            writer.accept(junk)
    writer.accept(updates[0])
    assert await writer.flush(10)
    await writer.close(compact=False)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(UPDATES.c.data).where(UPDATES.c.room_id == "bad"))).all()
    assert [bytes(r.data) for r in rows] == [updates[0]]


async def test_writer_stops_when_lease_is_lost(store: DocumentStore):
    allowed = True
    doc = Doc()
    writer = RoomWriter(store, "lease", doc, may_write=lambda: allowed)
    await writer.load_into_doc()
    writer.accept(_item_update(doc, 1))
    assert await writer.flush(10)
    allowed = None  # a renewal running late: wait, do not write, do not give up
    writer.accept(_item_update(doc, 1.5))
    assert not await writer.flush(0.3)
    assert writer.failed is None and writer.state.status == "saving"
    allowed = True
    assert await writer.flush(10)
    allowed = False
    writer.accept(_item_update(doc, 2))
    assert await writer.flush(10)
    assert writer.failed is not None and writer.state.status == "error"
    with pytest.raises(RuntimeError):
        writer.submit(b"\x00\x00")
    await writer.close()
    loaded = Doc()
    loaded.apply_update((await store.load("lease")).update)
    assert list(loaded.get("items", type=Array)) == [1, 1.5]


def _item_update(doc: Doc, value) -> bytes:
    before = doc.get_state()
    doc.get("items", type=Array).append(value)
    return doc.get_update(before)


CRASH_WRITER = r'''
import asyncio, sys
from pycrdt import Array, Doc
from sqlalchemy.ext.asyncio import create_async_engine
from peer.persistence.store import DocumentStore
from peer.persistence.writer import RoomWriter, WriterConfig
from codesync import db
from codesync.settings import Settings

def total(sv):
    def rd(pos):
        v = s = 0
        while True:
            b = sv[pos]; pos += 1; v |= (b & 0x7F) << s; s += 7
            if b < 0x80: return v, pos
    n, pos = rd(0); t = 0
    for _ in range(n):
        _, pos = rd(pos); c, pos = rd(pos); t += c
    return t

async def main(url, room):
    store = await DocumentStore.open(Settings(database_url=url, data_dir=sys.argv[3]))
    doc = Doc()
    writer = RoomWriter(store, room, doc, config=WriterConfig(compact_rows=3, linger=0),
                        on_saved=lambda s: print("committed", total(s.state_vector), flush=True))
    await writer.load_into_doc()
    items = doc.get("items", type=Array)
    start = len(items)
    assert list(items) == list(range(start)), "loaded document is not a prefix"
    print("start", start, flush=True)
    for i in range(start, start + 1_000_000):
        before = doc.get_state()
        items.append(i)
        writer.submit(doc.get_update(before))
        if i % 7 == 0:
            await asyncio.sleep(0.001)

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''


async def test_sigkill_mid_stream_leaves_a_loadable_prefix(store: DocumentStore, tmp_path: Path):
    """A writer process killed at random instants (appending and compacting every few commits)."""
    script = tmp_path / "crash_writer.py"
    script.write_text(CRASH_WRITER)
    url = str(store.engine.url.render_as_string(hide_password=False))
    rng = random.Random(4)
    expected_min = 0
    for round_no in range(4):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), url, "crash", str(tmp_path / "data"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(PYTHONPATH=str(ROOT)), cwd=ROOT,
        )
        last_committed = 0
        start = None
        target = rng.randint(150, 900)
        try:
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, f"writer exited early: {(await proc.stderr.read()).decode()[-3000:]}"
                word, value = line.decode().split()
                if word == "start":
                    assert int(value) >= expected_min, "a restart lost committed items"
                    start = int(value)
                elif start is not None:  # (the load itself also reports "committed")
                    last_committed = int(value)
                    if last_committed >= start + target:
                        break
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        stored = await store.load("crash")
        doc = Doc()
        doc.apply_update(stored.update)
        items = list(doc.get("items", type=Array))
        assert items == list(range(len(items))), f"round {round_no}: stored document is not a prefix"
        assert len(items) >= last_committed, f"round {round_no}: lost committed items"
        assert state_vector_total(doc.get_state()) == len(items)
        expected_min = len(items)
    async with store.engine.connect() as conn:
        snap = (await conn.execute(select(SNAPSHOTS.c.upto_seq).where(SNAPSHOTS.c.room_id == "crash"))).first()
    assert snap is not None, "the writer never compacted — the test did not exercise compaction"


async def test_writer_survives_a_locked_database_and_reports_it(tmp_path: Path):
    """Commits fail while another process holds the SQLite write lock; nothing is lost."""
    import sqlite3

    from sqlalchemy.ext.asyncio import create_async_engine

    from codesync import db as sdb

    path = tmp_path / "locked.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    await sdb.migrate(engine)
    store = DocumentStore(engine, own_engine=True)
    statuses: list[str] = []
    doc = Doc()
    writer = RoomWriter(store, "locked", doc, config=WriterConfig(retry_max=0.2),
                        on_saved=lambda s: statuses.append(s.status))
    await writer.load_into_doc()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        writer.accept(_item_update(doc, "a"))
        writer.accept(_item_update(doc, "b"))
        await wait_for(lambda: writer.state.status == "error", 10, what="the error status")
        assert "locked" in (writer.state.error or "")
        assert writer.state.as_awareness()["status"] == "error"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await writer.flush(10)
    assert writer.state.status == "saved" and writer.state.error is None
    await writer.close()
    loaded = Doc()
    loaded.apply_update((await store.load("locked")).update)
    assert list(loaded.get("items", type=Array)) == ["a", "b"]
    await store.close()
