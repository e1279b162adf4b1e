"""The workspace in the real web client, end to end in headless Chromium inside a private
network namespace (tests/browser/workspace_web.py): real signaling, persistence peer and runner
(bubblewrap); Alice (owner) and Bob (editor) make files and folders, edit different files at
once with their cursors in the right file, run a multi-file Python program, answer ``input()``
from the second console; Carol (viewer) can do none of it, not even by forcing it from the page;
uploads are checked before anything enters the document."""

from __future__ import annotations

import base64
import io
import os
import stat
import zipfile

import pytest

from tests.helpers.netns import browser_stack_available, run_driver, step
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(480)


def _zip(entries: list[tuple[str, bytes, int | None]]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, data)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def ws_run(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    work = tmp_path_factory.mktemp("workspace-web")
    uploads = {
        "bad-dotdot.zip": _zip([("ok.py", b"print(1)\n", None), ("../evil.py", b"import os\n", None)]),
        "bad-symlink.zip": _zip([("ok.py", b"print(1)\n", None), ("link.py", b"/etc/passwd", stat.S_IFLNK | 0o777)]),
        "bad-absolute.zip": _zip([("/etc/cron.d/x", b"x\n", None)]),
        "good.zip": _zip([("lib/up.py", b"UP = 1\n", stat.S_IFREG | 0o644), ("lib/data/readme.txt", "ü\n".encode(), None)]),
        "bad-binary.png": base64.b64encode(bytes(range(256))).decode(),
        "good-notes.txt": base64.b64encode("plain notes ✓\n".encode()).decode(),
    }
    return run_driver("workspace_web.py", {"workdir": str(work), "uploads": uploads, "shots": str(ROOT / "docs" / "screenshots")},
                      work / "driver.log", timeout=450)


def test_two_users_create_files_and_folders(ws_run):
    res = step(ws_run, "files_and_folders")
    assert {"main.py", "util.py", "pkg", "pkg/helper.py"} <= set(res["tree"])


def test_edit_different_files_at_once_cursors_in_the_right_file(ws_run):
    step(ws_run, "edit_different_files_cursors_in_the_right_file")


def test_multi_file_python_program_runs_and_both_see_it(ws_run):
    res = step(ws_run, "multi_file_python_run_seen_by_both")
    assert "util ok helper ok" in res["output"]


def test_input_is_answered_from_the_second_users_console(ws_run):
    res = step(ws_run, "input_answered_from_second_users_console")
    assert "hello Bob" in res["output"]


def test_output_colours_truncation_and_clear(ws_run):
    step(ws_run, "output_ansi_truncation_and_clear_for_one")


def test_viewer_cannot_create_rename_delete_or_type(ws_run):
    res = step(ws_run, "viewer_cannot_change_files_or_type")
    assert all(n >= 3 for n in res["links_written_to"]), res  # Alice, Bob and the services were all offered it


def test_upload_refuses_dotdot_links_and_absolute_paths_and_download_works(ws_run):
    res = step(ws_run, "upload_checked_and_download_zip")
    messages = res["messages"]
    assert "'..'" in messages["bad-dotdot.zip"] or "..\"" in messages["bad-dotdot.zip"] or ".." in messages["bad-dotdot.zip"]
    assert "symbolic link" in messages["bad-symlink.zip"]
    assert "absolute" in messages["bad-absolute.zip"]
    assert "not a text file" in messages["bad-binary.png"] and "Uploaded: 1 new file" in messages["good-notes.txt"]


def test_limits_are_refused_with_a_message(ws_run):
    res = step(ws_run, "limits_refused_with_a_message")
    assert "2 MiB" in res["typing"] and "500" in res["create"]


def test_folder_deleted_under_an_editor_closes_the_tab(ws_run):
    step(ws_run, "folder_deleted_under_an_editor")
