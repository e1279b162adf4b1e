"""End-to-end tests of the web client in real headless Chromium, inside a private network
namespace (tests/helpers/netns.py): the whole stack — signaling, persistence peer, runner — and two
(sometimes more) browser contexts. One driver run (tests/browser/web_e2e.py) walks the whole
story once; each test below checks one part of it, so a failure names what broke.
"""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    work = tmp_path_factory.mktemp("web-e2e")
    result = run_driver("web_e2e.py", {"workdir": str(work)}, work / "driver.log", timeout=360)
    result["_workdir"] = str(work)
    return result


def step(e2e, name: str, needs_service: str | None = None) -> dict:
    if "driver" in e2e["steps"]:
        pytest.fail(f"driver crashed: {e2e['steps']['driver']}")
    res = e2e["steps"].get(name)
    assert res is not None, f"step {name} did not run: {sorted(e2e['steps'])}"
    if needs_service and not res["ok"] and not res.get("blocked") and "skipped" in res:
        require(needs_service, False, res.get("error", ""))
    assert res["ok"], (
        f"{name}: {res.get('error')}\n{res.get('trace', '')}\nconsole: {e2e.get('console')}\n"
        f"service logs: { {k: v[-1500:] for k, v in e2e.get('logs', {}).items()} }"
    )
    return res


def test_sign_in_page_and_wrong_password(e2e):
    res = step(e2e, "sign_in_page")
    assert "Wrong email or password" in res["wrong_password_message"]


def test_register_and_create_room(e2e):
    step(e2e, "register_and_create_room")


def test_invite_link_accepted_after_register(e2e):
    step(e2e, "invite_accepted")


def test_two_browsers_type_at_once_and_converge(e2e):
    res = step(e2e, "two_browsers_converge")
    assert "alice was here" in res["text"] and "bob typed this" in res["text"]
    assert res["editor_has_bob"]


def test_presence_list_shows_the_other_with_role(e2e):
    step(e2e, "presence_list")


def test_remote_cursor_with_name(e2e):
    step(e2e, "remote_cursor")


def test_language_change_reaches_both(e2e):
    res = step(e2e, "language_change")
    assert res["meta"]["language"] == "javascript"


def test_phone_sized_layout_stacks_panels(e2e):
    step(e2e, "phone_layout")


def test_run_streams_same_output_to_both(e2e):
    res = step(e2e, "run_streams_output", needs_service="runner peer")
    assert "hello from the runner" in res["output"] and "to stderr" in res["output"]


def test_viewer_cannot_edit_or_run(e2e):
    step(e2e, "viewer_read_only")


def test_stock_y_webrtc_client_converges(e2e):
    step(e2e, "stock_y_webrtc_converges")


def test_reload_gets_document_from_persistence_peer(e2e):
    step(e2e, "reload_from_persistence_peer", needs_service="persistence peer")


def test_killing_signaling_does_not_stop_connected_browsers(e2e):
    res = step(e2e, "signaling_down_p2p_continues")
    assert "peer to peer" in res["message"]


def test_signaling_restart_browsers_reconnect(e2e):
    step(e2e, "signaling_restart_reconnects")


def test_reload_keeps_document_from_local_storage_and_offline_edits_merge(e2e):
    step(e2e, "reload_from_local_storage")
