"""Prometheus metrics of the peer library, exposed by the service processes' ops servers.

Counted in every process that uses :class:`peer.room.Room`; only ``codesync persist`` and
``codesync runner`` serve ``/metrics``, so that is where operators see them.
"""

from __future__ import annotations

from prometheus_client import Counter

DROPPED = Counter(
    "codesync_peer_dropped_total",
    "received messages a peer refused under the trust model, by what and why",
    ["what", "reason"],
)
"""``what``: ``update`` (main document), ``doc_update`` (named document), ``awareness``
(entries), ``app``, ``signal``; ``reason``: see :mod:`peer.rights` (plus ``rate`` and the
awareness gate's reasons)."""
