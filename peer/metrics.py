"""What a room counts: ``room.stats``, ``room.dropped`` and the Prometheus counter
``codesync_peer_dropped_total`` (exposed by the service processes' ops servers).

Counted in every process that uses :class:`peer.room.Room`; only ``codesync persist`` and
``codesync runner`` serve ``/metrics``, so that is where operators see them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter

log = logging.getLogger(__name__)

DROPPED = Counter(
    "codesync_peer_dropped_total",
    "received messages a peer refused under the trust model, by what and why",
    ["what", "reason"],
)
"""``what``: ``update`` (main document), ``doc_update`` (named document), ``awareness``
(entries), ``app``, ``signal``; ``reason``: see :mod:`peer.rights` (plus ``rate`` and the
awareness gate's reasons)."""

DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about one kind of refusal


def new_stats() -> dict[str, int]:
    return {
        "frames_in": 0,
        "frames_out": 0,
        "bad_frames": 0,
        "rejected_updates": 0,
        "awareness_dropped": 0,
        "unknown_types": 0,
        "awareness_in": 0,
        "chunks_in": 0,
        "app_in": 0,
        "docs_in": 0,
        "updates_dropped": 0,  # main and named document updates refused (see ``dropped``)
        "withheld_updates": 0,  # our own edits not sent: we may not write (viewer, removed)
    }


class Counters:
    """One room's counts. ``describe(peer_id)`` names the sender in the (rate-limited) log line."""

    def __init__(self, room_id: str, describe: Callable[[str], str]) -> None:
        self.room_id = room_id
        self.stats = new_stats()
        self.dropped: dict[tuple[str, str], int] = {}  # (what, reason) -> count; see peer.rights
        self._describe = describe
        self._drop_logged: dict[tuple[str, str], float] = {}

    def drop(self, what: str, reason: str, peer_id: str, n: int = 1) -> None:
        """Count (and now and then log) something the trust model refused."""
        key = (what, reason)
        self.dropped[key] = self.dropped.get(key, 0) + n
        if what in ("update", "doc_update"):
            self.stats["updates_dropped"] += n
        elif what == "awareness":
            self.stats["awareness_dropped"] += n
        DROPPED.labels(what, reason).inc(n)
        now = time.monotonic()
        if now - self._drop_logged.get(key, -DROP_LOG_INTERVAL) >= DROP_LOG_INTERVAL:
            self._drop_logged[key] = now
            log.info("room %s: dropped %s from %s (%s): %s (further ones counted, logged every %.0fs)",
                     self.room_id, what, peer_id, self._describe(peer_id), reason, DROP_LOG_INTERVAL)
