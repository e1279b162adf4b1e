"""Rules that more than one part of CodeSync applies are defined once (issue: copies drifted —
a room id of 32 characters in one service and 64 in another, two file-tree limit sets).

Where a rule must exist in both Python and the browser, the two are compared here.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess

from codesync.models import ROOM_ID_MAX, Room, new_room_id
from peer.protocol import EMPTY_UPDATE
from peer.service import RoomService
from peer.workspace import LIMITS
from runner.sandbox import project
from tests.helpers.components import ROOT

PY_PACKAGES = ("codesync", "peer", "signaling", "runner")


def _assignments(name: str) -> list[str]:
    """Modules that assign the module-level name ``name``."""
    found = []
    for package in PY_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_empty_update_is_defined_once_per_language_and_agrees() -> None:
    assert _assignments("EMPTY_UPDATE") == ["peer/protocol.py"]
    wire = (ROOT / "web" / "src" / "wire.js").read_text()
    m = re.search(r"export const EMPTY_UPDATE = new Uint8Array\(\[([^\]]*)\]\)", wire)
    assert m and bytes(int(b) for b in m.group(1).split(",")) == EMPTY_UPDATE


def test_one_room_id_limit_for_every_service() -> None:
    assert Room.model_fields["id"].metadata[0].max_length == ROOM_ID_MAX  # type: ignore[attr-defined]
    assert len(new_room_id()) <= ROOM_ID_MAX
    assert RoomService.max_room_id == ROOM_ID_MAX
    assert [m for m in ("MAX_ROOM_ID", "max_room_id") if _assignments(m)] == []
    for path in ("peer/persistence/service.py", "runner/service.py"):
        assert "max_room_id =" not in (ROOT / path).read_text(), f"{path} sets its own room id limit"


def test_a_run_holds_what_a_room_tree_may_hold() -> None:
    assert (project.MAX_FILES, project.MAX_FILE_BYTES, project.MAX_TOTAL_BYTES) == (
        LIMITS.files, LIMITS.file_bytes, LIMITS.total_bytes)
    assert (project.MAX_PATH, project.MAX_PART, project.MAX_DEPTH) == (LIMITS.path_bytes, LIMITS.name_bytes, LIMITS.depth)


def test_the_browser_tree_limits_are_the_python_ones() -> None:
    script = (
        "import('./web/src/workspace.js').then(m => console.log(JSON.stringify(m.LIMITS)))"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    web = json.loads(out.stdout)
    assert web == {
        "files": LIMITS.files, "folders": LIMITS.folders, "fileBytes": LIMITS.file_bytes, "totalBytes": LIMITS.total_bytes,
        "depth": LIMITS.depth, "nameBytes": LIMITS.name_bytes, "pathBytes": LIMITS.path_bytes,
    }


def test_the_web_client_makes_random_ids_in_one_place() -> None:
    defined = [
        str(p.relative_to(ROOT)) for p in (ROOT / "web" / "src").rglob("*.js")
        if re.search(r"^\s*(export\s+)?function uuid\s*\(", p.read_text(), re.M)
    ]
    assert defined == ["web/src/wire.js"]
