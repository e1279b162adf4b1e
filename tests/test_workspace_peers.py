"""Concurrent structure edits of the file tree between real peers (aiortc + a real ``codesync
signaling``): the rules of docs/workspace.md ("When edits collide") hold and every peer shows
the same tree. Concurrency is real: both edits are made in the same event-loop turn, before
either peer can have received anything from the other."""

from __future__ import annotations

import pycrdt
import pytest

from peer import workspace as ws
from peer.protocol import decode_state_vector
from tests.helpers.stack import joined, signaling_stack
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)


def shown(room) -> dict[str, tuple[str, str]]:
    """id -> (path, kind) as this peer resolves its tree."""
    return {e.id: (e.path, e.kind) for e in ws.tree(room.doc).values()}


async def converged(*rooms) -> dict[str, tuple[str, str]]:
    """Wait until every peer holds the same document state and shows the same tree; return it."""
    def same():
        states = [decode_state_vector(r.doc.get_state()) for r in rooms]
        trees = [shown(r) for r in rooms]
        return all(s == states[0] for s in states) and all(t == trees[0] for t in trees)

    await wait_for(same, 20, what="the peers to converge")
    return shown(rooms[0])


def text_of(room, entry_id: str) -> str:
    return str(room.doc.get(ws.text_name(entry_id), type=pycrdt.Text))


async def test_concurrent_structure_edits_converge_by_the_rules(tmp_path):
    async with signaling_stack(tmp_path) as stack:
        seeded = await stack.seed_room({"ann": "owner", "ed": "editor", "bob": "editor"})
        async with joined(stack, seeded, "ann", "ed", "bob") as (ann, ed, bob):
            await wait_for(lambda: all(len(r.connected_peers) == 2 for r in (ann, ed, bob)), 30, what="a full mesh")
            # 0. Everybody makes the first file of the new room at once (the fixed first-file
            #    update: the same items on every peer, so one file, not three).
            for room in (ann, ed, bob):
                ws.ensure_first_file(room.doc, "python")
            tree = await converged(ann, ed, bob)
            assert list(tree.values()) == [("main.py", "file")]
            src = ws.create(ann.doc, "folder", "src", entry_id="f-src")
            lib = ws.create(ann.doc, "folder", "lib", entry_id="f-lib")
            util = ws.create(ann.doc, "file", "util.py", parent=src, content="X = 1\n", entry_id="u-util")
            await converged(ann, ed, bob)

            # 1. Two people rename the same file: one name wins (the same on every peer), no copy.
            ws.rename(ann.doc, util, "alpha.py")
            ws.rename(ed.doc, util, "beta.py")
            tree = await converged(ann, ed, bob)
            assert tree[util] in (("src/alpha.py", "file"), ("src/beta.py", "file"))
            assert sum(1 for p, _ in tree.values() if p.endswith((".py",)) and "src/" in p) == 1

            # 2. Two people create the same name in one folder: both files live; the smallest id
            #    keeps the name, the other shows "name (2)" until someone renames it.
            a_id = ws.create(ann.doc, "file", "notes.md", parent=src, content="from ann", entry_id="n-a")
            e_id = ws.create(ed.doc, "file", "notes.md", parent=src, content="from ed", entry_id="n-b")
            tree = await converged(ann, ed, bob)
            assert tree[a_id] == ("src/notes.md", "file") and tree[e_id] == ("src/notes (2).md", "file")
            assert (text_of(bob, a_id), text_of(bob, e_id)) == ("from ann", "from ed")
            ws.rename(bob.doc, e_id, "notes-ed.md")
            tree = await converged(ann, ed, bob)
            assert tree[e_id] == ("src/notes-ed.md", "file")

            # 3. A rename and a move of the same file at once: both happen (separate fields).
            ws.rename(ann.doc, a_id, "readme.md")
            ws.move(ed.doc, a_id, lib)
            tree = await converged(ann, ed, bob)
            assert tree[a_id] == ("lib/readme.md", "file")

            # 4. One deletes a folder while another edits a file in it and creates one there:
            #    the deletion wins for what the deleter saw (the edited file is gone, with the
            #    edit); the file created meanwhile is not lost: it shows at the top level.
            inner = ws.create(ann.doc, "file", "inner.py", parent=src, content="a = 1\n", entry_id="i-inner")
            await converged(ann, ed, bob)
            ws.delete(ann.doc, src)
            ed.doc.get(ws.text_name(inner), type=pycrdt.Text).insert(0, "# ed was editing\n")
            late = ws.create(ed.doc, "file", "late.py", parent=src, content="print('late')\n", entry_id="l-late")
            tree = await converged(ann, ed, bob)
            assert inner not in tree and util not in tree and e_id not in tree and src not in tree
            assert tree[late] == ("late.py", "file") and text_of(bob, late) == "print('late')\n"

            # 5. Two moves that would form a cycle (x into y, y into x): the cycle is cut at the
            #    smallest id, which goes to the top level; nothing disappears.
            x = ws.create(ann.doc, "folder", "x", entry_id="c-x")
            y = ws.create(ann.doc, "folder", "y", entry_id="c-y")
            leaf = ws.create(ann.doc, "file", "leaf.py", parent=y, entry_id="c-leaf")
            await converged(ann, ed, bob)
            ws.move(ann.doc, x, y)
            ws.move(ed.doc, y, x)
            tree = await converged(ann, ed, bob)
            assert tree[x] == ("x", "folder") and tree[y] == ("x/y", "folder") and tree[leaf] == ("x/y/leaf.py", "file")
