"""A headless peer in one room: the public façade over the parts of y-webrtc's ``Room``.

The API is in ``peer/__init__.py``; the parts, each with one job (docs/peer-library.md):

- :class:`~peer.mesh.Mesh` — the signalling conversation: announce, offers and glare,
  stamps and presence, hence which links exist;
- :class:`~peer.link.Link` — everything about one link (its transport is
  :class:`~peer.connection.PeerConnection`, or any :class:`~peer.link.Transport`);
- :class:`~peer.sync.DocumentSync` — the main and named documents on the links: sync steps,
  the SyncStep1 hold, writer checks, coalescing, relaying;
- :class:`~peer.awareness_sync.AwarenessSync` — awareness under the trust model's rules.

The Room wires them: it reads each received frame once and hands it to the part it belongs
to, runs the one coalescing timer and the anti-entropy timer (docs/protocol.md "Room
topology"), and turns what happens into the public events. The trust
model (docs/protocol.md) is enforced on everything received, with no option to turn it off.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pycrdt import Awareness, Doc

from . import metrics
from . import protocol as p
from .awareness_sync import AwarenessSync
from .connection import aiortc_transports
from .events import Emitter
from .ice import apply_ice_policy, rtc_configuration
from .link import Limits, Link, TransportFactory
from .mesh import PeerInfo, Mesh
from .metrics import Counters
from .rights import NAMED_DOC_WRITERS, Principal
from .roster import Roster
from .signaling_client import SignalingClient
from .sync import DocumentSync

__all__ = ["Room", "PeerInfo", "Limits"]

log = logging.getLogger(__name__)


class Room:
    def __init__(
        self,
        signaling_url: str,
        token: str,
        room_id: str,
        *,
        ice_hosts: Sequence[str] | str | None = None,
        doc: Doc | None = None,
        peer_id: str | None = None,
        signaling: SignalingClient | None = None,
        hold_sync: bool = False,
        ready: asyncio.Event | Awaitable[Any] | None = None,
        max_conns: int = 100,
        coalesce_delay: float = 0.002,
        relay: bool = True,
        limits: Limits | None = None,
        join_timeout: float = 10.0,
        caps: tuple[str, ...] = p.CAPS,
        docs: dict[str, Doc] | None = None,
        transport: TransportFactory | None = None,
        anti_entropy_interval: float = 5.0,
        pending_timeout: float = 10.0,
    ) -> None:
        self.room_id = room_id
        self.ice_hosts = ice_hosts
        self.doc: Doc = doc if doc is not None else Doc()
        # Named documents (type 102): every one the protocol defines, yours where given.
        self.docs: dict[str, Doc] = {name: Doc() for name in NAMED_DOC_WRITERS}
        for name, named in (docs or {}).items():
            if name not in NAMED_DOC_WRITERS:
                raise ValueError(f"unknown named document {name!r} (known: {', '.join(NAMED_DOC_WRITERS)})")
            self.docs[name] = named
        self.awareness = Awareness(self.doc)
        self.coalesce_delay = coalesce_delay
        self.limits = limits or Limits()
        self.join_timeout = join_timeout
        self.anti_entropy_interval = anti_entropy_interval  # seconds (±20 %); 0: none
        self.caps = tuple(caps)  # () behaves like a stock y-webrtc peer (tests, interop)
        self.roster = Roster()
        self._counters = Counters(room_id, self._describe)
        self.stats = self._counters.stats
        self.dropped = self._counters.dropped  # (what, reason) -> count; see peer.rights
        self._own_signaling = signaling is None
        self._signaling = signaling or SignalingClient(signaling_url, token)
        self._transport = transport
        self._events = Emitter(f"room {room_id}")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready_source = ready
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = 0.0
        self._synced_event = asyncio.Event()
        self._mesh = Mesh(
            room_id, self._signaling, peer_id=peer_id or str(uuid.uuid4()), caps=self.caps, max_conns=max_conns,
            limits=self.limits, roster=self.roster, counters=self._counters, spawn=self._spawn,
            on_open=self._link_opened, on_message=self._message, on_closed=self._link_closed,
            on_writable=lambda: self._sync.resume_writing(), pending_timeout=pending_timeout,
        )
        self._sync = DocumentSync(
            self.doc, self.docs, self._mesh.links, roster=self.roster, own_refusal=self._mesh.own_refusal,
            counters=self._counters, events=self._events, schedule_flush=self._schedule_flush, bad=self._bad,
            synced=self._synced, relay=relay, released=not hold_sync and ready is None,
            forward=self._mesh.should_forward,
        )
        if anti_entropy_interval > 0:  # a SyncStep1 crossing ours is not answered with another
            self._sync.ask_window = min(1.0, 0.2 * anti_entropy_interval)
        self._sync.hub = lambda: self._mesh.is_service(self._mesh.peer_id)
        self._aware = AwarenessSync(
            self.awareness, self.limits, principal=self.roster.principal, counters=self._counters,
            events=self._events, schedule_flush=self._schedule_flush,
        )

    @classmethod
    def over(cls, client: SignalingClient, room_id: str, **kwargs: Any) -> "Room":
        """A Room sharing a running service connection (many rooms, one WebSocket)."""
        return cls(client.url, client.token, room_id, signaling=client, **kwargs)

    # ------------------------------------------------------------------ events
    def on_update(self, cb: Callable[[bytes, str], Any]) -> Callable[[], None]:
        return self._events.subscribe("update", cb)

    def on_doc_update(self, cb: Callable[[str, bytes, str], Any]) -> Callable[[], None]:
        """``cb(name, update, origin_peer_id)`` for every remote update applied to ``docs[name]``."""
        return self._events.subscribe("doc_update", cb)

    def on_app(self, cb: Callable[[dict[str, Any], str], Any]) -> Callable[[], None]:
        return self._events.subscribe("app", cb)

    def on_peer(self, cb: Callable[[str, PeerInfo, str], Any]) -> Callable[[], None]:
        return self._events.subscribe("peer", cb)

    def on_awareness(self, cb: Callable[[dict[str, Any], Any], Any]) -> Callable[[], None]:
        return self._events.subscribe("awareness", cb)

    # ------------------------------------------------------------------ state
    @property
    def signaling(self) -> SignalingClient:
        return self._signaling

    @property
    def peer_id(self) -> str:
        return self._mesh.peer_id

    @property
    def peers(self) -> dict[str, PeerInfo]:
        return self._mesh.peers

    @property
    def links(self) -> Mapping[str, Link]:
        """Read-only: peer id -> :class:`~peer.link.Link` (``link.conn`` is the transport)."""
        return MappingProxyType(self._mesh.links)

    @property
    def connected_peers(self) -> list[str]:
        return [pid for pid, link in self._mesh.links.items() if link.open]

    @property
    def max_conns(self) -> int:
        return self._mesh.max_conns

    @max_conns.setter
    def max_conns(self, value: int) -> None:
        self._mesh.max_conns = value

    @property
    def relay(self) -> bool:
        return self._sync.relay

    @relay.setter
    def relay(self, value: bool) -> None:
        self._sync.relay = value

    @property
    def removed(self) -> bool:
        """The server took us out of the room (membership removed): every link closed."""
        return self._mesh.removed

    @property
    def sync_released(self) -> bool:
        return self._sync.released

    def principal(self, peer_id: str) -> Principal | None:
        """Whom ``peer_id`` belongs to, with its *effective* role now (None: never stamped).

        The role is the one the latest presence frame lists for that user (the stamp's until
        presence lists them); a user gone from presence has role None."""
        return self.roster.principal(peer_id)

    def role_of(self, peer_id: str) -> str | None:
        """The effective, live role of a person's peer id (None: a service, gone, or unknown)."""
        return self.roster.role_of(peer_id)

    @property
    def own_principal(self) -> Principal | None:
        """Ourselves as the server sees us (learnt from the echo of our own announce)."""
        return self.roster.principal(self.peer_id)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Join: connect signaling (unless shared), subscribe, announce; return once the
        server echoed our announce. Raises PermissionError when the room is refused."""
        if self._mesh.running:
            return
        self._mesh.start()
        self._sync.running = self._aware.running = True
        if self._transport is None:
            apply_ice_policy(self.ice_hosts)
        if self._own_signaling:
            await self._signaling.start()
        self._mesh.transport = self._transport or aiortc_transports(rtc_configuration(await self._signaling.ice_servers()))
        self._spawn(self._aware.run())
        if self._mesh.mesh:
            self._spawn(self._mesh.reannounce_missing())
            if self.anti_entropy_interval > 0:
                self._spawn(self._anti_entropy())
        if self._ready_source is not None:
            self._spawn(self._wait_ready(self._ready_source))
        await self._signaling.subscribe(self.room_id, self._mesh)
        try:
            await asyncio.wait_for(self._mesh.joined.wait(), self.join_timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise ConnectionError(f"room {self.room_id}: no echo of our announce within {self.join_timeout}s") from None
        if self._mesh.refused:
            code = self._mesh.refused
            await self.stop()
            if code == "forbidden":
                raise PermissionError(f"room {self.room_id}: forbidden")
            raise ConnectionError(f"room {self.room_id}: signaling refused the subscription ({code})")

    async def stop(self) -> None:
        """Leave: flush pending edits, tell peers our awareness is gone, close every link."""
        if not self._mesh.running:
            return
        self._flush()
        self._aware.leave(list(self._mesh.links.values()))
        self._mesh.stop()
        self._sync.running = self._aware.running = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        # The final flush is only queued in SCTP. Let it be acknowledged BEFORE leaving the
        # signaling topic: the others drop our link as soon as presence says we left.
        await asyncio.gather(*(link.conn.drain() for link in list(self._mesh.links.values())), return_exceptions=True)
        await self._signaling.unsubscribe(self.room_id)
        if self._own_signaling:
            await self._signaling.stop()
        await self._mesh.close_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._events.cancel()  # coroutine callbacks still running

    # ------------------------------------------------------------------ documents
    def load(self, update: bytes, doc: str | None = None) -> None:
        """Apply a stored update to the main document (or the named document ``doc``) without
        firing callbacks; broadcast it only if SyncStep1 answers were already released (before
        that, peers get it in their SyncStep2)."""
        self._sync.load(update, doc)

    def release_sync(self) -> None:
        """Answer every held and future SyncStep1 (the stored document is loaded)."""
        self._sync.release_sync()

    async def wait_synced(self, peer_id: str | None = None, timeout: float = 10.0) -> None:
        """Until one peer (any, or ``peer_id``) has sent us its SyncStep2."""

        async def check() -> None:
            while True:
                if peer_id is None and any(i.synced for i in self.peers.values()):
                    return
                if peer_id is not None and self.peers.get(peer_id, PeerInfo(peer_id)).synced:
                    return
                self._synced_event.clear()
                await self._synced_event.wait()

        await asyncio.wait_for(check(), timeout)

    def flush(self) -> None:
        """Send coalesced updates now (normally a timer does it after ``coalesce_delay``)."""
        self._flush()

    # ------------------------------------------------------------------ app messages
    async def send_app(self, peer_id: str, obj: dict[str, Any]) -> bool:
        """A type-101 message to one peer; False if it is not connected or lacks the "app" cap."""
        link = self._mesh.links.get(peer_id)
        if link is None or not link.open or "app" not in link.caps:
            return False
        return link.send(p.encode_app(obj))

    def buffered_amount(self, peer_id: str) -> int:
        """Bytes queued towards ``peer_id`` and not yet taken by SCTP (0 without a link): a
        service answering large requests looks before queuing more (bounded memory)."""
        link = self._mesh.links.get(peer_id)
        return int(getattr(link.conn, "buffered_amount", 0) or 0) if link is not None else 0

    async def broadcast_app(self, obj: dict[str, Any]) -> int:
        """A type-101 message to every connected peer advertising "app"; returns how many."""
        frame = p.encode_app(obj)
        return sum(1 for link in list(self._mesh.links.values()) if link.open and "app" in link.caps and link.send(frame))

    # ------------------------------------------------------------------ links (from the mesh)
    def _link_opened(self, link: Link, info: PeerInfo) -> None:
        self._sync.link_opened(link)
        self._aware.link_opened(link)
        self._events.emit("peer", link.peer_id, info, "connected")

    def _link_closed(self, link: Link, info: PeerInfo, was_connected: bool) -> None:
        self._sync.link_closed(link)
        self._aware.link_closed(link)
        if was_connected:
            self._events.emit("peer", link.peer_id, info, "disconnected")

    def _synced(self, link: Link) -> None:
        info = self._mesh.info(link.peer_id)
        if not info.synced:
            info.synced = link.synced = True
            self._synced_event.set()
            self._events.emit("peer", link.peer_id, info, "synced")

    def _message(self, link: Link, data: bytes) -> None:
        """Every received data-channel message: read once, handed to its part."""
        if not self._mesh.current(link):
            return
        self.stats["frames_in"] += 1
        metrics.received(link.kind, len(data))
        try:
            self._frame(link, data, allow_chunk=True)
        except p.ProtocolError as exc:
            self._bad(link, f"malformed frame: {exc}")
        except Exception as exc:
            self._bad(link, f"frame failed: {exc!r}")
        except BaseException as exc:  # pyo3 PanicException derives from BaseException
            if p.is_fatal(exc):
                raise
            self._bad(link, f"frame crashed the decoder: {exc!r}")
        self._sync.deliver_remote_changes()

    def _frame(self, link: Link, data: bytes, allow_chunk: bool) -> None:
        msg = p.parse_message(data)
        if isinstance(msg, p.SyncMessage):
            if msg.step == p.SYNC_STEP1:
                self._sync.step1(link, msg.payload, None)
            else:
                self._sync.apply_remote(link, msg.payload, msg.step, relayed=msg.relayed)
        elif isinstance(msg, p.DocMessage):
            self.stats["docs_in"] += 1
            if msg.name not in self.docs:
                self._counters.drop("doc_update", "unknown_doc", link.peer_id)
            elif msg.step == p.SYNC_STEP1:
                self._sync.step1(link, msg.payload, msg.name)
            else:
                self._sync.apply_remote(link, msg.payload, msg.step, msg.name)
        elif isinstance(msg, p.AwarenessMessage):
            self.stats["awareness_in"] += 1
            self._aware.apply(link, msg.update)
        elif isinstance(msg, p.QueryAwarenessMessage):
            self._aware.answer_query(link)
        elif isinstance(msg, p.ChunkMessage):
            self.stats["chunks_in"] += 1
            if not allow_chunk:
                raise p.ProtocolError("a chunk inside a chunk")
            whole = link.reassembler.feed(msg)
            if whole is not None:
                self._frame(link, whole, allow_chunk=False)
        elif isinstance(msg, p.AppMessage):
            self._app(link, msg.body)
        elif isinstance(msg, p.LinksMessage):
            if not link.links_bucket.take():
                raise p.ProtocolError("links messages above the rate limit")
            self._mesh.links_received(link, msg.links)
        elif isinstance(msg, p.IgnoredMessage):
            pass
        else:
            self.stats["unknown_types"] += 1
            log.debug("room %s: unknown message type %s from %s", self.room_id, msg.type, link.peer_id)

    def _app(self, link: Link, body: dict[str, Any]) -> None:
        """Type 101: rate-bounded; only from a stamped sender still in the room. What the
        message may ask for is the callee's check (the runner: ``room.principal``)."""
        if not link.app_bucket.take():
            raise p.ProtocolError("app messages above the rate limit")
        self.stats["app_in"] += 1
        remote = link.peer_id
        if self.roster.principal(remote) is None or self.roster.blocked(remote):
            self._counters.drop("app", "unknown_sender" if self.roster.principal(remote) is None else "removed", remote)
            return
        self._events.emit("app", body, remote)

    def _bad(self, link: Link, why: str) -> None:
        self.stats["bad_frames"] += 1
        link.errors += 1
        log.info("room %s: from %s: %s", self.room_id, link.peer_id, why)
        if link.errors > self.limits.errors_before_drop:
            log.warning("room %s: dropping %s after %d bad frames", self.room_id, link.peer_id, link.errors)
            link.conn.close()

    # ------------------------------------------------------------------ the coalescing timer
    def _schedule_flush(self) -> None:
        """Leading edge: after a quiet spell, send on the next loop turn (everything produced
        in this turn goes in one message); during a burst, at most one message per link
        every ``coalesce_delay``."""
        if self._flush_handle is None and self._mesh.running:
            loop = asyncio.get_running_loop()
            wait = self._last_flush + self.coalesce_delay - loop.time()
            if wait <= 0:
                self._flush_handle = loop.call_soon(self._flush)
            else:
                self._flush_handle = loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        try:
            self._last_flush = asyncio.get_running_loop().time()
        except RuntimeError:
            pass
        self._sync.flush()
        self._aware.flush(list(self._mesh.links.values()))

    # ------------------------------------------------------------------ anti-entropy
    async def _anti_entropy(self) -> None:
        """Every ``anti_entropy_interval`` (±20 %, so rooms do not beat in step) a round:
        SyncStep1 on every open link if our documents changed since the last one (or it is the
        catch-all round); the answers repair any update this peer missed (peer.sync)."""
        while self._mesh.running:
            await asyncio.sleep(self.anti_entropy_interval * random.uniform(0.8, 1.2))
            if self._mesh.running and not self._mesh.removed:
                self._sync.anti_entropy()

    def anti_entropy(self) -> int:
        """One anti-entropy round now, changed or not; returns the links asked."""
        return self._sync.anti_entropy(force=True)

    @property
    def pending_links(self) -> int:
        """Links offered or answered whose data channel is not open yet."""
        return self._mesh.pending

    def remote_links(self, peer_id: str) -> frozenset[str] | None:
        """The open links ``peer_id`` last told us it has (type 103); None: nothing told."""
        link = self._mesh.links.get(peer_id)
        return link.remote_links if link is not None else None

    # ------------------------------------------------------------------ helpers
    def _describe(self, peer_id: str) -> str:
        principal = self.roster.principal(peer_id)
        return (principal.service or principal.user_id or "?") if principal is not None else "?"

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("room %s: background task failed", self.room_id, exc_info=task.exception())

    async def _wait_ready(self, ready: asyncio.Event | Awaitable[Any]) -> None:
        if isinstance(ready, asyncio.Event):
            await ready.wait()
        else:
            await ready
        self.release_sync()
