"""The file tree of schema v2 (docs/workspace.md): the read-time rules in Python
(``peer/workspace.py``) and in the browser (``web/src/workspace.js``) resolve every tree — also
broken, cyclic and clashing ones — to the same paths, and both sides read documents the other
wrote. Concurrent edits between real peers are in tests/test_workspace_peers.py."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peer import workspace as ws
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def js():
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "yjs").is_dir(), "make web")
    proc = subprocess.Popen(["node", str(ROOT / "web" / "test" / "workspace_cli.mjs")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT / "web", text=True, env={**os.environ})

    def call(**req):
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
        assert "error" not in out, out["error"]
        return out

    yield call
    proc.stdin.close()
    proc.wait(10)


def plain(entries: dict[str, ws.Entry]) -> dict[str, dict]:
    return {e.id: {"name": e.name, "parent": e.parent, "path": e.path, "kind": e.kind, "language": e.language,
                   "text": e.text} for e in entries.values()}


# ------------------------------------------------------------------------------ rules
def test_orphans_cycles_and_clashes_resolve_to_fixed_places():
    raw = {
        "a": {"kind": "folder", "name": "x", "parent": "b"},  # a <-> b: a cycle (two concurrent moves)
        "b": {"kind": "folder", "name": "y", "parent": "a"},
        "c": {"kind": "file", "name": "m.py", "parent": "a"},
        "d": {"kind": "file", "name": "m.py", "parent": "a"},  # same name in one folder
        "e": {"kind": "file", "name": "m (2).py", "parent": "a"},  # ...and the suffix is taken
        "f": {"kind": "file", "name": "lost.txt", "parent": "gone"},  # its folder was deleted
        "g": {"kind": "file", "name": "../etc/passwd", "parent": "c"},  # bad name, parent not a folder
        "h": {"kind": "symlink", "name": "ignored"},
        "bad id!": {"kind": "file", "name": "ignored"},
        "i": {"kind": "file", "name": "Main.JAVA", "language": "nonsense"},
        "j": {"kind": "file", "name": "script", "language": "python"},
    }
    t = ws.resolve(raw)
    assert set(t) == set("abcdefgij")
    assert t["a"].path == "x" and t["a"].parent == ""  # the cycle is cut at its smallest id
    assert t["b"].path == "x/y"
    assert (t["c"].path, t["d"].path, t["e"].path) == ("x/m.py", "x/m (3).py", "x/m (2).py")
    assert t["f"].path == "lost.txt" and t["g"].path == "unnamed"
    assert t["i"].language == "java" and t["j"].language == "python" and t["g"].language == "plaintext"
    assert t["c"].text == "file:c" and t["a"].text == ""


def test_first_file_update_is_fixed_and_idempotent():
    doc = pycrdt.Doc()
    ws.ensure_first_file(doc, "ruby")
    ws.ensure_first_file(doc, "python")  # again: changes nothing, the name stays
    entries = ws.tree(doc)
    assert {e.path: e.text for e in entries.values()} == {"main.rb": "source"}
    # Two peers applying it independently make the same items: no clash after they sync.
    other = pycrdt.Doc()
    other.apply_update(ws.INIT_UPDATE)
    other.apply_update(doc.get_update())
    assert [e.path for e in ws.tree(other).values()] == ["main.rb"]
    # A deleted first file stays deleted when somebody applies the update again.
    ws.delete(doc, ws.SOURCE_ID)
    ws.ensure_first_file(doc)
    assert ws.tree(doc) == {}
    # The bytes are what pycrdt itself makes for those items with client id 0.
    made = pycrdt.Doc(client_id=0)
    files = made.get("files", type=pycrdt.Map)
    with made.transaction():
        first = pycrdt.Map()
        files["source"] = first
        first["kind"], first["parent"], first["text"] = "file", "", "source"
    assert made.get_update() == ws.INIT_UPDATE


def test_project_for_a_run_and_its_errors():
    doc = pycrdt.Doc()
    ws.ensure_first_file(doc)
    doc.get("source", type=pycrdt.Text).insert(0, "import util\n")
    lib = ws.create(doc, "folder", "lib")
    util = ws.create(doc, "file", "util.py", content="X = 1\n")
    ws.create(doc, "file", "deep.py", parent=lib, content="ü\n")
    files, entry = ws.project(doc, entry=ws.SOURCE_ID)
    assert entry == "main.py" and files == {"main.py": b"import util\n", "util.py": b"X = 1\n",
                                            "lib/deep.py": "ü\n".encode()}
    assert ws.project(doc, entry_path="lib/deep.py")[1] == "lib/deep.py"
    with pytest.raises(ws.WorkspaceError, match="not in the room"):
        ws.project(doc, entry="nope")
    with pytest.raises(ws.WorkspaceError, match="not in the room"):
        ws.project(doc, entry=lib)  # a folder is no entry file
    with pytest.raises(ws.WorkspaceError, match="larger than"):
        ws.project(doc, entry=util, limits=ws.Limits(total_bytes=10))
    with pytest.raises(ws.WorkspaceError, match="at most 2 can run"):
        ws.project(doc, entry=util, limits=ws.Limits(files=2))
    with pytest.raises(ws.WorkspaceError, match="already exists"):
        ws.create(doc, "file", "util.py")
    with pytest.raises(ws.WorkspaceError, match="into itself"):
        ws.move(doc, lib, lib)
    assert ws.delete(doc, lib)[0] == lib and "lib/deep.py" not in ws.paths(ws.tree(doc).values())


# ------------------------------------------------------------------------------ Python == JS
IDS = ["a", "b", "c", "d", "e", "source", "0mz", "zz-9"]
NAMES = ["main.py", "main.py", "util.py", "lib", "a b.c", "", ".", "..", "x/y", "con.txt", "trailing.", "ünï.rb",
         "m (2).py", "Makefile", ".env", None, 7, "x" * 101]
entry_strategy = st.fixed_dictionaries(
    {"kind": st.sampled_from(["file", "folder", "folder", "link", None])},
    optional={
        "name": st.sampled_from(NAMES),
        "parent": st.sampled_from(["", *IDS, "gone", 3]),
        "language": st.sampled_from(["python", "rust", "bogus", 1]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(IDS + ["bad id"]), entry_strategy, max_size=8))
def test_python_and_browser_resolve_every_tree_alike(js, raw):
    assert js(op="resolve", raw=raw)["entries"] == plain(ws.resolve(raw))


def test_documents_written_by_one_side_read_alike_by_the_other(js):
    assert base64.b64decode(js(op="init")["update"]) == ws.INIT_UPDATE
    doc = pycrdt.Doc()
    ws.ensure_first_file(doc)
    doc.get("source", type=pycrdt.Text).insert(0, "print('hi')\n")
    src = ws.create(doc, "folder", "src")
    ws.create(doc, "file", "main.c", parent=src, content="int main(){}\n")
    ws.create(doc, "file", "notes", content="ü", language="plaintext")
    out = js(op="apply", updates=[base64.b64encode(doc.get_update()).decode()])
    assert out["entries"] == plain(ws.tree(doc))
    assert out["texts"] == {"main.py": "print('hi')\n", "src/main.c": "int main(){}\n", "notes": "ü"}
