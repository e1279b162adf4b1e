"""History storage without the network (peer/persistence/history.py, store.py, writer.py,
yupdate.py, attribution.py, timeline.py) on SQLite and PostgreSQL: client ranges read from
updates, versions at any point across compactions, retention into daily snapshots, "delete
history", snapshots in proportion to the log, the migration from a pre-history database."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from alembic import command
from pycrdt import Array, Doc, Map, Text
from sqlalchemy import func, select

from tests.helpers.traces import load_trace, replay
from peer.persistence import history as h
from peer.persistence.attribution import Attribution, Binding
from peer.persistence.store import SNAPSHOTS, UPDATES, DocumentStore, Row
from peer.persistence.timeline import BURST_GAP_MS, BurstBuilder, Entry, sessions
from peer.persistence.writer import RoomWriter, WriterConfig
from peer.persistence.yupdate import decode_ranges, encode_ranges, inserted_ranges, key_client
from peer.protocol import decode_state_vector
from peer.rights import Principal
from codesync import db
from codesync.models import MAIN_DOC

pytestmark = pytest.mark.timeout(300)

DAY = 86_400_000


@pytest.fixture
async def store(make_settings, database_url):
    s = await DocumentStore.open(make_settings(database_url=database_url))
    try:
        yield s
    finally:
        await s.close()


def text_of(update: bytes, name: str = "source") -> str:
    doc = Doc()
    doc.apply_update(update)
    return str(doc.get(name, type=Text))


def recorder(doc: Doc) -> list[bytes]:
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    return updates


# ----------------------------------------------------------------------------- pure parts
def test_inserted_ranges_match_the_state_vectors_pycrdt_reports():
    """Every kind of content, non-ASCII text (UTF-16 lengths), maps, nested types, formatting,
    deletions, and updates exchanged between documents: the ranges read from an update are
    exactly what its transaction added to the document's state vector."""
    rng = random.Random(7)
    docs = [Doc() for _ in range(3)]
    checked = 0
    for _ in range(2500):
        doc = rng.choice(docs)
        seen: list[tuple[bytes, dict, dict]] = []
        sub = doc.observe(lambda e: seen.append((e.update, decode_state_vector(e.before_state),
                                                 decode_state_vector(e.after_state))))
        text, meta, items = doc.get("source", type=Text), doc.get("meta", type=Map), doc.get("arr", type=Array)
        word = rng.choice(["a", "é", "😀x", "日本語", "\n", "tab\there"])
        r = rng.random()
        with doc.transaction():
            if r < 0.35:
                text.insert(len(text), word)
            elif r < 0.45 and len(text):
                del text[0:1]
            elif r < 0.55:
                meta[rng.choice("abc")] = rng.choice([1, 2.5, None, True, "x", [1, {"k": [None, "é"]}], -7, 2**40])
            elif r < 0.65:
                items.append(rng.choice([1, "s", Map({"q": 1}), Text("nested😀"), Array([1, 2])]))
            elif r < 0.75 and len(str(text)):
                text.format(0, 1, {"bold": True})
            else:
                text.insert(len(text), word, {"stream": "stderr"})
        doc.unobserve(sub)
        if rng.random() < 0.3:
            a, b = rng.sample(docs, 2)
            sub = b.observe(lambda e: seen.append((e.update, decode_state_vector(e.before_state),
                                                   decode_state_vector(e.after_state))))
            b.apply_update(a.get_update(b.get_state()))
            b.unobserve(sub)
        for update, before, after in seen:
            expected = sorted((c, before.get(c, 0), after[c]) for c in after if after[c] > before.get(c, 0))
            assert sorted(inserted_ranges(update)) == expected
            checked += 1
    assert checked > 2500
    ranges = [(2**53 - 1, 0, 5), (7, 300, 301)]
    assert decode_ranges(encode_ranges(ranges)) == ranges and key_client(ranges) == 2**53 - 1


def test_inserted_ranges_refuse_garbage_with_value_error_only():
    doc = Doc()
    updates = recorder(doc)
    doc.get("source", type=Text).insert(0, "hello 😀")
    doc.get("meta", type=Map)["k"] = {"nested": [1, 2, {"x": None}]}
    rng = random.Random(3)
    for update in updates:
        for cut in range(len(update)):
            try:
                inserted_ranges(update[:cut])
            except ValueError:
                pass
        for _ in range(300):
            mangled = bytearray(update)
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            try:
                inserted_ranges(bytes(mangled))
            except ValueError:
                pass
    assert inserted_ranges(b"\x00\x00") == []


def test_attribution_first_direct_binding_wins_and_replaces_a_provisional_one():
    at = Attribution()
    alice = at.author_of(Principal(user_id="a", name="Alice", role="owner"))
    bob = at.author_of(Principal(user_id="b", name="Bob", role="editor"))
    assert at.author_of(Principal(user_id="a", name="Alice", role="editor")) == alice  # roles do not matter
    at.observe([(100, 0, 5)], via=bob)  # first seen through bob's link: bob's, for now
    assert at.owner(100) == bob and not at.clients[100].direct
    assert at.claim(100, alice)  # alice announced it on her own link
    assert at.owner(100) == alice and at.clients[100].direct
    assert not at.claim(100, bob)  # nobody takes a direct binding away
    at.observe([(100, 5, 9)], via=bob)  # a relay changes nothing
    assert at.owner(100) == alice
    assert at.author_for(None, bob) == bob  # delete-only updates: whoever delivered them
    assert at.author_of(Principal(user_id="a", name="Alice Liddell", role="owner")) == alice
    authors, clients = at.take_dirty()
    assert authors[alice].name == "Alice Liddell" and clients[100] == Binding(alice, True)
    at.written(authors, clients)
    assert not at.dirty_authors and not at.dirty_clients
    assert at.author_of(Principal(service="runner")) not in (alice, bob)


def test_bursts_follow_one_author_and_pauses():
    owners = {1: 10, 2: 20}
    builder = BurstBuilder(None, lambda client, via: owners.get(client, via))
    t = 1_000_000
    entries = [Entry(1, t, 1, 10, 3, 10), Entry(2, t + 1000, 1, 10, 2, 10), Entry(3, t + 2000, None, 10, 0, 10),
               Entry(4, t + 2500, 2, 10, 1, 20), Entry(5, t + 2500 + BURST_GAP_MS + 1, 2, 20, 1, 20)]
    current, touched = builder.plan(entries[:3])
    assert builder.current is None  # nothing adopted before the commit
    builder.adopt(current)
    current, touched = builder.plan(entries[3:])
    builder.adopt(current)
    assert [(b.start_seq, b.end_seq) for b in touched] == [(4, 4), (5, 5)]
    assert current.start_seq == 5 and current.updates == 1
    first = BurstBuilder(None, lambda c, v: owners.get(c, v)).plan(entries[:3])[0]
    assert (first.start_seq, first.end_seq, first.updates, first.inserted) == (1, 3, 3, 5)
    groups = sessions([first, *touched])
    assert len(groups) == 1 and len(groups[0].bursts) == 3


# ----------------------------------------------------------------------------- versions
async def test_every_point_of_a_trace_reopens_exactly_across_compactions(store: DocumentStore):
    trace = load_trace("sveltecomponent")
    doc = Doc()
    text = doc.get("source", type=Text)
    attribution = Attribution()
    via = attribution.author_of(Principal(user_id="u1", name="U", role="editor"))
    writer = RoomWriter(store, "trace", Doc(), config=WriterConfig(compact_rows=40, linger=0),
                        attribution=attribution)
    await writer.load_into_doc()
    updates = recorder(doc)
    states = []
    for i, content in enumerate(replay(text, trace, 2500)):
        writer.accept(updates[-1], via)
        states.append(content)
        if i % 100 == 99:
            assert await writer.flush(30)  # a commit (and a compaction) every 100 updates
    assert await writer.flush(60)
    assert writer.stats.compactions >= 10
    async with store.engine.connect() as conn:
        seqs = [r.seq for r in (await conn.execute(
            select(UPDATES.c.seq).where(UPDATES.c.room_id == "trace").order_by(UPDATES.c.seq))).all()]
        snaps = (await conn.execute(select(SNAPSHOTS.c.upto_seq, func.length(SNAPSHOTS.c.data)).where(
            SNAPSHOTS.c.room_id == "trace"))).all()
        log_bytes = (await conn.execute(select(func.sum(func.length(UPDATES.c.data))).where(
            UPDATES.c.room_id == "trace"))).scalar()
    assert len(seqs) == 2500, "one row per update"
    # snapshots are kept in proportion to the log: at most ~1/SEEK_RATIO of it, plus the newest
    newest = max(snaps)[1]
    assert sum(size for _, size in snaps) - newest <= 2.2 * log_bytes
    assert 1 < len(snaps) < writer.stats.compactions
    rng = random.Random(1)
    for i in sorted(rng.sample(range(2500), 40)) + [0, 2499]:
        version = await h.version(store.engine, "trace", seqs[i])
        assert version.exact and version.seq == seqs[i]
        assert text_of(version.docs[MAIN_DOC]) == states[i], f"version after update {i}"
    rows, more = await h.updates(store.engine, "trace", seqs[99], limit=50, max_bytes=10**6)
    assert [r.seq for r in rows] == seqs[100:150] and more
    assert all(r.via == via and r.ranges for r in rows)
    bursts, _ = await h.bursts(store.engine, "trace", before=None, limit=500)
    assert sum(b.updates for b in bursts) == 2500 and all(b.client == doc.client_id for b in bursts)
    await writer.close()


async def test_retention_keeps_daily_snapshots_and_recent_detail(store: DocumentStore):
    """Five days of editing, retention at two days: older updates become one snapshot per day
    (per document), the last two days stay exact, and loading never changes."""
    doc, runs = Doc(), Doc()
    text, records = doc.get("source", type=Text), runs.get("runs", type=Map)
    main_updates, runs_updates = recorder(doc), recorder(runs)
    start = int(datetime(2026, 12, 1, 9, tzinfo=timezone.utc).timestamp() * 1000)
    day_end_text: dict[int, str] = {}
    expected: dict[int, str] = {}
    for day in range(5):
        for i in range(30):
            at = start + day * DAY + i * 60_000
            text.insert(len(text), f"d{day}l{i}\n")
            await store.append("ret", [Row(main_updates[-1], at, 1, encode_ranges(inserted_ranges(main_updates[-1])))])
            if i % 10 == 0:
                records[f"r{day}{i}"] = "done"
                await store.append("ret", [Row(runs_updates[-1], at + 1, 2)], doc="runs")
            if i == 15 and day == 2:
                del text[0:10]
                await store.append("ret", [Row(main_updates[-1], at + 2, 1)])
            expected[await h.last_seq(store.engine, "ret")] = str(text)
        day_end_text[day] = str(text)
        if day % 2:
            await store.compact("ret")
    before = text_of((await store.load("ret")).update)
    cutoff = start + 3 * DAY  # days 0..2 go
    upto = await h.retention_boundary(store.engine, "ret", cutoff)
    async with store.engine.connect() as conn:
        old_rows = (await conn.execute(select(func.count()).select_from(UPDATES).where(
            UPDATES.c.room_id == "ret", UPDATES.c.seq <= upto))).scalar()
    assert old_rows == 3 * 30 + 1 + 3 * 3  # days 0..2: typing, one deletion, runs
    total = 0
    while True:  # in passes of at most 40 rows, as the writer does
        pruned = await h.prune(store.engine, "ret", upto, daily=True, max_rows=40)
        if pruned is None:
            break
        total += pruned.rows
    assert total == old_rows
    assert text_of((await store.load("ret")).update) == before == str(text)
    runs_loaded = Doc()
    runs_loaded.apply_update((await store.load("ret", "runs")).update)
    assert sorted(runs_loaded.get("runs", type=Map).keys()) == sorted(records.keys())
    bounds = await h.bounds(store.engine, "ret")
    assert bounds.detail_from == upto + 1
    async with store.engine.connect() as conn:
        first_daily = (await conn.execute(select(func.min(SNAPSHOTS.c.upto_seq)).where(
            SNAPSHOTS.c.room_id == "ret", SNAPSHOTS.c.doc == ""))).scalar()
    for seq, content in expected.items():
        if seq < first_daily:  # before the end of the first pruned day: nothing is kept
            with pytest.raises(h.NotKept):
                await h.version(store.engine, "ret", seq)
            continue
        version = await h.version(store.engine, "ret", seq)
        if seq >= upto:
            assert version.exact and text_of(version.docs[MAIN_DOC]) == content
        else:  # the day's last state, at or before the asked point
            assert not version.exact and version.seq <= seq
            assert text_of(version.docs[MAIN_DOC]) in day_end_text.values()
            day = int(text_of(version.docs[MAIN_DOC]).rsplit("d", 1)[1][0])
            assert text_of(version.docs[MAIN_DOC]) == day_end_text[day]
    async with store.engine.connect() as conn:
        old = (await conn.execute(select(SNAPSHOTS.c.doc, SNAPSHOTS.c.at).where(
            SNAPSHOTS.c.room_id == "ret", SNAPSHOTS.c.upto_seq <= upto))).all()
    days = {(d, datetime.fromtimestamp(at / 1000, timezone.utc).date()) for d, at in old}
    assert len(days) == len(old) == 6, "one snapshot per document per pruned day"


async def test_the_writer_stores_attribution_and_bursts_with_the_rows_and_retries_cleanly(store: DocumentStore):
    doc = Doc()
    attribution = Attribution()
    alice = attribution.author_of(Principal(user_id="alice", name="Alice", role="owner"))
    writer = RoomWriter(store, "att", doc, config=WriterConfig(linger=0), attribution=attribution)
    await writer.load_into_doc()
    src = Doc()
    updates = recorder(src)
    attribution.claim(src.client_id, alice)
    for ch in "hello":
        src.get("source", type=Text).insert(len(src.get("source", type=Text)), ch)
        writer.accept(updates[-1], alice)
    assert await writer.flush(10)
    loaded = await h.load_attribution(store.engine, "att")
    assert loaded.clients[src.client_id] == Binding(alice, True) and loaded.authors[alice].user_id == "alice"
    bursts, _ = await h.bursts(store.engine, "att", before=None, limit=10)
    assert len(bursts) == 1 and bursts[0].updates == 5 and bursts[0].inserted == 5
    # a failing commit is retried with the same rows: the burst counts them once
    real_append = store.append
    failures = 2

    async def flaky(*args, **kw):
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("database went away")
        return await real_append(*args, **kw)

    store.append = flaky  # type: ignore[method-assign]
    for ch in " world":
        src.get("source", type=Text).insert(len(src.get("source", type=Text)), ch)
        writer.accept(updates[-1], alice)
    assert await writer.flush(20)
    bursts, _ = await h.bursts(store.engine, "att", before=None, limit=10)
    assert len(bursts) == 1 and bursts[0].updates == 11 and bursts[0].inserted == 11
    await writer.close()


# ----------------------------------------------------------------------------- migration
def _alembic(engine_sync_conn, revision: str, down: bool = False) -> None:
    cfg = db.alembic_config()
    cfg.attributes["connection"] = engine_sync_conn
    (command.downgrade if down else command.upgrade)(cfg, revision)


async def test_a_pre_history_database_migrates_up_and_back_down(make_settings, database_url):
    """0002 → 0004 with a compacted room (snapshot + tail, and a row that committed after the
    compaction with a lower seq — possible on PostgreSQL), then back to 0002 and up again."""
    from sqlalchemy import text as sql

    settings = make_settings(database_url=database_url)
    engine = db.create_engine(settings)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0002")
        doc, other = Doc(), Doc()
        updates, late = recorder(doc), recorder(other)
        text = doc.get("source", type=Text)
        for i in range(10):
            text.insert(len(text), f"line {i}\n")
        other.get("meta", type=Map)["title"] = "late"
        order = [*updates[:5], late[0], updates[5], *updates[6:]]  # seqs 1..11 in a fresh database
        now = datetime.now(timezone.utc)
        insert_row = sql("INSERT INTO document_updates (room_id, doc, data, created_at) VALUES ('old', '', :d, :t)")
        async with engine.begin() as conn:
            for u in order:
                await conn.execute(insert_row.bindparams(d=u, t=now))
            seqs = [r[0] for r in (await conn.execute(sql(
                "SELECT seq FROM document_updates WHERE room_id='old' ORDER BY seq"))).all()]
            # what 0002's compaction left: rows 1-5 and 7 absorbed into a snapshot upto seq 7;
            # row 6 committed after it (so it is not in the snapshot) and stays
            absorbed = Doc()
            for u in order[:5] + [order[6]]:
                absorbed.apply_update(u)
            await conn.execute(sql("INSERT INTO document_snapshots (room_id, doc, data, upto_seq, updated_at) "
                                   "VALUES ('old', '', :d, :u, :t)").bindparams(d=absorbed.get_update(), u=seqs[6], t=now))
            for seq in seqs[:5] + [seqs[6]]:
                await conn.execute(sql("DELETE FROM document_updates WHERE seq = :s").bindparams(s=seq))
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "head")
        store = DocumentStore(engine)
        loaded = Doc()
        loaded.apply_update((await store.load("old")).update)
        assert str(loaded.get("source", type=Text)) == str(text)
        assert loaded.get("meta", type=Map)["title"] == "late", "the late row was lost"
        bounds = await h.bounds(engine, "old")
        assert bounds.detail_from > 1  # versions before the old compaction are not kept
        with pytest.raises(h.NotKept):
            await h.version(engine, "old", seqs[1])
        current = await h.version(engine, "old", seqs[-1])
        assert current.exact and text_of(current.docs[MAIN_DOC]) == str(text)
        # new rows with history, a second snapshot: several per document now
        text.insert(len(text), "new\n")
        await store.append("old", [Row(updates[-1], 1_800_000_000_000, 1, b"")])
        await store.compact("old")
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(SNAPSHOTS).where(
                SNAPSHOTS.c.room_id == "old"))).scalar() == 2
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "0002", True)
        async with engine.connect() as conn:
            snaps = (await conn.execute(sql("SELECT upto_seq, data FROM document_snapshots WHERE room_id='old'"))).all()
            rows = (await conn.execute(sql("SELECT data FROM document_updates WHERE room_id='old'"))).all()
        assert len(snaps) == 1 and rows == []  # the old invariant: the snapshot absorbed its rows
        old_doc = Doc()
        old_doc.apply_update(bytes(snaps[0].data))
        assert str(old_doc.get("source", type=Text)) == str(text) and old_doc.get("meta", type=Map)["title"] == "late"
        async with engine.begin() as conn:
            await conn.run_sync(_alembic, "head")
        assert text_of((await DocumentStore(engine).load("old")).update) == str(text)
    finally:
        await engine.dispose()
