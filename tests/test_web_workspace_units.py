"""The browser's workspace modules unit-tested in Node: tree edits and uploads
(web/test/workspace.test.mjs), zip reading and writing with its refusals (web/test/zip.test.mjs;
archives with real symlink entries are in tests/test_workspace_web.py), the ANSI parser
(web/test/ansi.test.mjs), which runner gets Stop and console input when a room has several
(web/test/runner_choice.test.mjs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name, count", [("workspace", 3), ("zip", 3), ("ansi", 3), ("runner_choice", 2)])
def test_web_workspace_module_in_node(name, count):
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "fflate").is_dir(), "make web")
    proc = subprocess.run(["node", "--test", f"test/{name}.test.mjs"], cwd=ROOT / "web", capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and f"# pass {count}" in proc.stdout, proc.stdout[-2000:]
