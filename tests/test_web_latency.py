"""The browser latency benchmark (bench/browser_latency.py) runs and measures every keystroke."""

from __future__ import annotations

import pytest

from bench.browser_latency import measure
from tests.helpers.netns import browser_stack_available
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(300)


def test_browser_latency_benchmark_measures_every_keystroke():
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    out = measure(keystrokes=40, delay_ms=20)
    assert out["keystrokes"] == 40
    assert 0 <= out["min_ms"] <= out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]
    # Loose bound (shared 2-core machine): a keystroke reaches the other browser well within a second.
    assert out["p50_ms"] < 1000, out
