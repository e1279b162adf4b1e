"""One link to one remote peer, everything the room keeps about it in one place.

y-webrtc's ``WebrtcConn``: a transport plus the per-link state the room needs — the glare
token of our offer, the remote's capabilities (as both sides share them), whether its
SyncStep2 arrived, the error count and rate buckets that bound what it can make us do, the
reassembly of its chunked messages and the chunking of ours (type 100).

The transport underneath only moves bytes and simple-peer signals: :class:`Transport` is the
interface; :class:`peer.connection.PeerConnection` is the aiortc one, and the tests wire two
rooms through an in-memory one (``tests/helpers/memory_peers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import metrics
from .chunking import Reassembler, split_message
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 64 * 1024  # see bench/peer_bench.py: aiortc moves big messages slower


@dataclass
class Limits:
    """Bounds on what one remote peer can make us do or hold."""

    awareness_per_second: float = 30.0
    awareness_burst: float = 90.0
    awareness_entries: int = 64  # per message
    awareness_clients: int = 512  # remote states held in total
    awareness_per_link: int = 8  # client ids one link may own (a stock client relays its user's other tabs)
    awareness_state_bytes: int = 16 * 1024
    errors_before_drop: int = 20
    app_per_second: float = 50.0
    app_burst: float = 200.0
    links_per_second: float = 20.0  # type-103 links messages (one per change of the sender's links, debounced)
    links_burst: float = 60.0


class Transport(Protocol):
    """What a link needs from the wire: simple-peer signals in and out, one ordered reliable
    channel of binary messages, a close that can be awaited from anywhere."""

    remote_id: str
    initiator: bool

    @property
    def open(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    @property
    def max_message_size(self) -> int:
        """The largest message the remote accepts."""
        ...

    async def start(self) -> None:
        """Initiator: make the channel and send the offer."""

    async def handle_signal(self, signal: dict[str, Any]) -> None:
        """One simple-peer signal from the remote; ValueError on bad input."""

    def send(self, data: bytes) -> bool: ...

    async def drain(self, timeout: float = 2.0) -> bool: ...

    def close(self) -> "asyncio.Future[None]": ...

    async def aclose(self, timeout: float = 5.0) -> None: ...


SendSignal = Callable[[dict[str, Any]], Awaitable[None]]
TransportFactory = Callable[
    [str, bool, SendSignal, Callable[[], None], Callable[[bytes], None], Callable[[], None]], Transport
]
"""``factory(remote_id, initiator, send_signal, on_open, on_message, on_closed)``."""


class Link:
    """Per-link state; ``conn`` is set right after construction (the transport's callbacks
    need the link)."""

    __slots__ = (
        "peer_id", "initiator", "conn", "caps", "glare_token", "replaced", "synced", "errors",
        "awareness_bucket", "app_bucket", "links_bucket", "reassembler", "chunk_size", "dropped_oversize",
        "created", "remote_links", "sent_links", "service", "step2_docs", "_next_message_id", "_stats",
    )

    def __init__(
        self, peer_id: str, initiator: bool, caps: frozenset[str], limits: Limits, stats: dict[str, int] | None = None
    ) -> None:
        self.peer_id = peer_id
        self.initiator = initiator
        self.conn: Transport = None  # type: ignore[assignment]
        self.caps = caps  # the remote's caps that we share (announce/signal ``caps``)
        self.glare_token: float | None = None  # y-webrtc: ``Date.now() + Math.random()`` of our first signal
        self.replaced = False  # closed because a newer offer from the same peer replaced it
        self.synced = False  # its SyncStep2 of the main document arrived
        self.step2_docs: set[str | None] = set()  # documents whose SyncStep2 arrived (None: main); later ones are repairs
        self.errors = 0  # bad frames so far
        self.awareness_bucket = TokenBucket(limits.awareness_per_second, limits.awareness_burst)
        self.app_bucket = TokenBucket(limits.app_per_second, limits.app_burst)
        self.links_bucket = TokenBucket(limits.links_per_second, limits.links_burst)
        self.reassembler = Reassembler()
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.dropped_oversize = 0  # frames too big for a peer that cannot reassemble chunks
        self.created = time.monotonic()
        # mesh (docs/protocol.md "Room topology"): the remote's open links as its last type-103
        # message said (None: nothing said yet), and what we last told it about ours
        self.remote_links: frozenset[str] | None = None
        self.sent_links: frozenset[str] | None = None
        self.service = False  # the remote is a service peer (never counts against max_conns)
        self._next_message_id = 0
        self._stats = stats if stats is not None else {}  # the room's: counts ``frames_out``

    @property
    def kind(self) -> str:
        """``service``, ``mesh`` or ``stock``: the metrics' link type."""
        return "service" if self.service else "mesh" if "mesh" in self.caps else "stock"

    @property
    def open(self) -> bool:
        return self.conn.open

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def send(self, frame: bytes) -> bool:
        """Send one y-protocols frame, in chunks (type 100) when too big and the remote takes them."""
        if self._send(frame):
            self._stats["frames_out"] = self._stats.get("frames_out", 0) + 1
            metrics.count_sent(frame)
            return True
        return False

    def _send(self, frame: bytes) -> bool:
        conn = self.conn
        if not conn.open:
            return False
        limit = conn.max_message_size
        if len(frame) <= self.chunk_size and len(frame) <= limit:
            return conn.send(frame)  # the per-keystroke case
        if len(frame) <= limit and "chunk" not in self.caps:
            return conn.send(frame)
        if "chunk" not in self.caps:
            self.dropped_oversize += 1
            log.warning("dropping a %d-byte message to %s: above its %d-byte limit and it cannot reassemble chunks",
                        len(frame), self.peer_id, limit)
            return False
        self._next_message_id += 1
        for part in split_message(frame, min(limit, self.chunk_size), self._next_message_id):
            if not conn.send(part):
                return False
        return True

    def forget(self) -> None:
        """The link closed: free what it held."""
        self.reassembler.clear()
