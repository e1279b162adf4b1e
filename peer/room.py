"""A headless peer in one room: signaling + a WebRTC mesh + a pycrdt document.

Follows y-webrtc's rules so browsers running stock y-webrtc interoperate:

- on (re)subscribing, publish ``announce``; whoever receives an ``announce`` initiates a
  connection to its sender (while below ``max_conns``);
- every ``signal`` carries a glare token; an incoming offer while our own offer to the same
  peer is pending wins only with the larger token;
- on channel open each side sends SyncStep1 and its awareness states; SyncStep1 is
  answered with SyncStep2; later changes travel as Update messages.

What is ours (docs/protocol.md): the ``caps`` list in every announce/signal; chunk (100),
app (101) and named-document (102) messages only to peers whose caps list them; outgoing
updates coalesced for ``coalesce_delay`` seconds per peer with ``merge_updates`` (aiortc pays
per message, not per byte); the SyncStep1 hold for a service peer that must load its stored
document first; bounds on everything a remote peer can make us hold (awareness entries and
rate, chunk reassembly, errors per link).

The trust model ("The trust model"): the document never passes through the server, so this
peer checks everything it receives against the link's principal — the server's stamp on that
peer id plus the role presence shows now (:mod:`peer.roster`), under the rules of
:mod:`peer.rights` and :mod:`peer.awareness_gate`. What is refused is dropped, counted
(``stats``, ``dropped``, ``codesync_peer_dropped_total``) and never forwarded: a peer relays
only main-document changes it applied, and named documents are never relayed at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pycrdt
from pycrdt import Awareness, Doc, merge_updates

from . import protocol as p
from .awareness_gate import AwarenessGate
from .connection import PeerConnection
from .ice import apply_ice_policy, rtc_configuration
from .metrics import DROPPED
from .rights import NAMED_DOC_WRITERS, Principal
from .roster import Roster
from .signaling_client import SignalingClient

log = logging.getLogger(__name__)

_LOAD = object()  # transaction origin marker for Room.load()
MAX_KNOWN_PEERS = 1000  # PeerInfo records kept; the oldest disconnected ones go first
MAX_FRESH_PEER_IDS = 5  # peer_id_taken answered with a fresh id at most this often in a row
DROP_LOG_INTERVAL = 10.0  # seconds between two log lines about one kind of refusal


@dataclass
class PeerInfo:
    """What we know about one remote peer id in the room."""

    peer_id: str
    sender: dict[str, Any] | None = None  # the server's stamp: {user_id, name, role} or {service}
    caps: frozenset[str] = frozenset()
    connected: bool = False
    synced: bool = False
    last_seen: float = field(default_factory=time.monotonic)

    @property
    def user_id(self) -> str | None:
        return (self.sender or {}).get("user_id")

    @property
    def service(self) -> str | None:
        return (self.sender or {}).get("service")

    @property
    def name(self) -> str | None:
        return (self.sender or {}).get("name")


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


class _Bucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Link:
    """Per-connection state the Room keeps next to the transport."""

    __slots__ = ("conn", "errors", "awareness_bucket", "app_bucket")

    def __init__(self, conn: PeerConnection, limits: Limits) -> None:
        self.conn = conn
        self.errors = 0
        self.awareness_bucket = _Bucket(limits.awareness_per_second, limits.awareness_burst)
        self.app_bucket = _Bucket(limits.app_per_second, limits.app_burst)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit, MemoryError))


class Room:
    def __init__(
        self,
        signaling_url: str,
        token: str,
        room_id: str,
        settings: Any = None,
        *,
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
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.doc: Doc = doc if doc is not None else Doc()
        # Named documents (type 102): every one the protocol defines, yours where given.
        self.docs: dict[str, Doc] = {name: Doc() for name in NAMED_DOC_WRITERS}
        for name, named in (docs or {}).items():
            if name not in NAMED_DOC_WRITERS:
                raise ValueError(f"unknown named document {name!r} (known: {', '.join(NAMED_DOC_WRITERS)})")
            self.docs[name] = named
        self.awareness = Awareness(self.doc)
        self.peer_id = peer_id or str(uuid.uuid4())
        self.max_conns = max_conns
        self.coalesce_delay = coalesce_delay
        self.relay = relay
        self.limits = limits or Limits()
        self.join_timeout = join_timeout
        self.caps = tuple(caps)  # () behaves like a stock y-webrtc peer (tests, interop)
        self.peers: dict[str, PeerInfo] = {}
        self.roster = Roster()
        self.removed = False  # the server took us out of the room (membership removed)
        self.dropped: dict[tuple[str, str], int] = {}  # (what, reason) -> count; see peer.rights
        self.stats: dict[str, int] = {
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
        self._own_signaling = signaling is None
        self._signaling = signaling or SignalingClient(signaling_url, token, settings)
        self._links: dict[str, _Link] = {}
        self._callbacks: dict[str, list[Callable[..., Any]]] = {
            "update": [], "doc_update": [], "app": [], "peer": [], "awareness": [],
        }
        self._applying: Any = None
        self._remote_changes: list[tuple[str | None, bytes, str]] = []  # (doc name or None, update, origin)
        self._released = not hold_sync and ready is None
        self._held_step1: list[tuple[str, str | None, bytes]] = []  # (peer id, doc name or None, state vector)
        self._ready_source = ready
        self._flush_handle: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._pending: list[tuple[bytes, str | None]] = []  # (update, origin peer or None=local)
        self._pending_docs: dict[str, list[bytes]] = {}  # named doc -> our own updates to send
        self._withheld_since: bytes | None = None  # state vector before our first unsent edit
        self._fresh_ids = 0
        self._last_fresh_id = 0.0
        self._drop_logged: dict[tuple[str, str], float] = {}
        self._awareness_dirty: set[int] = set()
        self._joined = asyncio.Event()
        self._forbidden: str | None = None
        self._running = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._config = rtc_configuration([])
        self._last_reannounce = 0.0
        self._reannounce_later: asyncio.TimerHandle | None = None
        self._synced_event = asyncio.Event()
        self._gate = AwarenessGate(
            self.awareness.client_id,
            state_bytes=self.limits.awareness_state_bytes,
            per_link=self.limits.awareness_per_link,
            total=self.limits.awareness_clients,
        )
        self._doc_sub = self.doc.observe(self._doc_changed)
        self._named_subs = {
            name: named.observe(lambda event, name=name: self._named_changed(name, event))
            for name, named in self.docs.items()
        }
        self._awareness_sub = self.awareness.observe(self._awareness_changed)

    # ------------------------------------------------------------------ public API
    def on_update(self, cb: Callable[[bytes, str], Any]) -> Callable[[], None]:
        return self._on("update", cb)

    def on_doc_update(self, cb: Callable[[str, bytes, str], Any]) -> Callable[[], None]:
        """``cb(name, update, origin_peer_id)`` for every remote update applied to ``docs[name]``."""
        return self._on("doc_update", cb)

    def on_app(self, cb: Callable[[dict[str, Any], str], Any]) -> Callable[[], None]:
        return self._on("app", cb)

    def on_peer(self, cb: Callable[[str, PeerInfo, str], Any]) -> Callable[[], None]:
        return self._on("peer", cb)

    def on_awareness(self, cb: Callable[[dict[str, Any], Any], Any]) -> Callable[[], None]:
        return self._on("awareness", cb)

    @property
    def signaling(self) -> SignalingClient:
        return self._signaling

    @property
    def connected_peers(self) -> list[str]:
        return [pid for pid, link in self._links.items() if link.conn.open]

    @property
    def sync_released(self) -> bool:
        return self._released

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

    async def start(self) -> None:
        """Join: connect signaling (unless shared), subscribe, announce; return once the
        server echoed our announce. Raises PermissionError when the room is refused."""
        if self._running:
            return
        self._running = True
        self._joined.clear()
        self._forbidden = None
        apply_ice_policy(getattr(self.settings, "ice_hosts", None))
        if self._own_signaling:
            await self._signaling.start()
        self._config = rtc_configuration(await self._signaling.ice_servers())
        self._spawn(self._awareness_loop())
        if self._ready_source is not None:
            self._spawn(self._wait_ready(self._ready_source))
        await self._signaling.subscribe(self.room_id, self)
        try:
            await asyncio.wait_for(self._wait_joined(), self.join_timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise ConnectionError(f"room {self.room_id}: no echo of our announce within {self.join_timeout}s") from None
        if self._forbidden:
            code = self._forbidden
            await self.stop()
            if code == "forbidden":
                raise PermissionError(f"room {self.room_id}: forbidden")
            raise ConnectionError(f"room {self.room_id}: signaling refused the subscription ({code})")

    async def stop(self) -> None:
        """Leave: flush pending edits, tell peers our awareness is gone, close every link."""
        if not self._running:
            return
        self._flush()
        try:
            self.awareness.set_local_state(None)  # y-protocols: null state = left
            frame = p.encode_awareness(self._encode_awareness([self.awareness.client_id]))
            for link in list(self._links.values()):
                link.conn.send(frame)
        except Exception:
            log.debug("could not announce our departure", exc_info=True)
        self._awareness_dirty.clear()
        self._running = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._reannounce_later is not None:
            self._reannounce_later.cancel()
            self._reannounce_later = None
        # The final flush is only queued in SCTP. Let it be acknowledged BEFORE leaving the
        # signaling topic: the others drop our link as soon as presence says we left.
        await asyncio.gather(*(link.conn.drain() for link in list(self._links.values())), return_exceptions=True)
        await self._signaling.unsubscribe(self.room_id)
        if self._own_signaling:
            await self._signaling.stop()
        links = list(self._links.values())
        await asyncio.gather(*(link.conn.aclose() for link in links), return_exceptions=True)
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def load(self, update: bytes, doc: str | None = None) -> None:
        """Apply a stored update to the main document (or the named document ``doc``) without
        firing callbacks; broadcast it only if SyncStep1 answers were already released (before
        that, peers get it in their SyncStep2)."""
        target = self.doc if doc is None else self.docs[doc]
        self._applying = _LOAD
        try:
            target.apply_update(update)
        finally:
            self._applying = None

    def release_sync(self) -> None:
        """Answer every held and future SyncStep1 (the stored document is loaded)."""
        if self._released:
            return
        self._released = True
        held, self._held_step1 = self._held_step1, []
        for peer_id, name, state_vector in held:
            link = self._links.get(peer_id)
            if link is not None and link.conn.open:
                try:
                    self._answer_step1(link, state_vector, name)
                except p.ProtocolError as exc:
                    self._bad(link, str(exc))

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

    async def send_app(self, peer_id: str, obj: dict[str, Any]) -> bool:
        """A type-101 message to one peer; False if it is not connected or lacks the "app" cap."""
        link = self._links.get(peer_id)
        if link is None or not link.conn.open or "app" not in link.conn.caps:
            return False
        return self._send(link, p.encode_app(obj))

    def buffered_amount(self, peer_id: str) -> int:
        """Bytes queued towards ``peer_id`` and not yet taken by SCTP (0 without a link): a
        service answering large requests looks before queuing more (bounded memory)."""
        link = self._links.get(peer_id)
        return link.conn.buffered_amount if link is not None else 0

    async def broadcast_app(self, obj: dict[str, Any]) -> int:
        """A type-101 message to every connected peer advertising "app"; returns how many."""
        frame = p.encode_app(obj)
        return sum(
            1 for link in list(self._links.values()) if link.conn.open and "app" in link.conn.caps and self._send(link, frame)
        )

    def flush(self) -> None:
        """Send coalesced updates now (normally a timer does it after ``coalesce_delay``)."""
        self._flush()

    # ------------------------------------------------------------------ internals: helpers
    def _on(self, kind: str, cb: Callable[..., Any]) -> Callable[[], None]:
        self._callbacks[kind].append(cb)
        return lambda: self._callbacks[kind].remove(cb) if cb in self._callbacks[kind] else None

    def _emit(self, kind: str, *args: Any) -> None:
        for cb in list(self._callbacks[kind]):
            try:
                result = cb(*args)
                if asyncio.iscoroutine(result):
                    self._spawn(result)
            except Exception:
                log.exception("room %s: %s callback failed", self.room_id, kind)

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

    async def _wait_joined(self) -> None:
        await self._joined.wait()

    def _info(self, peer_id: str) -> PeerInfo:
        info = self.peers.get(peer_id)
        if info is None:
            if len(self.peers) >= MAX_KNOWN_PEERS:  # every browser reload is a new peer id
                gone = sorted((i for i in self.peers.values() if not i.connected), key=lambda i: i.last_seen)
                for old in gone[: len(self.peers) - MAX_KNOWN_PEERS + 1]:
                    del self.peers[old.peer_id]
                    self.roster.forget(old.peer_id)
            info = self.peers[peer_id] = PeerInfo(peer_id)
        return info

    def _send(self, link: _Link, frame: bytes) -> bool:
        ok = link.conn.send(frame)
        if ok:
            self.stats["frames_out"] += 1
        return ok

    def _drop(self, what: str, reason: str, peer_id: str, n: int = 1) -> None:
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
            principal = self.roster.principal(peer_id)
            who = (principal.service or principal.user_id) if principal is not None else "?"
            log.info("room %s: dropped %s from %s (%s): %s (further ones counted, logged every %.0fs)",
                     self.room_id, what, peer_id, who, reason, DROP_LOG_INTERVAL)

    def _own_refusal(self, doc: str | None = None) -> str | None:
        """Why we may not write ``doc`` now; None when we may (or do not know who we are yet)."""
        if self.removed:
            return "removed"
        if self.roster.principal(self.peer_id) is None:
            return None
        return self.roster.write_refusal(self.peer_id, doc)

    # ------------------------------------------------------------------ document changes
    def _doc_changed(self, event: pycrdt.TransactionEvent) -> None:
        update = event.update
        if update == p.EMPTY_UPDATE:
            return
        origin = self._applying
        if origin is _LOAD:
            if self._released:
                self._queue_update(update, None)
            return
        if origin is None:  # a local edit
            if self._own_refusal() is None:
                self._queue_update(update, None)
            else:  # we may not write (demoted, removed): keep it, send it if we may again
                self.stats["withheld_updates"] += 1
                if self._withheld_since is None:
                    self._withheld_since = event.before_state
        else:  # a remote update that pycrdt integrated (observers run at commit time)
            self._remote_changes.append((None, update, origin))
            if self.relay:  # only what we applied is forwarded: it passed our writer check
                self._queue_update(update, origin)

    def _named_changed(self, name: str, event: pycrdt.TransactionEvent) -> None:
        """A named document changed. Never relayed: only our own changes are sent."""
        update = event.update
        if update == p.EMPTY_UPDATE:
            return
        origin = self._applying
        if origin is _LOAD:
            if self._released:
                self._queue_named(name, update)
        elif origin is None:
            if self._own_refusal(name) is None:
                self._queue_named(name, update)
            else:
                self.stats["withheld_updates"] += 1  # nobody would accept it from us
        else:
            self._remote_changes.append((name, update, origin))

    def _queue_named(self, name: str, update: bytes) -> None:
        if self._running and self._links:
            self._pending_docs.setdefault(name, []).append(update)
            if self._flush_handle is None:
                self._schedule_flush()

    def _resume_writing(self) -> None:
        """We may write again (promoted): send the edits we kept while we might not."""
        since, self._withheld_since = self._withheld_since, None
        if since is None:
            return
        try:
            update = self.doc.get_update(since)
        except Exception:  # noqa: BLE001 - never seen; peers get it in a later SyncStep2
            log.exception("room %s: could not encode the withheld edits", self.room_id)
            return
        self._queue_update(update, None)

    def _queue_update(self, update: bytes, origin: str | None) -> None:
        """Hot path (once per keystroke): an append; the per-peer work happens at flush."""
        if self._running and self._links:
            self._pending.append((update, origin))
            if self._flush_handle is None:
                self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Leading edge: after a quiet spell, send on the next loop turn (everything produced
        in this turn goes in one message); during a burst, at most one message per peer
        every ``coalesce_delay``."""
        if self._flush_handle is None and self._running:
            loop = asyncio.get_running_loop()
            wait = self._last_flush + self.coalesce_delay - loop.time()
            if wait <= 0:
                self._flush_handle = loop.call_soon(self._flush)  # type: ignore[assignment]
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
        if self._pending:
            pending, self._pending = self._pending, []
            frames: dict[str | None, bytes | None] = {}  # excluded origin -> merged frame
            origins = {origin for _, origin in pending}
            for peer_id, link in list(self._links.items()):
                if not link.conn.open:
                    continue
                key = peer_id if peer_id in origins else None
                if key not in frames:
                    frames[key] = self._merged_frame([u for u, o in pending if o is None or o != key])
                frame = frames[key]
                if frame is not None:
                    self._send(link, frame)
        if self._pending_docs:
            pending_docs, self._pending_docs = self._pending_docs, {}
            for name, updates in pending_docs.items():
                try:
                    merged = updates[0] if len(updates) == 1 else merge_updates(*updates)
                except Exception:
                    log.exception("merge_updates failed on %d updates of %s", len(updates), name)
                    continue
                frame = p.encode_doc(name, p.SYNC_UPDATE, merged)
                for link in list(self._links.values()):
                    if link.conn.open and "docs" in link.conn.caps:
                        self._send(link, frame)
        if self._awareness_dirty:
            ids, self._awareness_dirty = sorted(self._awareness_dirty), set()
            frame = p.encode_awareness(self._encode_awareness(ids))
            for link in list(self._links.values()):
                if link.conn.open:
                    self._send(link, frame)

    @staticmethod
    def _merged_frame(updates: list[bytes]) -> bytes | None:
        if not updates:
            return None
        try:
            merged = updates[0] if len(updates) == 1 else merge_updates(*updates)
        except Exception:
            log.exception("merge_updates failed on %d updates", len(updates))
            return None
        return p.encode_sync_update(merged)

    # ------------------------------------------------------------------ awareness
    def _encode_awareness(self, client_ids: list[int]) -> bytes:
        return p.encode_awareness_update(self.awareness.states, self.awareness.meta, client_ids)

    def _own_awareness(self) -> bytes | None:
        """Our own state as an awareness frame (awareness is never relayed)."""
        if self.awareness.get_local_state() is None:
            return None
        return p.encode_awareness(self._encode_awareness([self.awareness.client_id]))

    def _awareness_changed(self, topic: str, payload: tuple[dict[str, Any], Any]) -> None:
        changes, origin = payload
        if topic == "change":
            if changes["removed"]:
                self._gate.released(changes["removed"])
            self._emit("awareness", changes, origin)
            return
        if origin == "local" and self._running:  # "update" also fires on renewal, as in y-protocols
            self._awareness_dirty.update(changes["added"] + changes["updated"] + changes["removed"])
            self._schedule_flush()

    async def _awareness_loop(self) -> None:
        """pycrdt's timer: renews our state and expires silent remote ones."""
        try:
            await self.awareness.start()
        except RuntimeError:
            pass  # already started by the caller

    def _apply_awareness(self, link: _Link, update: bytes) -> None:
        remote = link.conn.remote_id
        if not link.awareness_bucket.take():
            self._drop("awareness", "rate", remote)
            return
        entries = p.decode_awareness_update(update, max_entries=self.limits.awareness_entries)
        kept, drops = self._gate.vet(remote, self.roster.principal(remote), entries, self.awareness.states)
        for reason, n in drops.items():
            self._drop("awareness", reason, remote, n)
        if not kept:
            return
        ids = [e.client_id for e in kept]
        filtered = p.encode_awareness_update(
            {e.client_id: e.state for e in kept if e.state is not None},
            {e.client_id: {"clock": e.clock} for e in kept},
            ids,
        )
        self.awareness.apply_awareness_update(filtered, remote)
        link.conn.awareness_ids.update(ids)

    def _forget_awareness_of(self, conn: PeerConnection) -> None:
        gone = [cid for cid in self._gate.link_closed(conn.remote_id) if cid != self.awareness.client_id]
        if gone:
            self.awareness.remove_awareness_states(gone, "disconnect")

    # ------------------------------------------------------------------ signaling
    def _signaling_connected(self) -> None:
        if self._running:
            self._spawn(self._announce())

    def _signaling_disconnected(self) -> None:
        pass  # links are peer to peer and survive a signaling outage

    async def _announce(self) -> None:
        await self._signaling.publish(self.room_id, {"type": "announce", "from": self.peer_id, "caps": list(self.caps)})

    async def _publish_signal(self, to: str, signal: dict[str, Any], token: float | None) -> None:
        await self._signaling.publish(
            self.room_id,
            {"type": "signal", "from": self.peer_id, "to": to, "token": token, "signal": signal, "caps": list(self.caps)},
        )

    def _signal_received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "error":
            code = str(message.get("code") or "error")
            if code == "peer_id_taken" and self._take_fresh_peer_id():
                return
            if code == "forbidden" and self._joined.is_set() and not self._forbidden:
                self._removed_from_room()
            elif code == "forbidden" or not self._joined.is_set():
                # before our announce came back, an error about our topic is a refused subscribe
                # (forbidden, too_many_topics, ...): fail start() at once instead of timing out
                self._forbidden = code
                self._joined.set()
            else:
                log.info("room %s: signaling error %s: %s", self.room_id, code, message.get("message"))
            return
        if kind == "presence":
            self._presence(message.get("peers"))
            return
        if kind != "publish" or not self._running:
            return
        data = message.get("data")
        if not isinstance(data, dict):
            return  # an encrypted room (base64 string) or junk: not ours to read
        sender_from = data.get("from")
        if not isinstance(sender_from, str) or not sender_from:
            return
        if sender_from == self.peer_id:
            self.roster.stamp(self.peer_id, message.get("sender"))  # who the server says we are
            if data.get("type") == "announce":
                self._fresh_ids = 0
                self._joined.set()
            return
        to = data.get("to")
        if to is not None and to != self.peer_id:
            return
        info = self._info(sender_from)
        info.last_seen = time.monotonic()
        sender = message.get("sender")
        if isinstance(sender, dict):
            info.sender = sender
        self.roster.stamp(sender_from, sender)
        if self.roster.blocked(sender_from) or self.removed:
            # its user is gone from presence (removed, or left): no links until listed again
            self._drop("signal", "removed", sender_from)
            return
        caps = data.get("caps")
        if isinstance(caps, list):
            info.caps = frozenset(c for c in caps if isinstance(c, str))
        if data.get("type") == "announce":
            self._on_announce(sender_from)
        elif data.get("type") == "signal" and to == self.peer_id:
            signal = data.get("signal")
            if isinstance(signal, dict):
                self._spawn(self._on_signal(sender_from, signal, data.get("token")))

    def _presence(self, peers: Any) -> None:
        """Live roles: a demotion makes links read-only at once (the roster answers every
        writer check from the latest presence); a user gone from presence loses every link."""
        if not isinstance(peers, list):
            return
        was_refused = self._own_refusal() is not None
        change = self.roster.presence(peers)
        for peer_id in change.close:
            link = self._links.get(peer_id)
            if link is not None:
                why = "its user is gone from the room" if self.roster.blocked(peer_id) else "it left"
                log.info("room %s: closing the link to %s: %s (presence)", self.room_id, peer_id, why)
                link.conn.close()
        if change.changed:
            log.info("room %s: roles changed for %d user(s) (presence)", self.room_id, len(change.changed))
        if change.returned and self._running:
            # they may have announced while we ignored them: make them connect to us again
            self._reannounce_soon()
        if was_refused and self._own_refusal() is None:
            self._resume_writing()

    def _removed_from_room(self) -> None:
        """The server says we are no longer a member: stop writing, close every link."""
        if self.removed:
            return
        self.removed = True
        log.warning("room %s: we were removed from the room; closing %d links", self.room_id, len(self._links))
        for link in list(self._links.values()):
            link.conn.close()

    def _take_fresh_peer_id(self) -> bool:
        """``peer_id_taken``: another principal holds our peer id; announce under a new one.

        Bounded: one new id per second (every refused publish of the old id answers with the
        same error) and at most MAX_FRESH_PEER_IDS before an announce of ours comes back."""
        now = time.monotonic()
        if now - self._last_fresh_id < 1.0:
            return True  # the same refusal again, for an older publish
        if self._fresh_ids >= MAX_FRESH_PEER_IDS:
            return False
        self._fresh_ids += 1
        self._last_fresh_id = now
        old, self.peer_id = self.peer_id, str(uuid.uuid4())
        log.info("room %s: peer id %s is taken; announcing as %s", self.room_id, old, self.peer_id)
        if self._running:
            self._spawn(self._announce())
        return True

    def _reannounce_soon(self) -> None:
        wait = self._last_reannounce + 1.0 - time.monotonic()
        if wait <= 0:
            self._reannounce()
        elif self._reannounce_later is None:
            self._reannounce_later = asyncio.get_running_loop().call_later(wait, self._reannounce)

    def _on_announce(self, remote: str) -> None:
        if self.removed or self.roster.blocked(remote):
            return
        existing = self._links.get(remote)
        if existing is not None and not existing.conn.closed:
            return
        if len(self._links) >= self.max_conns:
            return
        conn = self._new_conn(remote, initiator=True)
        self._spawn(self._start_conn(conn))

    async def _start_conn(self, conn: PeerConnection) -> None:
        try:
            await conn.start()
        except Exception:
            log.exception("room %s: offer to %s failed", self.room_id, conn.remote_id)
            conn.close()

    async def _on_signal(self, remote: str, signal: dict[str, Any], token: Any) -> None:
        kind = signal.get("type")
        link = self._links.get(remote)
        if kind == "offer":
            if link is not None and not link.conn.closed:
                local = link.conn.glare_token
                if link.conn.initiator and not link.conn.open:  # glare: both of us are offering
                    if local is not None and isinstance(token, (int, float)) and local > token:
                        log.debug("room %s: glare with %s, our offer wins", self.room_id, remote)
                        return
                # we lost the glare, or the peer restarted its side: its offer replaces our link
                link.conn.replaced = True
                await link.conn.aclose()
            link = self._links.get(remote)
            if link is None or link.conn.closed:
                if len(self._links) >= self.max_conns:
                    return
                self._new_conn(remote, initiator=False)
                link = self._links[remote]
        elif link is None or link.conn.closed:
            return  # an answer or candidate for a link we no longer have
        if kind == "answer":
            link.conn.glare_token = None
        try:
            await link.conn.handle_signal(signal)
        except Exception as exc:
            log.info("room %s: bad %s signal from %s: %s", self.room_id, kind, remote, exc)
            if kind in ("offer", "answer"):
                link.conn.close()

    def _new_conn(self, remote: str, initiator: bool) -> PeerConnection:
        conn = PeerConnection(
            remote,
            initiator,
            self._config,
            lambda signal, token: self._publish_signal(remote, signal, token),
            self._conn_open,
            self._conn_message,
            self._conn_closed,
        )
        conn.caps = self._info(remote).caps & frozenset(self.caps)
        self._links[remote] = _Link(conn, self.limits)
        return conn

    # ------------------------------------------------------------------ link events
    def _conn_open(self, conn: PeerConnection) -> None:
        link = self._links.get(conn.remote_id)
        if link is None or link.conn is not conn:
            return
        info = self._info(conn.remote_id)
        conn.caps = info.caps & frozenset(self.caps)
        info.connected = True
        self._send(link, p.encode_sync_step1(self.doc.get_state()))
        if "docs" in conn.caps:
            for name, named in self.docs.items():
                self._send(link, p.encode_doc(name, p.SYNC_STEP1, named.get_state()))
        own = self._own_awareness()
        if own is not None:
            self._send(link, own)
        self._emit("peer", conn.remote_id, info, "connected")

    def _conn_closed(self, conn: PeerConnection) -> None:
        link = self._links.get(conn.remote_id)
        if link is None or link.conn is not conn:
            return
        del self._links[conn.remote_id]
        self._held_step1 = [held for held in self._held_step1 if held[0] != conn.remote_id]
        self._forget_awareness_of(conn)
        info = self._info(conn.remote_id)
        was_connected = info.connected
        info.connected = False
        info.synced = False
        if was_connected:
            self._emit("peer", conn.remote_id, info, "disconnected")
        if self._running and not self.removed and not conn.replaced and conn.remote_id not in self._links:
            # y-webrtc re-announces so that a peer still in the room reconnects to us; at most
            # once a second, and a throttled one is deferred, never dropped (a link closed twice
            # within a second used to stay down for good — found by fuzzing)
            self._reannounce_soon()

    def _reannounce(self) -> None:
        self._reannounce_later = None
        if self._running:
            self._last_reannounce = time.monotonic()
            self._spawn(self._announce())

    def _conn_message(self, conn: PeerConnection, data: bytes) -> None:
        link = self._links.get(conn.remote_id)
        if link is None or link.conn is not conn:
            return
        self.stats["frames_in"] += 1
        try:
            self._handle_frame(link, data, allow_chunk=True)
        except p.ProtocolError as exc:
            self._bad(link, f"malformed frame: {exc}")
        except Exception as exc:
            self._bad(link, f"frame failed: {exc!r}")
        except BaseException as exc:  # pyo3 PanicException derives from BaseException
            if _is_fatal(exc):
                raise
            self._bad(link, f"frame crashed the decoder: {exc!r}")
        self._deliver_remote_changes()

    def _bad(self, link: _Link, why: str) -> None:
        self.stats["bad_frames"] += 1
        link.errors += 1
        log.info("room %s: from %s: %s", self.room_id, link.conn.remote_id, why)
        if link.errors > self.limits.errors_before_drop:
            log.warning("room %s: dropping %s after %d bad frames", self.room_id, link.conn.remote_id, link.errors)
            link.conn.close()

    def _handle_frame(self, link: _Link, data: bytes, allow_chunk: bool) -> None:
        msg = p.parse_message(data)
        if isinstance(msg, p.SyncMessage):
            if msg.step == p.SYNC_STEP1:
                self._step1(link, msg.payload, None)
            else:
                self._apply_remote(link, msg.payload, msg.step)
        elif isinstance(msg, p.DocMessage):
            self.stats["docs_in"] += 1
            if msg.name not in self.docs:
                self._drop("doc_update", "unknown_doc", link.conn.remote_id)
            elif msg.step == p.SYNC_STEP1:
                self._step1(link, msg.payload, msg.name)
            else:
                self._apply_remote(link, msg.payload, msg.step, msg.name)
        elif isinstance(msg, p.AwarenessMessage):
            self.stats["awareness_in"] += 1
            self._apply_awareness(link, msg.update)
        elif isinstance(msg, p.QueryAwarenessMessage):
            own = self._own_awareness()
            if own is not None:
                self._send(link, own)
        elif isinstance(msg, p.ChunkMessage):
            self.stats["chunks_in"] += 1
            if not allow_chunk:
                raise p.ProtocolError("a chunk inside a chunk")
            whole = link.conn.reassembler.feed(msg)
            if whole is not None:
                self._handle_frame(link, whole, allow_chunk=False)
        elif isinstance(msg, p.AppMessage):
            if not link.app_bucket.take():
                raise p.ProtocolError("app messages above the rate limit")
            self.stats["app_in"] += 1
            remote = link.conn.remote_id
            if self.roster.principal(remote) is None or self.roster.blocked(remote):
                self._drop("app", "unknown_sender" if self.roster.principal(remote) is None else "removed", remote)
                return
            self._emit("app", msg.body, remote)
        elif isinstance(msg, p.IgnoredMessage):
            pass
        else:
            self.stats["unknown_types"] += 1
            log.debug("room %s: unknown message type %s from %s", self.room_id, msg.type, link.conn.remote_id)

    def _step1(self, link: _Link, state_vector: bytes, name: str | None) -> None:
        if self._released:
            self._answer_step1(link, state_vector, name)
        else:
            remote = link.conn.remote_id
            self._held_step1 = [h for h in self._held_step1 if h[0] != remote or h[1] != name]
            self._held_step1.append((remote, name, state_vector))

    def _answer_step1(self, link: _Link, state_vector: bytes, name: str | None = None) -> None:
        """SyncStep2 for the main (or a named) document: every member may read. A peer that
        may not write the document answers with an empty update: its copy holds only what
        writers wrote, which the asker gets from them, and the asker would drop it anyway."""
        doc = self.doc if name is None else self.docs[name]
        try:
            update = doc.get_update(state_vector) if self._own_refusal(name) is None else p.EMPTY_UPDATE
        except Exception as exc:
            raise p.ProtocolError(f"bad state vector: {exc}") from exc
        self._send(link, p.encode_sync_step2(update) if name is None else p.encode_doc(name, p.SYNC_STEP2, update))

    def _apply_remote(self, link: _Link, update: bytes, step: int, name: str | None = None) -> None:
        """Hot path (once per received keystroke): the writer check, then pycrdt."""
        remote = link.conn.remote_id
        if update != p.EMPTY_UPDATE:
            refusal = self.roster.write_refusal(remote, name)
            if refusal is not None:
                # dropped, never applied, so never forwarded; a SyncStep2 still completes the
                # handshake below (every member may read, only writers may write)
                self._drop("update" if name is None else "doc_update", refusal, remote)
                update = p.EMPTY_UPDATE
        if update != p.EMPTY_UPDATE:
            self._applying = remote
            try:
                (self.doc if name is None else self.docs[name]).apply_update(update)
            except BaseException as exc:
                if _is_fatal(exc):
                    raise
                self.stats["rejected_updates"] += 1
                raise p.ProtocolError(f"update rejected by pycrdt: {exc}") from exc
            finally:
                self._applying = None
        if step == p.SYNC_STEP2 and name is None:
            info = self._info(remote)
            if not info.synced:
                info.synced = True
                link.conn.synced = True
                self._synced_event.set()
                self._emit("peer", remote, info, "synced")

    def _deliver_remote_changes(self) -> None:
        while self._remote_changes:
            changes, self._remote_changes = self._remote_changes, []
            for name, update, origin in changes:
                if name is None:
                    self._emit("update", update, origin)
                else:
                    self._emit("doc_update", name, update, origin)
