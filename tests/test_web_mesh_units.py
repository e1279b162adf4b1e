"""The browser's mesh rules (web/src/topology.js: the forward decision, whether two viewers stay
unlinked, the type-103 links message with its malformed and oversized inputs, simulated rooms),
unit-tested in Node
(web/test/topology.test.mjs). The same rules in the running client, between real browsers, are
in tests/test_web_mesh.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(120)


def test_mesh_rules_in_node():
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "lib0").is_dir(), "make web")
    proc = subprocess.run(
        ["node", "--test", "test/topology.test.mjs"], cwd=ROOT / "web", capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 11" in proc.stdout, proc.stdout[-2000:]
