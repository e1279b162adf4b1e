"""A stock y-webrtc client (the unmodified npm package, in headless Chromium, in a private
network namespace) receives a multi-megabyte document from the persistence peer alone.

Chromium takes no data-channel message above 256 KiB and the stock client knows no chunks:
the persistence peer answers its SyncStep1 with bounded updates (peer/segments.py,
docs/protocol.md "Room topology"). The split itself, on every kind of struct, is unit-tested
in tests/test_peer_segments.py.
"""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(400)


def test_a_stock_client_receives_a_multi_megabyte_document(tmp_path) -> None:
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    result = run_driver("stock_big_doc.py", {"workdir": str(tmp_path), "size": 3_000_000}, tmp_path / "driver.log",
                        timeout=360)
    assert result["ok"], result
    assert result["size"] >= 3_000_000 and result["state_bytes"] > 2 * 1024 * 1024
    assert result["synced"] == [True]  # the last segment is the SyncStep2
    assert result["split"] >= 1 and result["unsplittable"] == 0
