"""Runs of a schema-v2 room's file tree end to end: real ``codesync signaling`` and ``codesync
runner``, aiortc peers, bubblewrap. The runner builds the project from *its own copy* of the
tree (it waits for the requester's state vector), runs it from the entry file (by id or by
path), and refuses what it cannot run with a reason the whole room sees."""

from __future__ import annotations

import pycrdt
import pytest

from peer import workspace as ws
from tests.helpers.wait import wait_for
from tests.helpers.runner import clients, runner_stack

pytestmark = pytest.mark.timeout(240)


def tree_files(doc: pycrdt.Doc, files: dict[str, str]) -> dict[str, str]:
    """Create ``path -> content`` in the tree (folders as needed); returns ``path -> id``."""
    ids: dict[str, str] = {}
    folders: dict[str, str] = {"": ""}
    for path, content in files.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in folders:
                folders[folder] = ws.create(doc, "folder", parts[i - 1], parent=folders["/".join(parts[:i - 1])])
        ids[path] = ws.create(doc, "file", parts[-1], parent=folders["/".join(parts[:-1])], content=content)
    return ids


async def test_multi_file_projects_run_from_the_tree(tmp_path):
    async with runner_stack(tmp_path) as (stack, seeded, runner), clients(stack, seeded, "ann", "vic") as (ann, vic):
        await wait_for(ann.runner, timeout=30, what="runner joined")
        doc = ann.room.doc
        ws.ensure_first_file(doc, "python")
        ann.source.insert(0, "import util\nfrom pkg import helper\nprint(util.greet(), helper.twice(21))\n")
        ids = tree_files(doc, {
            "util.py": "def greet():\n    return 'hello from util'\n",
            "pkg/__init__.py": "",
            "pkg/helper.py": "def twice(x):\n    return 2 * x\n",
            "c/main.c": '#include <stdio.h>\n#include "lib/add.h"\nint main(void){printf("sum %d\\n", add(2, 40));return 0;}\n',
            "c/lib/add.h": "int add(int a, int b);\n",
            "c/lib/add.c": '#include "add.h"\nint add(int a, int b){return a + b;}\n',
            "js/index.js": "const m = require('./lib/m')\nconsole.log('js says', m.answer)\n",
            "js/lib/m.js": "module.exports = { answer: 42 }\n",
        })
        # Python importing a sibling module and a package; the viewer sees the output.
        assert (await ann.run("py", entry=ws.SOURCE_ID))["op"] == "run-accepted", runner.log()[-3000:]
        await wait_for(lambda: vic.field("py", "status") == "finished", timeout=30, what="python finished")
        assert vic.output("py") == "hello from util 42\n"
        # C from several sources in folders, the entry by path (every .c compiled: main.c + lib/add.c;
        # the -I. include path is the project root, so c/main.c includes "lib/add.h" relative to itself).
        assert (await ann.run("c", language="c", entry_path="c/main.c"))["op"] == "run-accepted"
        await wait_for(lambda: vic.field("c", "status") in ("finished", "failed"), timeout=30, what="c finished")
        assert vic.output("c") == "sum 42\n", vic.output("c")
        assert (await ann.run("js", language="javascript", entry=ids["js/index.js"]))["op"] == "run-accepted"
        await wait_for(lambda: vic.field("js", "status") == "finished", timeout=30, what="js finished")
        assert vic.output("js") == "js says 42\n"

        # An edit of another file made just before Run is part of the run (the whole tree is
        # covered by the state vector the runner waits for).
        util = doc.get(f"file:{ids['util.py']}", type=pycrdt.Text)
        del util[:]
        util.insert(0, "def greet():\n    return 'edited just now'\n")
        assert (await ann.run("py2", entry=ws.SOURCE_ID))["op"] == "run-accepted"
        await wait_for(lambda: vic.field("py2", "status") == "finished", timeout=30, what="python finished")
        assert vic.output("py2") == "edited just now 42\n"

        # A moved and renamed module is found where it is now.
        ws.rename(doc, ids["util.py"], "tools.py")
        ws.move(doc, ids["util.py"], [e.id for e in ws.tree(doc).values() if e.path == "pkg"][0])
        ann.source.insert(0, "from pkg import tools as util\n")
        del ann.source[len("from pkg import tools as util\n"):len("from pkg import tools as util\nimport util\n")]
        assert (await ann.run("py3", entry=ws.SOURCE_ID))["op"] == "run-accepted"
        await wait_for(lambda: vic.field("py3", "status") == "finished", timeout=30, what="python finished")
        assert vic.output("py3") == "edited just now 42\n"


async def test_runs_the_tree_refuses_what_it_cannot_run(tmp_path):
    async with runner_stack(tmp_path) as (stack, seeded, runner), clients(stack, seeded, "ed", "vic", "ann") as (ed, vic, ann):
        await wait_for(ed.runner, timeout=30, what="runner joined")
        doc = ed.room.doc
        ws.ensure_first_file(doc, "python")
        ed.source.insert(0, "print('ok')\n")
        notes = ws.create(doc, "file", "notes.txt", content="hi")
        cases = {
            "gone": ({"entry": "no-such-id"}, "not in the room's files"),
            "path": ({"entry_path": "nowhere.py"}, "there is no file 'nowhere.py'"),
            "txt": ({"entry": notes}, "is not a python file"),
            "bad": ({"entry": 12}, "not in the room's files"),
        }
        for run_id, (extra, reason) in cases.items():
            reply = await ed.run(run_id, **extra)
            assert reply["op"] == "run-refused" and reason in reply["reason"], (run_id, reply)
        # The room sees why (a user's first refusals are written as runs; then they are rate limited).
        await wait_for(lambda: vic.field("gone", "status") == "refused", timeout=10, what="the refusal shown")
        assert "not in the room's files" in vic.field("gone", "reason")
        # Beyond the room limits (checked again by the runner): 501 files.
        ws.delete(doc, notes)
        with doc.transaction():
            for i in range(ws.LIMITS.files):
                ws.create(doc, "file", f"f{i}.py", entry_id=f"bulk{i}")
        reply = await ed.run("many", entry=ws.SOURCE_ID)
        assert reply["op"] == "run-refused" and "at most 500 can run" in reply["reason"], reply
        # The single-file v1 path (what a client without the tree sends) still runs `source`
        # (asked by Ann: Ed has used up his burst of runs with the refusals above).
        await wait_for(ann.runner, timeout=30, what="runner linked to Ann")
        await wait_for(lambda: str(ann.source) == "print('ok')\n", timeout=20, what="Ann has the code")
        reply = await ann.run("v1")
        assert reply["op"] == "run-accepted", reply
        await wait_for(lambda: vic.field("v1", "status") == "finished", timeout=30, what="v1 finished")
        assert vic.output("v1") == "ok\n"
