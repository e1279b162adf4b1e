"""The chunk extension (message type 100): one large frame as several small ones.

aiortc and Chromium refuse to send a message above the peer's ``max-message-size``, and
y-webrtc never splits, so a large SyncStep2 (a 5 MB document) could not travel at all.
The sender wraps the whole y-protocols frame in ``chunk(messageId, index, count, part)``
frames; the receiver reassembles them in order. Only peers that advertised the ``chunk``
capability are sent chunks.

Reassembly is bounded: bytes per message, bytes held across all pending messages, pending
messages, and time since a message's last part. A violation drops that message (and the
caller may drop the connection); it never grows memory without limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .protocol import ChunkMessage, ProtocolError, encode_chunk

CHUNK_HEADER_MAX = 1 + 3 * 8 + 8  # type + three varUints (53 bits) + the part's length


def split_message(frame: bytes, max_size: int, message_id: int) -> list[bytes]:
    """``[frame]`` when it fits in ``max_size``, else chunk frames each within ``max_size``."""
    if len(frame) <= max_size:
        return [frame]
    part_size = max_size - CHUNK_HEADER_MAX
    if part_size <= 0:
        raise ValueError(f"max_size {max_size} leaves no room for a chunk")
    count = (len(frame) + part_size - 1) // part_size
    view = memoryview(frame)
    return [
        encode_chunk(message_id, i, count, bytes(view[i * part_size : (i + 1) * part_size])) for i in range(count)
    ]


@dataclass
class _Pending:
    count: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    last: float = 0.0


class Reassembler:
    """Collects chunk frames from ONE remote peer (the channel is reliable and ordered)."""

    def __init__(
        self,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_total_bytes: int = 96 * 1024 * 1024,
        max_pending: int = 8,
        timeout: float = 30.0,
        max_parts: int = 1 << 16,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_total_bytes = max_total_bytes
        self.max_pending = max_pending
        self.timeout = timeout
        self.max_parts = max_parts
        self._pending: dict[int, _Pending] = {}
        self._total = 0

    @property
    def pending_bytes(self) -> int:
        return self._total

    @property
    def pending_messages(self) -> int:
        return len(self._pending)

    def _drop(self, message_id: int) -> None:
        p = self._pending.pop(message_id, None)
        if p is not None:
            self._total -= p.size

    def expire(self, now: float | None = None) -> int:
        """Forget messages whose last part is older than ``timeout``; returns how many."""
        now = time.monotonic() if now is None else now
        stale = [mid for mid, p in self._pending.items() if now - p.last > self.timeout]
        for mid in stale:
            self._drop(mid)
        return len(stale)

    def feed(self, chunk: ChunkMessage, now: float | None = None) -> bytes | None:
        """Add one part; returns the whole frame after its last part, else None.

        Raises ProtocolError (and forgets that message) on out-of-order parts, a changed
        count, or any bound exceeded.
        """
        now = time.monotonic() if now is None else now
        self.expire(now)
        mid = chunk.message_id
        if chunk.count > self.max_parts:
            self._drop(mid)
            raise ProtocolError(f"chunked message of {chunk.count} parts")
        p = self._pending.get(mid)
        if p is None:
            if chunk.index != 0:
                raise ProtocolError(f"chunk {chunk.index} of unknown message {mid}")
            if len(self._pending) >= self.max_pending:
                raise ProtocolError("too many chunked messages in flight")
            p = self._pending[mid] = _Pending(count=chunk.count)
        if chunk.count != p.count or chunk.index != len(p.parts):
            self._drop(mid)
            raise ProtocolError(f"chunk {chunk.index}/{chunk.count} out of order for message {mid}")
        size = len(chunk.part)
        if p.size + size > self.max_message_bytes or self._total + size > self.max_total_bytes:
            self._drop(mid)
            raise ProtocolError("chunked message exceeds the size limit")
        p.parts.append(chunk.part)
        p.size += size
        p.last = now
        self._total += size
        if len(p.parts) < p.count:
            return None
        self._drop(mid)
        return b"".join(p.parts)

    def clear(self) -> None:
        self._pending.clear()
        self._total = 0
