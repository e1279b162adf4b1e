"""Prometheus metrics of ``/signal`` (exposed by ``GET /metrics``, signaling/api/ops.py).

Module-level singletons in the default registry: one set per process, however many apps.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("codesync_signal_connections", "open /signal WebSockets on this node", ["kind"])
ROOMS = Gauge("codesync_signal_rooms", "topics with at least one subscriber on this node")
MESSAGES_IN = Counter("codesync_signal_messages_in_total", "frames received from clients", ["type"])
MESSAGES_OUT = Counter("codesync_signal_messages_out_total", "frames queued to clients")
REFUSALS = Counter("codesync_signal_refusals_total", "refused connections, frames and subscriptions", ["reason"])
FANOUT = Histogram(
    "codesync_signal_fanout_seconds",
    "publish received (on any node) -> queued to this node's subscribers",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOKUPS = Counter(
    "codesync_signal_membership_lookups_total",
    "room memberships looked up in the database for subscribe frames (at most the topic cap per frame)",
)
