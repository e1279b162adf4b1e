"""The account screens in headless Chromium (tests/browser/accounts_driver.py, inside a private
network namespace, with a real SMTP server there): verification, the account page, forgot and
reset password, an administrator disabling a user with an open room page, account deletion, a
server with closed registration. Screenshots: docs/screenshots/{verify-email,account,
forgot-password,reset-password,admin,sign-in-closed}.png."""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver
from tests.helpers.components import require

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    work = tmp_path_factory.mktemp("web-accounts")
    res = run_driver("accounts_driver.py", {"workdir": str(work)}, work / "driver.log", timeout=240)
    assert "error" not in res, f"{res['error']}\n{res.get('trace')}\n{res.get('logs')}"
    assert not res.get("page_errors"), res["page_errors"]
    return res["steps"]


def test_registration_banner_and_the_mailed_verification_link_once(result):
    assert result["verify_email"]["ok"], result["verify_email"]


def test_account_page_profile_and_password(result):
    assert result["account_page"]["ok"], result["account_page"]


def test_forgot_password_by_mail_single_use(result):
    assert result["forgot_password"]["ok"], result["forgot_password"]


def test_admin_disables_a_user_whose_room_is_open(result):
    assert result["admin_disables_a_user"]["ok"], result["admin_disables_a_user"]


def test_delete_account_from_the_account_page(result):
    assert result["delete_account"]["ok"], result["delete_account"]


def test_closed_registration_is_said_and_refused(result):
    assert result["closed_registration"]["ok"], result["closed_registration"]
