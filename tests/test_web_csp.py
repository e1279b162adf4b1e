"""The built web client works under the server's Content-Security-Policy (real headless
Chromium in a private network namespace, tests/browser/csp_driver.py): two people in one room — one of
them joined through an invite link, accepted with the token in the request body — edit
together over WebRTC, with no CSP violation, while an inline script is refused."""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(240)


def test_web_client_runs_under_the_content_security_policy(tmp_path):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    res = run_driver("csp_driver.py", {"workdir": str(tmp_path)}, tmp_path / "driver.log", timeout=200)
    assert "error" not in res, f"{res['error']}\n{res.get('trace')}\n{res.get('logs')}"
    assert "frame-ancestors 'none'" in res["csp_header"] and "script-src 'self'" in res["csp_header"]
    assert res["bob_joined"] and res["synced"]
    assert res["inline_ran"] is False  # the policy is enforced ...
    unexpected = [v for v in res["violations"] if not (v.startswith("script-src") and " inline " in f" {v} ")]
    assert not unexpected, unexpected  # ... and the client needs nothing it forbids
    assert len(res["violations"]) - len(unexpected) >= 1
