"""The browser's trust rules (web/src/rights.js) and the framing they read (web/src/wire.js
type 102, awareness entries), unit-tested in Node (web/test/rights.test.mjs). The same rules in
the running client, against real peers, are in tests/test_trust_web.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(120)


def test_rights_rules_in_node():
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "lib0").is_dir(), "make web")
    proc = subprocess.run(
        ["node", "--test", "test/rights.test.mjs"], cwd=ROOT / "web", capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 9" in proc.stdout, proc.stdout[-2000:]
