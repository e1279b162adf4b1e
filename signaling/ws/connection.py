"""One ``/signal`` client: who it is, what it subscribed, and a bounded outgoing queue.

Fan-out never awaits a socket: it hands the (already serialized and framed) bytes to each
receiver, which collects them for the current event-loop iteration and writes them with one
``transport.write`` at its end; a socket that does not keep up gets a bounded queue drained
by a writer task. A receiver whose queue is full has stopped reading; it is dropped (close
4008) instead of being buffered for without bound.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from peer.ratelimit import TokenBucket

from ..principal import Principal
from . import metrics
from .limits import Limits
from .protocol import CLOSE_SLOW_CONSUMER, dumpb

log = logging.getLogger("codesync.signal")


def encode_text_frame(text: str | bytes) -> bytes:
    """One complete, unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2).

    Server frames are never masked; ``/signal`` never negotiates permessage-deflate, so this
    is the whole encoding. Built once per published message and shared by all receivers.
    ``text`` may already be UTF-8 bytes (publish frames are built as bytes).
    """
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        principal: Principal,
        limits: Limits,
        transport: Any = None,
        drain: Callable[[], Awaitable[None]] | None = None,
    ):
        self.id = uuid.uuid4().hex[:16]
        self.ws = ws
        self.principal = principal
        self.limits = limits
        self.transport = transport
        self.drain = drain  # the HTTP writer's drain(): waits while the socket is paused
        # topic -> role ("owner"/"editor"/"viewer"; None for service connections)
        self.roles: dict[str, str | None] = {}
        # topic -> peer ids this connection used as ``from`` in that topic (for presence)
        self.peer_ids: dict[str, set[str]] = {}
        self.bound: set[str] = set()  # every peer id bound to this connection
        # topics in which this connection's latest caps listed "roles" (it enforces the trust
        # model on what it receives; docs/protocol.md): a viewer may be linked to it
        self.enforcing: set[str] = set()
        # topics this connection was dropped from after losing its membership while connected
        self.revoked: set[str] = set()
        self._stamps: dict[str | None, bytes] = {}  # role -> serialized ``sender`` stamp
        self.bucket = TokenBucket(limits.rate, limits.burst)
        self.strikes = 0
        self.closing = False  # decided to close (e.g. after too many strikes): ignore further frames
        self.closed = False
        self._queue: deque[bytes] = deque()
        self._batch: list[bytes] | None = None  # frames sent during this loop iteration
        self._roomy = asyncio.Event()  # set while the queue is at most half full
        self._roomy.set()
        self._writer: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None

    # ------------------------------------------------------------------ identity
    @property
    def is_service(self) -> bool:
        return self.principal.is_service

    @property
    def principal_key(self) -> str:
        """Same string for every connection of one user (or one service scope)."""
        if self.principal.service:
            return f"s:{self.principal.service}"
        return f"u:{self.principal.user_id}"

    def enforces(self, topic: str) -> bool:
        """Whether this connection's peers enforce roles in ``topic`` (services always do)."""
        return self.principal.service is not None or topic in self.enforcing

    def note_caps(self, topic: str, roles: bool) -> bool:
        """Record whether this connection's caps in ``topic`` list "roles"; True if that changed."""
        if roles == (topic in self.enforcing):
            return False
        if roles:
            self.enforcing.add(topic)
        else:
            self.enforcing.discard(topic)
        return True

    def sender(self, topic: str) -> dict[str, Any]:
        """The ``sender`` stamp on this connection's publishes in ``topic``."""
        if self.principal.service:
            return {"service": self.principal.service}
        return {"user_id": self.principal.user_id, "name": self.principal.name, "role": self.roles.get(topic)}

    def sender_json(self, topic: str) -> bytes:
        """:meth:`sender` serialized, cached per role (it is stamped on every publish)."""
        role = self.roles.get(topic)
        stamp = self._stamps.get(role)
        if stamp is None:
            stamp = self._stamps[role] = dumpb(self.sender(topic))
        return stamp

    def entry(self, topic: str) -> dict[str, Any]:
        """This connection's presence record in ``topic`` (compact; also stored in Redis).

        ``e``: it enforces roles (what another node needs to decide a relay to its peer ids)."""
        return {
            "u": self.principal.user_id,
            "n": self.principal.name,
            "r": self.roles.get(topic),
            "s": self.principal.service,
            "p": sorted(self.peer_ids.get(topic, ())),
            "e": 1 if self.enforces(topic) else 0,
        }

    # ------------------------------------------------------------------ sending
    def send(self, text: str) -> None:
        metrics.MESSAGES_OUT.inc()
        self.send_frame(encode_text_frame(text))

    def send_frame(self, frame: bytes) -> None:
        """Queue one already-framed text message (see :func:`encode_text_frame`).

        Frames sent during one event-loop iteration are collected and written with one
        ``transport.write`` at the end of it (:func:`_flush_batches`): one syscall per
        receiver per iteration instead of one per frame. The more the server falls behind,
        the more frames each write carries — it gets cheaper exactly when it has to.
        """
        if self.closed:
            return
        batch = self._batch
        if batch is None:
            self._batch = [frame]
            _DIRTY.append(self)
            _schedule_flush()
        else:
            batch.append(frame)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        if not batch or self.closed:
            return
        transport = self.transport
        if not self._queue and transport is not None and not transport.is_closing():
            # Fast path: nothing queued and the socket keeps up -> straight into the transport.
            if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
                transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
                return
        # Otherwise the frames wait in a bounded queue drained by a writer task that honours
        # TCP backpressure.
        for frame in batch:
            if len(self._queue) >= self.limits.send_queue:
                metrics.REFUSALS.labels("slow_consumer").inc()
                log.info("dropping connection %s: send buffer full (client stopped reading)", self.id)
                self.close(CLOSE_SLOW_CONSUMER, "send buffer overflow: client is not reading")
                return
            self._queue.append(frame)
        if len(self._queue) > self.limits.send_queue // 2:
            self._roomy.clear()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._flush(), name=f"signal-writer-{self.id}")

    async def backpressure(self) -> None:
        """Wait (before reading this client's next frame) while its own replies pile up.

        A client bursting pings must not overflow its own queue just because the reader
        loop runs ahead of the writer; one that stops reading stalls here, and overflows
        (and is dropped) only through what others publish to it.
        """
        if not self._roomy.is_set():
            await self._roomy.wait()

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue and not self.closed:
                if self.drain is not None:
                    await self.drain()  # returns at once unless the socket is paused
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                high = transport.get_write_buffer_limits()[1]
                while queue and transport.get_write_buffer_size() <= high:
                    chunk = [queue.popleft() for _ in range(min(64, len(queue)))]
                    transport.write(b"".join(chunk))
                if len(queue) <= self.limits.send_queue // 2:
                    self._roomy.set()
                if queue and not self.closed and self.drain is None:
                    await asyncio.sleep(0.01)  # no drain hook: poll gently
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - a broken socket must not kill the server
            log.debug("writer of %s failed", self.id, exc_info=True)

    # ------------------------------------------------------------------ closing
    def close(self, code: int, message: str) -> None:
        """Close once, from any task; aborts the transport if the close handshake stalls."""
        if self.closed:
            return
        if self._batch and code != CLOSE_SLOW_CONSUMER:
            self._flush_batch()  # e.g. the error frame that explains this close goes first
            if self.closed:
                return
        self.closed = True
        self._roomy.set()
        self._closer = asyncio.create_task(self._close(code, message))

    def close_soon(self, code: int, message: str, grace: float = 0.5) -> None:
        """Stop handling frames now; let already-queued frames (an ``error``) go out, then close."""
        if self.closed or self.closing:
            return
        self.closing = True
        asyncio.ensure_future(self._flush_then_close(code, message, grace))

    async def _flush_then_close(self, code: int, message: str, grace: float) -> None:
        try:
            await asyncio.wait_for(self._drain(), grace)
        except asyncio.TimeoutError:
            pass
        self.close(code, message)

    async def _drain(self) -> None:
        while (self._queue or self._batch) and not self.closed:
            await asyncio.sleep(0.005)

    async def _close(self, code: int, message: str) -> None:
        if self._writer is not None:
            self._writer.cancel()
        closing = asyncio.ensure_future(self.ws.close(code=code, message=message.encode()[:120]))
        # asyncio.wait, not wait_for: a close stuck behind a full socket must not hold us.
        done, _ = await asyncio.wait({closing}, timeout=2.0)
        if not done:
            closing.cancel()
            self.abort()
        elif self.transport is not None and code == CLOSE_SLOW_CONSUMER:
            self.abort()  # its buffer will never drain: a graceful transport close would wait forever
        elif self.transport is not None:
            # A graceful close flushes the buffer first; don't let a non-reader keep it alive.
            asyncio.get_running_loop().call_later(5.0, self.transport.abort)

    def abort(self) -> None:
        """Cut the TCP connection (the reader loop then ends and the hub forgets us)."""
        self.closed = True
        self._roomy.set()
        if self.transport is not None:
            self.transport.abort()

    async def finish(self) -> None:
        """Called once the reader loop ended: stop the writer."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


# ----------------------------------------------------------------------------- write batching
_DIRTY: list[Connection] = []  # connections with frames sent during this loop iteration
_flush_loop: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on


def _schedule_flush() -> None:
    global _flush_loop
    loop = asyncio.get_running_loop()
    if _flush_loop is not loop:
        _flush_loop = loop
        loop.call_soon(_flush_batches)


def _flush_batches() -> None:
    """Write every connection's frames of the iteration that just ran (one write each)."""
    global _flush_loop
    _flush_loop = None
    dirty = _DIRTY[:]
    _DIRTY.clear()
    for conn in dirty:
        try:
            conn._flush_batch()
        except Exception:  # noqa: BLE001 - one broken socket must not starve the others
            log.debug("writing to %s failed", conn.id, exc_info=True)
            conn.abort()
