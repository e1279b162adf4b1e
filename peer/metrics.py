"""What a room counts: ``room.stats``, ``room.dropped`` and the Prometheus counter
``codesync_peer_dropped_total`` (exposed by the service processes' ops servers).

Counted in every process that uses :class:`peer.room.Room`; only ``codesync persist`` and
``codesync runner`` serve ``/metrics``, so that is where operators see them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

DROPPED = Counter(
    "codesync_peer_dropped_total",
    "received messages a peer refused under the trust model, by what and why",
    ["what", "reason"],
)
"""``what``: ``update`` (main document), ``doc_update`` (named document), ``awareness``
(entries), ``app``, ``signal``; ``reason``: see :mod:`peer.rights` (plus ``rate`` and the
awareness gate's reasons)."""

LINK_KINDS = ("mesh", "stock", "service")  # peer.link.Link.kind

MESSAGES_IN = Counter("codesync_peer_messages_received_total", "data-channel messages received, by link type", ["link"])
BYTES_IN = Counter("codesync_peer_bytes_received_total", "data-channel bytes received, by link type", ["link"])
MESSAGES_SENT = Counter(
    "codesync_peer_messages_sent_total",
    "data-channel messages sent, by message kind (sync_step1, sync_step2, update, relayed, awareness, app, doc, links, other)",
    ["kind"],
)
MESSAGES_FORWARDED = Counter(
    "codesync_peer_messages_forwarded_total",
    "update messages sent that carry updates received on another link (the forward rule), by the target's link type",
    ["link"],
)
BYTES_FORWARDED = Counter("codesync_peer_bytes_forwarded_total", "bytes of those messages, by link type", ["link"])
DUPLICATES = Counter("codesync_peer_duplicate_updates_total", "received Update messages that changed nothing (a copy)")
PENDING_LINKS = Gauge("codesync_peer_pending_links", "links offered or answered whose data channel is not open yet")
PENDING_TIMEOUTS = Counter("codesync_peer_pending_timeouts_total", "links closed because they did not open in time")
REFUSALS = Counter(
    "codesync_peer_refusals_total", "offers refused (full, viewers), by direction and reason", ["direction", "reason"]
)
REPAIRS = Counter(
    "codesync_peer_anti_entropy_repairs_total",
    "SyncStep2 answers to a periodic state-vector exchange that changed our document (a missed update repaired)",
)
OVERSIZE = Counter(
    "codesync_peer_oversize_total",
    "document sync messages above the limit of a peer without chunks: split into bounded updates (what=split) "
    "or holding one value above it, not sent (what=unsplittable)",
    ["what"],
)
_IN = {kind: (MESSAGES_IN.labels(kind), BYTES_IN.labels(kind)) for kind in LINK_KINDS}
_FWD = {kind: (MESSAGES_FORWARDED.labels(kind), BYTES_FORWARDED.labels(kind)) for kind in LINK_KINDS}

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
        # room topology (docs/protocol.md "Room topology")
        "updates_in": 0,  # main-document Update messages received (copies of keystrokes)
        "duplicates": 0,  # received Update messages (main/named) that changed nothing: copies
        "forwarded": 0,  # Update messages sent carrying updates received on another link
        "forwarded_bytes": 0,
        "repairs": 0,  # anti-entropy SyncStep2 answers that changed our document
        "anti_entropy_rounds": 0,
        "anti_entropy_skipped": 0,  # rounds skipped: nothing changed since the last one
        "anti_entropy_asked": 0,  # links asked over all rounds
        "pending_timeouts": 0,
        "refusals_sent": 0,
        "refusals_received": 0,
        "links_in": 0,  # type-103 messages taken
        "links_malformed": 0,
        "oversize_split": 0,  # SyncStep2 answers to stock peers sent as several bounded updates
        "oversize_unsplittable": 0,  # ... that could not be split
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


def received(kind: str, size: int) -> None:
    """One data-channel message of ``size`` bytes on a link of type ``kind``."""
    messages, octets = _IN[kind]
    messages.inc()
    octets.inc(size)


def forwarded(kind: str, size: int) -> None:
    """One update message carrying relayed updates sent on a link of type ``kind``."""
    messages, octets = _FWD[kind]
    messages.inc()
    octets.inc(size)


_SYNC_KINDS = {0: "sync_step1", 1: "sync_step2", 2: "update"}
_KINDS = {1: "awareness", 101: "app", 102: "doc", 103: "links", 104: "relayed"}
_SENT = {kind: MESSAGES_SENT.labels(kind) for kind in (*_SYNC_KINDS.values(), *_KINDS.values(), "other")}


def count_sent(frame: bytes) -> None:
    """One y-protocols frame sent on a link, counted by its kind (what a big room's service
    peers spend their sends on: issue 15)."""
    first = frame[0] if frame else -1
    if first == 0:
        kind = _SYNC_KINDS.get(frame[1] if len(frame) > 1 else -1, "other")
    else:
        kind = _KINDS.get(first, "other")
    _SENT[kind].inc()
