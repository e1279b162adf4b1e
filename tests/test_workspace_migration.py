"""Schema v1 -> v2 by the persistence peer on first load (peer/persistence/migrate_v2.py): a v1
document stored in SQL (several log rows, non-ASCII text, v1 run records) is loaded by a real
``codesync persist``; a joining aiortc peer gets the v2 tree whose entry file holds every byte
of the v1 code; the migration is stored, happens once, and a stock-style peer that only knows
``source`` keeps editing the entry file."""

from __future__ import annotations

import pycrdt
import pytest

from peer import workspace as ws
from peer.persistence import migrate_v2
from peer.persistence.store import DocumentStore
from codesync.settings import Settings
from tests.helpers.stack import joined
from tests.helpers.wait import wait_for
from tests.helpers.persistence import persist_stack, saved_covers

pytestmark = pytest.mark.timeout(180)

# Everything v1 rooms hold: ASCII, accents, CJK, an emoji (4 UTF-8 bytes, 2 UTF-16 units), CRLF, tabs.
V1_CODE = "# café ☕ 日本語 🎉\r\nimport sys\n\tprint('ünïcödé', file=sys.stderr)\n" + "x = 1\n" * 2000


def v1_document() -> list[bytes]:
    """A v1 room as an old client wrote it, as several updates (several log rows)."""
    doc = pycrdt.Doc()
    updates: list[bytes] = []
    sub = doc.observe(lambda e: updates.append(e.update))
    source = doc.get("source", type=pycrdt.Text)
    meta = doc.get("meta", type=pycrdt.Map)
    with doc.transaction():
        meta["schema"], meta["language"], meta["title"] = 1, "ruby", "Interview — Ann"
    source.insert(0, V1_CODE[:40])
    source.insert(len(source), V1_CODE[40:])  # pycrdt counts UTF-8 bytes: len() is the end
    doc.get("runs", type=pycrdt.Map)["old"] = pycrdt.Map({"status": "finished"})  # v1 run record
    doc.unobserve(sub)
    assert str(source) == V1_CODE
    return updates


def test_migration_unit_is_idempotent_and_leaves_new_and_migrated_rooms_alone():
    doc = pycrdt.Doc()
    for u in v1_document():
        doc.apply_update(u)
    first = migrate_v2.migrate(doc)
    assert first and migrate_v2.migrate(doc) == []  # once
    assert {e.path: e.text for e in ws.tree(doc).values()} == {"main.rb": "source"}
    assert str(doc.get("source", type=pycrdt.Text)) == V1_CODE
    assert migrate_v2.migrate(pycrdt.Doc()) == []  # an empty new room: its first browser makes the first file
    ws.delete(doc, ws.SOURCE_ID)  # every file deleted: still v2, never migrated again
    assert migrate_v2.migrate(doc) == []


async def test_stored_v1_room_migrates_on_first_load_and_loses_nothing(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path / 'codesync.db'}"
    async with persist_stack(tmp_path, database_url=db) as (stack, persisters):
        seeded = await stack.seed_room({"ann": "owner", "ed": "editor"})
        store = await DocumentStore.open(Settings(database_url=db, data_dir=tmp_path / "data"))
        try:
            await store.append(seeded.id, v1_document())
            v1_rows = (await store.log_stats(seeded.id))[0]
        finally:
            await store.close()
        assert v1_rows >= 2
        svc = persisters.start()
        async with joined(stack, seeded, "ann") as (ann,):
            await wait_for(lambda: ws.is_v2(ann.doc), 30, what="the migrated tree")
            entries = ws.tree(ann.doc)
            assert [(e.path, e.text, e.language) for e in entries.values()] == [("main.rb", "source", "ruby")]
            text = ann.doc.get("source", type=pycrdt.Text)
            assert str(text).encode() == V1_CODE.encode()  # every byte
            meta = ann.doc.get("meta", type=pycrdt.Map)
            assert (meta["schema"], meta["entry"], meta["language"], meta["title"]) == (2, "source", "ruby", "Interview — Ann")
            assert len(ann.doc.get("runs", type=pycrdt.Map)) == 0  # v1 run records are dropped (v1.py)
            assert ws.project(ann.doc, entry=meta["entry"]) == ({"main.rb": V1_CODE.encode()}, "main.rb")
            # A peer that only knows `source` (a stock y-webrtc client) edits the entry file.
            text.insert(len(text), "puts 'still here'\n")
            await wait_for(lambda: saved_covers(ann), 30, what="saved")
        assert "migrated the main document to schema v2" in svc.log()
        # Stored: a fresh load of the database holds the v2 tree and the edit; a restart does not migrate again.
        svc.stop()
        svc2 = persisters.start()
        async with joined(stack, seeded, "ed") as (ed,):
            await wait_for(lambda: "puts 'still here'" in str(ed.doc.get("source", type=pycrdt.Text)), 30,
                           what="the stored document")
            assert str(ed.doc.get("source", type=pycrdt.Text)) == V1_CODE + "puts 'still here'\n"
            assert [e.path for e in ws.tree(ed.doc).values()] == ["main.rb"]
        assert "migrated the main document" not in svc2.log()
