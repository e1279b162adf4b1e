"""Sessions in the real web client (tests/browser/session_driver.py, inside a private network
namespace): silent token refresh with rotation, /signal reconnects on expiry (close 4001),
clear messages for a revoked session and for a room the user cannot access."""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    work = tmp_path_factory.mktemp("web-session")
    res = run_driver("session_driver.py", {"workdir": str(work), "access_ttl": 6}, work / "driver.log", timeout=240)
    assert "error" not in res, f"{res['error']}\n{res.get('trace')}\n{res.get('logs')}"
    return res["steps"]


def test_tokens_refresh_silently_and_signaling_reconnects(result):
    s = result["silent_refresh_and_reconnect"]
    assert s["ok"] and s["rotated"] and s["connects"] >= 3, s


def test_api_screens_work_after_access_token_expiry(result):
    assert result["api_after_expiry"]["ok"]


def test_no_access_to_room_is_explained(result):
    assert result["no_access_message"]["ok"], result["no_access_message"]


def test_revoked_session_asks_to_sign_in_again(result):
    assert result["expired_session_message"]["ok"], result["expired_session_message"]


def test_oauth_buttons_landing_and_errors(result):
    assert result["oauth_flow_in_client"]["ok"], result["oauth_flow_in_client"]


def test_run_without_runner_says_so(result):
    assert result["runner_unavailable_message"]["ok"], result["runner_unavailable_message"]


def test_owner_changes_role_and_removes_member(result):
    assert result["owner_manages_members"]["ok"], result["owner_manages_members"]
