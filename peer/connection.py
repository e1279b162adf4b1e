"""One WebRTC link to one remote peer: RTCPeerConnection + one data channel (aiortc).

Speaks simple-peer's signal format (what y-webrtc relays through signaling):
``{"type":"offer"|"answer","sdp":...}`` and
``{"type":"candidate","candidate":{"candidate","sdpMLineIndex","sdpMid"}}``.
aiortc gathers every local candidate before ``setLocalDescription`` returns, so our own
candidates travel inside the SDP (no trickle out); browsers trickle theirs, which we add
with ``addIceCandidate`` — queued until the remote description is set.

Closing goes through ONE shielded task: if the task running aiortc's
``RTCPeerConnection.close()`` is cancelled midway, every later ``close()`` hangs forever
(DESIGN.md, "The WebRTC testbed").

This module is transport only (a :class:`peer.link.Transport`): bytes in, bytes out. Glare
tokens, caps, chunking and everything the bytes mean belong to :class:`peer.link.Link` and
the room.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from .link import TransportFactory

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 65536
MAX_SEND_SIZE = 256 * 1024  # Chromium never sends above this; do not go above it either
MAX_PENDING_CANDIDATES = 64


def _aiortc_task(context: dict[str, Any]) -> bool:
    """The unretrieved exception is a ConnectionError of one of aiortc's (or aioice's) own
    fire-and-forget tasks — e.g. ``RTCPeerConnection.__connect`` still starting SCTP when its
    link was closed (a pending link timing out, a glare). aiortc never awaits those tasks
    (aiortc issue #1040), so asyncio would print a traceback for a link we closed on purpose."""
    exc = context.get("exception")
    future = context.get("future")
    coro = future.get_coro() if isinstance(future, asyncio.Task) else None
    filename = getattr(getattr(coro, "cr_code", None), "co_filename", "")
    return isinstance(exc, ConnectionError) and ("/aiortc/" in filename or "/aioice/" in filename)


def quiet_closed_link_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log aiortc's unretrieved task errors of closed links as one line; pass anything else
    to the loop's previous handler. Idempotent per loop."""
    previous = loop.get_exception_handler()
    if getattr(previous, "codesync_quiet", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _aiortc_task(context):
            log.info("aiortc: %s (a task of a link that was closed)", context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.codesync_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def aiortc_transports(configuration: RTCConfiguration) -> TransportFactory:
    """The default way a room makes links: aiortc with this ICE configuration."""

    def make(
        remote_id: str,
        initiator: bool,
        send_signal: Callable[[dict[str, Any]], Awaitable[None]],
        on_open: Callable[[], None],
        on_message: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> PeerConnection:
        quiet_closed_link_errors(asyncio.get_running_loop())
        return PeerConnection(remote_id, initiator, configuration, send_signal, on_open, on_message, on_closed)

    return make


class PeerConnection:
    def __init__(
        self,
        remote_id: str,
        initiator: bool,
        configuration: RTCConfiguration,
        send_signal: Callable[[dict[str, Any]], Awaitable[None]],
        on_open: Callable[[], None],
        on_message: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        self.remote_id = remote_id
        self.initiator = initiator
        self._opened_once = False
        self._send_signal = send_signal
        self._on_open = on_open
        self._on_message = on_message
        self._on_closed = on_closed
        self._pc = RTCPeerConnection(configuration)
        self._channel: RTCDataChannel | None = None
        self._remote_set = False
        self._pending_candidates: list[dict[str, Any]] = []
        self._signal_lock = asyncio.Lock()
        self._close_task: asyncio.Task[None] | None = None
        self._pc.on("connectionstatechange", self._state_changed)
        self._pc.on("datachannel", self._channel_arrived)

    # ------------------------------------------------------------------ state
    @property
    def open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open" and self._close_task is None

    @property
    def closed(self) -> bool:
        return self._close_task is not None

    @property
    def max_message_size(self) -> int:
        """What the remote accepts (its SDP ``max-message-size``; 0 = any), capped at 256 KiB."""
        sctp = self._pc.sctp
        size = getattr(sctp, "_remote_max_message_size", DEFAULT_MAX_MESSAGE_SIZE) if sctp else DEFAULT_MAX_MESSAGE_SIZE
        return MAX_SEND_SIZE if not size else min(int(size), MAX_SEND_SIZE)

    @property
    def buffered_amount(self) -> int:
        return self._channel.bufferedAmount if self._channel is not None else 0

    def _unsent(self) -> bool:
        """Data still queued here or not yet acknowledged by the remote's SCTP stack."""
        if self.buffered_amount:
            return True
        sctp = self._pc.sctp
        queues = ("_data_channel_queue", "_outbound_queue", "_sent_queue")
        return any(getattr(sctp, name, None) for name in queues)

    async def drain(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until everything sent so far is acknowledged, so a close right
        after the last edit does not drop it (found by the soak: ``Room.stop()`` lost the
        final flush about one time in five). True when drained."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open and self._unsent():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # ------------------------------------------------------------------ signalling
    async def start(self) -> None:
        """Initiator only: make the channel and send the offer (candidates included)."""
        assert self.initiator
        async with self._signal_lock:
            if self.closed:
                return
            self._attach(self._pc.createDataChannel("codesync"))
            await self._pc.setLocalDescription(await self._pc.createOffer())
            if self.closed:
                return
            await self._send_signal({"type": self._pc.localDescription.type, "sdp": self._pc.localDescription.sdp})

    async def handle_signal(self, signal: dict[str, Any]) -> None:
        """Apply one simple-peer signal from the remote. Raises ValueError on bad input."""
        kind = signal.get("type")
        async with self._signal_lock:
            if self.closed:
                return
            if kind in ("offer", "answer"):
                sdp = signal.get("sdp")
                if not isinstance(sdp, str) or not sdp:
                    raise ValueError(f"{kind} without sdp")
                if kind == "offer" and self.initiator:
                    raise ValueError("an initiator cannot take an offer")  # the Room replaces us
                if kind == "answer" and (not self.initiator or self._remote_set):
                    raise ValueError("unexpected answer")
                await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
                self._remote_set = True
                for cand in self._pending_candidates:
                    await self._add_candidate(cand)
                self._pending_candidates.clear()
                if kind == "offer":
                    await self._pc.setLocalDescription(await self._pc.createAnswer())
                    if not self.closed:
                        await self._send_signal({"type": "answer", "sdp": self._pc.localDescription.sdp})
            elif kind == "candidate":
                candidate = signal.get("candidate")
                if not isinstance(candidate, dict):
                    raise ValueError("candidate without candidate")
                if not self._remote_set:
                    if len(self._pending_candidates) >= MAX_PENDING_CANDIDATES:
                        raise ValueError("too many candidates before the description")
                    self._pending_candidates.append(candidate)
                else:
                    await self._add_candidate(candidate)
            # "renegotiate" / "transceiverRequest" (simple-peer media) do not concern a data peer

    async def _add_candidate(self, cand: dict[str, Any]) -> None:
        text = cand.get("candidate")
        if text in ("", None):  # end of candidates
            try:
                await self._pc.addIceCandidate(None)
            except ValueError:
                pass  # already ended
            return
        if not isinstance(text, str):
            raise ValueError("candidate is not a string")
        try:
            candidate = candidate_from_sdp(text.removeprefix("a=").removeprefix("candidate:"))
        except (AssertionError, ValueError, IndexError) as exc:
            raise ValueError(f"unparsable candidate {text[:80]!r}") from exc
        mid = cand.get("sdpMid")
        index = cand.get("sdpMLineIndex")
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await self._pc.addIceCandidate(candidate)

    # ------------------------------------------------------------------ channel
    def _channel_arrived(self, channel: RTCDataChannel) -> None:
        if self._channel is not None or self.closed:
            log.info("peer %s opened a second data channel; ignoring it", self.remote_id)
            return
        self._attach(channel)
        if channel.readyState == "open":
            self._opened()

    def _attach(self, channel: RTCDataChannel) -> None:
        self._channel = channel
        channel.on("open", self._opened)
        channel.on("message", self._received)
        channel.on("close", self.close)

    def _opened(self) -> None:
        if not self._opened_once and not self.closed:
            self._opened_once = True
            self._on_open()

    def _received(self, data: bytes | str) -> None:
        if self.closed:
            return
        if isinstance(data, str):
            data = data.encode("utf-8")  # y-webrtc always sends binary; be lenient
        self._on_message(data)

    def _state_changed(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            log.info("link to %s is %s", self.remote_id, self._pc.connectionState)
            self.close()

    def send(self, data: bytes) -> bool:
        """Send one message as is (the link chunks what is too big); False when not open."""
        channel = self._channel
        if channel is None or channel.readyState != "open" or self.closed:
            return False
        try:
            channel.send(data)
        except Exception as exc:  # aiortc raises plain exceptions on a dying transport
            log.info("send to %s failed: %s", self.remote_id, exc)
            self.close()
            return False
        return True

    # ------------------------------------------------------------------ closing
    def close(self) -> asyncio.Task[None]:
        """Close once; every caller gets the same shielded-able task."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        return self._close_task

    async def aclose(self, timeout: float = 5.0) -> None:
        task = self.close()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.TimeoutError:
            log.warning("closing the link to %s took over %.0fs", self.remote_id, timeout)

    async def _close(self) -> None:
        try:
            await self._pc.close()
        except Exception:
            log.debug("error while closing the link to %s", self.remote_id, exc_info=True)
        finally:
            try:
                self._on_closed()
            except Exception:
                log.exception("close handler failed")
