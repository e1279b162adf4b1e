"""The history panel in real headless Chromium (tests/browser/history_web.py), inside a private
network namespace with real ``codesync signaling`` and ``codesync persist``; and its pure parts
(blame, diffs, the restore edit, the player clock, who may answer) in Node
(web/test/history.test.mjs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers.netns import browser_stack_available, run_driver, step
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    work = tmp_path_factory.mktemp("history-web")
    return run_driver("history_web.py", {"workdir": str(work)}, work / "driver.log", timeout=420)


def test_timeline_lists_who_edited_and_a_named_version(web):
    step(web, "timeline_and_named_version")


def test_an_old_version_opens_read_only_with_a_diff_against_now(web):
    step(web, "old_version_read_only_with_diff")


def test_an_editor_restores_it_and_every_browser_and_the_database_agree(web):
    step(web, "restore_converges_and_is_stored")


def test_blame_names_the_author_of_each_line(web):
    step(web, "blame_by_line")


def test_playback_at_32x_pauses_plays_on_and_scrubs_back(web):
    res = step(web, "playback_32x_pause_scrub")
    assert res["states"] > 5


def test_a_viewer_reads_the_history_only_once_the_owner_allows_it(web):
    step(web, "viewer_reads_only_when_allowed")


def test_a_second_file_has_its_own_versions_blame_and_restore(web):
    step(web, "second_file_history")


def test_history_rules_in_node():
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "yjs").is_dir(), "make web")
    proc = subprocess.run(["node", "--test", "test/history.test.mjs"], cwd=ROOT / "web", capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 5" in proc.stdout, proc.stdout[-2000:]
