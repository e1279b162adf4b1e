"""The hub: who is subscribed to which topic, presence, peer-id ownership, fan-out.

One small interface with two backends (chosen by ``CODESYNC_REDIS_URL``):

- :class:`signaling.ws.memory.MemoryHub` — in-process, one node (the embedded default);
- :class:`signaling.ws.redis_backend.RedisHub` — several nodes sharing one Redis: presence kept
  in Redis with heartbeats and expiry, publishes fanned out with Redis pub/sub.

This base class holds everything both share: the node's own subscribers, delivery to them,
presence aggregation and the ``room-active``/``room-idle`` bookkeeping for service
connections. A backend supplies what lies beyond this node (``_remote_entries``, claims of
peer ids, remote fan-out) through the hooks at the bottom.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from . import metrics
from .connection import Connection, encode_text_frame
from .protocol import (
    CLOSE_UNAUTHORIZED,
    Publish,
    error_frame,
    presence_frame,
    publish_frame,
    publish_head,
    room_state_frame,
)

log = logging.getLogger("codesync.signal")

# (topic, user ids) -> user id -> role value, or None when no longer a member (or no room).
RoleLookup = Callable[[str, Iterable[str]], Awaitable[dict[str, "str | None"]]]

# {"u": user_id, "n": name, "r": role, "s": service, "p": [peer ids], "e": enforces roles (0/1)}
Entry = dict[str, Any]

VIEWER = "viewer"  # the read-only role: its links need a peer that enforces roles


def aggregate_presence(entries: list[Entry]) -> list[dict[str, Any]]:
    """Presence ``peers``: one record per user (all their connections' peer ids merged).

    Service connections (persistence, runner) are not people and are left out.
    """
    users: dict[str, dict[str, Any]] = {}
    for e in entries:
        uid = e.get("u")
        if not uid:
            continue
        rec = users.get(uid)
        if rec is None:
            rec = users[uid] = {"user_id": uid, "name": e.get("n") or "", "role": e.get("r"), "peer_ids": set()}
        rec["peer_ids"].update(e.get("p") or ())
    out = [dict(r, peer_ids=sorted(r["peer_ids"])) for r in users.values()]
    out.sort(key=lambda r: (r["name"], r["user_id"]))
    return out


class Hub(ABC):
    """What ``/signal`` and ``GET /api/rooms/{id}/presence`` need from a backend.

    ``peer_id_grace``: seconds a peer id stays reserved to its principal after its connection
    closed; ``reserve_cap``: (user, service) — reservations one principal may hold at once
    (its oldest go first), so reconnecting in a loop cannot grow them without bound.
    """

    node: str = ""  # this node's id among several (a backend shared by nodes sets it)

    def __init__(self, peer_id_grace: float = 60.0, reserve_cap: tuple[int, int] = (80, 20000)) -> None:
        self.peer_id_grace = max(0.0, float(peer_id_grace))
        self.reserve_cap = reserve_cap
        self.topics: dict[str, dict[str, Connection]] = {}  # local subscribers
        self.services: dict[str, Connection] = {}
        self.connections: dict[str, Connection] = {}
        self.user_conns: dict[str, int] = {}
        self.active: set[str] = set()  # rooms with >= 1 user subscriber (anywhere)
        self._presence_sent: dict[str, list[dict[str, Any]]] = {}
        self.role_lookup: RoleLookup | None = None  # set by the server (database access)
        self._rechecks: set[asyncio.Task] = set()
        self._heads: dict[str, bytes] = {}  # topic -> serialized start of its publish frames
        self._viewers: dict[str, int] = {}  # topic -> local subscribers with the viewer role

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def stop(self) -> None:  # noqa: B027
        pass

    # ------------------------------------------------------------------ connections
    def can_attach(self, conn: Connection, max_per_user: int) -> bool:
        uid = conn.principal.user_id
        return conn.is_service or uid is None or self.user_conns.get(uid, 0) < max_per_user

    async def attach(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        uid = conn.principal.user_id
        if conn.is_service:
            first = not self.services
            self.services[conn.id] = conn
            if first:
                await self._services_appeared()
            for topic in sorted(self.active):
                conn.send(room_state_frame(topic, True))
        elif uid:
            self.user_conns[uid] = self.user_conns.get(uid, 0) + 1
        metrics.CONNECTIONS.labels("service" if conn.is_service else "user").inc()

    async def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        for topic in list(conn.roles):
            await self.unsubscribe(conn, topic)
        if conn.bound:
            await self._release(conn, set(conn.bound))
            conn.bound.clear()
        uid = conn.principal.user_id
        if conn.is_service:
            self.services.pop(conn.id, None)
        elif uid:
            n = self.user_conns.get(uid, 1) - 1
            if n <= 0:
                self.user_conns.pop(uid, None)
            else:
                self.user_conns[uid] = n
        metrics.CONNECTIONS.labels("service" if conn.is_service else "user").dec()

    # ------------------------------------------------------------------ topics
    async def subscribe(self, conn: Connection, topic: str, role: str | None) -> None:
        conn.roles[topic] = role
        if role == VIEWER:
            self._count_viewer(topic, 1)
        conn.peer_ids.setdefault(topic, set())
        subs = self.topics.get(topic)
        if subs is None:
            subs = self.topics[topic] = {}
            metrics.ROOMS.inc()
        subs[conn.id] = conn
        sent = self._presence_sent.get(topic)
        await self._entry_changed(conn, topic, present=True)
        current = self._presence_sent.get(topic)
        if current is not None and current is sent:  # unchanged (e.g. a service joined): tell the newcomer
            conn.send(presence_frame(topic, current))

    async def unsubscribe(self, conn: Connection, topic: str) -> None:
        if topic not in conn.roles:
            return
        if conn.roles.pop(topic, None) == VIEWER:
            self._count_viewer(topic, -1)
        used = conn.peer_ids.pop(topic, None)
        conn.enforcing.discard(topic)
        subs = self.topics.get(topic)
        if subs is not None:
            subs.pop(conn.id, None)
            if not subs:
                del self.topics[topic]
                self._presence_sent.pop(topic, None)
                self._heads.pop(topic, None)
                metrics.ROOMS.dec()
        await self._entry_changed(conn, topic, present=False)
        if used:  # peer ids used in no other topic of this connection: reserved, then free
            free = used.difference(*conn.peer_ids.values()) & conn.bound
            if free:
                conn.bound -= free
                await self._release(conn, free)

    async def set_role(self, conn: Connection, topic: str, role: str) -> None:
        """A subscriber's role changed while connected: new ``sender`` stamps, new presence."""
        old = conn.roles.get(topic, role)
        if topic not in conn.roles or old == role:
            return
        conn.roles[topic] = role
        if old == VIEWER:
            self._count_viewer(topic, -1)
        elif role == VIEWER:
            self._count_viewer(topic, 1)
        await self._entry_changed(conn, topic, present=True)

    def _count_viewer(self, topic: str, delta: int) -> None:
        n = self._viewers.get(topic, 0) + delta
        if n > 0:
            self._viewers[topic] = n
        else:
            self._viewers.pop(topic, None)

    # ------------------------------------------------------------------ membership changes
    async def membership_changed(self, topic: str, user_id: str | None) -> None:
        """A membership of ``topic`` changed through the REST API on this node.

        ``user_id`` None: the room was deleted. Every node re-checks its own subscribers
        (the REST call may land on another node than the user's sockets).
        """
        try:
            await self.recheck(topic, user_id)
        finally:  # tell the other nodes even if this node's re-check failed
            await self._broadcast_membership(topic, user_id)

    def recheck_soon(self, topic: str, user_id: str | None) -> None:
        """:meth:`recheck` from a synchronous context (the Redis bus listener)."""
        task = asyncio.create_task(self.recheck(topic, user_id))
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def recheck(self, topic: str, user_id: str | None) -> None:
        """Re-read the roles of this node's user subscribers of ``topic`` (all, or ``user_id``'s).

        A user who is no longer a member is unsubscribed and told with a ``forbidden`` error
        frame for the topic (the connection and its other topics stay); a changed role takes
        effect in ``sender`` stamps and presence. Service connections are not affected.
        """
        subs = self.topics.get(topic)
        if not subs or self.role_lookup is None:
            return
        conns = [
            c for c in subs.values()
            if not c.is_service and c.principal.user_id and (user_id is None or c.principal.user_id == user_id)
        ]
        if not conns:
            return
        try:
            roles = await self.role_lookup(topic, {c.principal.user_id or "" for c in conns})
        except Exception:  # noqa: BLE001 - database briefly gone: keep the old roles, log it
            log.exception("re-checking memberships of %s failed", topic)
            return
        for conn in conns:
            if topic not in conn.roles or conn.closed:
                continue
            role = roles.get(conn.principal.user_id or "")
            if role is None:
                await self.unsubscribe(conn, topic)
                conn.revoked.add(topic)
                metrics.REFUSALS.labels("revoked").inc()
                why = "the room was deleted" if user_id is None else "you are no longer a member of this room"
                conn.send(error_frame("forbidden", why, topic))
            else:
                await self.set_role(conn, topic, role)

    async def _broadcast_membership(self, topic: str, user_id: str | None) -> None:  # noqa: B027
        """Tell the other nodes (Redis backend)."""

    # ------------------------------------------------------------------ revoked sessions
    # (signaling.sessions: logout, logout everywhere, account deleted, service token revoked)
    async def sessions_revoked(self, keys: set[str]) -> None:
        """Close the sockets answering to any of ``keys`` here, and tell the other nodes."""
        try:
            self.close_sessions(keys)
        finally:
            await self._broadcast_sessions(keys)

    def close_sessions(self, keys: Iterable[str]) -> int:
        """Close (4003, after an ``unauthorized`` error frame) this node's connections whose
        principal answers to any of ``keys`` (``Principal.revocation_keys``); how many."""
        wanted = set(keys)
        closed = 0
        for conn in list(self.connections.values()):
            if conn.closing or conn.closed or wanted.isdisjoint(conn.principal.revocation_keys):
                continue
            metrics.REFUSALS.labels("session_revoked").inc()
            conn.send(error_frame("unauthorized", "this session has been signed out"))
            conn.close_soon(CLOSE_UNAUTHORIZED, "session revoked")
            closed += 1
        return closed

    async def _broadcast_sessions(self, keys: set[str]) -> None:  # noqa: B027
        """Tell the other nodes (Redis backend)."""

    # ------------------------------------------------------------------ admitting a publish
    async def admit(self, conn: Connection, message: Publish) -> str | None:
        """What stands between a subscriber's publish and its fan-out: None, or an error code.

        - ``data.caps`` updates whether the connection enforces roles in the topic;
        - ``data.from`` binds a peer id (``peer_id_taken``, ``too_many_peer_ids``);
        - a frame addressed to one peer (``data.to``) between a viewer and a peer that does
          not enforce roles, either way, or a viewer's encrypted frame: ``relay_refused``.

        Publish hot path: for a bound peer id, no caps change and no viewer in the topic,
        this is a few dictionary lookups.
        """
        topic = message.topic
        stale = message.roles is not None and conn.note_caps(topic, message.roles)
        peer_id = message.peer_id
        if peer_id is not None:
            if peer_id not in conn.bound:
                if len(conn.bound) >= conn.limits.max_peer_ids:
                    if stale:
                        await self._entry_changed(conn, topic, present=True)
                    return "too_many_peer_ids"
                if not await self._claim(conn, peer_id):
                    if stale and topic in conn.roles:
                        await self._entry_changed(conn, topic, present=True)
                    return "peer_id_taken"
                conn.bound.add(peer_id)
            used = conn.peer_ids.get(topic)
            if used is not None and peer_id not in used:  # None: unsubscribed meanwhile
                used.add(peer_id)
                stale = True
        if stale and topic in conn.roles:
            await self._entry_changed(conn, topic, present=True)
        if message.to is not None:
            viewer = conn.roles.get(topic) == VIEWER
            if (viewer or self._viewers.get(topic) or self._remote_viewers(topic)) and not await self._relay_allowed(
                conn, topic, message.to, viewer
            ):
                return "relay_refused"
        elif type(message.data) is str and conn.roles.get(topic) == VIEWER:
            # Encrypted (y-webrtc password): who it addresses is hidden from the server, and a
            # CodeSync peer never joins an encrypted room, so a viewer's frame could only be
            # meant for a stock client.
            return "relay_refused"
        return None

    async def _relay_allowed(self, conn: Connection, topic: str, to: str, viewer: bool) -> bool:
        """The trust model's relay rule for a frame from ``conn`` addressed to peer ``to``.

        Allowed only when neither side is a viewer, or the other side enforces roles. An
        address the hub does not know in this topic is refused (it could be a viewer or a
        stock client we have not heard of yet) — after waiting for a fresher view of the
        other nodes when one is on its way.
        """
        target = self._peer_target(topic, to)
        ok = target is not None and self._relay_ok(conn, topic, viewer, target)
        if not ok and await self._settle(topic):
            target = self._peer_target(topic, to)
            viewer = conn.roles.get(topic) == VIEWER
            ok = target is not None and self._relay_ok(conn, topic, viewer, target)
        return ok

    @staticmethod
    def _relay_ok(conn: Connection, topic: str, viewer: bool, target: tuple[str | None, bool]) -> bool:
        role, enforcing = target
        if viewer and not enforcing:
            return False
        return role != VIEWER or conn.enforces(topic)

    def _peer_target(self, topic: str, peer_id: str) -> tuple[str | None, bool] | None:
        """(role, enforces roles) of the subscriber of ``topic`` using ``peer_id``, or None."""
        owner = self._local_peer(peer_id)
        if owner is not None and topic in owner.roles and peer_id in owner.peer_ids.get(topic, ()):
            return owner.roles[topic], owner.enforces(topic)
        entry = self._remote_peer(topic, peer_id)
        if entry is None:
            return None
        return entry.get("r"), bool(entry.get("e") or entry.get("s"))

    # ------------------------------------------------------------------ publish
    async def publish(self, conn: Connection, topic: str, data: Any, to: str | None = None) -> None:
        """Relay ``data`` to the topic's subscribers.

        ``to`` (the frame's ``data.to``): a directed frame — an offer, answer, candidate or
        refuse for one peer. Every y-webrtc peer ignores directed frames addressed to
        someone else, so when the subscriber holding that peer id is on this node it alone
        gets the frame: a room of N members joining at once otherwise makes every member
        parse every other pair's signalling, O(N²) frames (issue 15). A target another node
        holds goes to that node only (Redis); one we do not know gets the usual fan-out.
        """
        t0 = time.time()
        head = self._heads.get(topic)
        if head is None:
            head = self._heads[topic] = publish_head(topic)
        # Serialized and framed once; every receiver (here and on other nodes) gets these bytes.
        frame = encode_text_frame(publish_frame(head, data, self.clients(topic), conn.sender_json(topic)))
        if to is not None:
            target = self._local_subscriber(topic, to)
            if target is not None:
                metrics.MESSAGES_OUT.inc()
                target.send_frame(frame)
                metrics.FANOUT.observe(time.time() - t0)
                return
            if self._direct_remote(topic, frame, t0, to):
                return
        self.deliver_frame(topic, frame)
        metrics.FANOUT.observe(time.time() - t0)
        await self._fanout_remote(topic, frame, t0)

    def _local_subscriber(self, topic: str, peer_id: str) -> Connection | None:
        """The subscriber of ``topic`` on this node that uses ``peer_id`` in it, if any."""
        owner = self._local_peer(peer_id)
        if owner is None or peer_id not in owner.peer_ids.get(topic, ()):
            return None
        subs = self.topics.get(topic)
        return owner if subs is not None and subs.get(owner.id) is owner else None

    def deliver_local(self, topic: str, frame: str | bytes) -> None:
        """Send one server frame (JSON text) to every local subscriber of ``topic``."""
        if self.topics.get(topic):
            self.deliver_frame(topic, encode_text_frame(frame))  # once, shared by every receiver

    def deliver_frame(self, topic: str, encoded: bytes) -> None:
        """Send an already-framed WebSocket message to every local subscriber of ``topic``."""
        subs = self.topics.get(topic)
        if subs:
            metrics.MESSAGES_OUT.inc(len(subs))
            for receiver in list(subs.values()):
                receiver.send_frame(encoded)

    def clients(self, topic: str) -> int:
        """Subscribers of ``topic`` on every node (the reference server's ``clients``)."""
        return len(self.topics.get(topic, ())) + self._remote_count(topic)

    # ------------------------------------------------------------------ presence / activity
    def local_entries(self, topic: str) -> list[Entry]:
        return [c.entry(topic) for c in self.topics.get(topic, {}).values()]

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        await self._refresh(topic)
        return aggregate_presence(self.local_entries(topic) + self._remote_entries(topic))

    def room_changed(self, topic: str) -> None:
        """Recompute ``topic``'s presence and activity; tell whoever needs to know here."""
        entries = self.local_entries(topic) + self._remote_entries(topic)
        if topic in self.topics:
            peers = aggregate_presence(entries)
            if self._presence_sent.get(topic) != peers:
                self._presence_sent[topic] = peers
                self.deliver_local(topic, presence_frame(topic, peers))
        active = any(e.get("u") for e in entries)
        if active != (topic in self.active):
            if active:
                self.active.add(topic)
            else:
                self.active.discard(topic)
            if self.services:
                frame = room_state_frame(topic, active)
                for svc in list(self.services.values()):
                    svc.send(frame)

    async def close_all(self, code: int, message: str) -> None:
        for conn in list(self.connections.values()):
            conn.close(code, message)

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    async def _entry_changed(self, conn: Connection, topic: str, present: bool) -> None:
        """``conn``'s presence entry in ``topic`` was added/updated (present) or removed."""

    @abstractmethod
    async def _claim(self, conn: Connection, peer_id: str) -> bool:
        """Bind ``peer_id`` to ``conn`` unless another principal owns or reserves it."""

    @abstractmethod
    async def _release(self, conn: Connection, peer_ids: set[str]) -> None:
        """``conn`` let go of these peer ids: reserved to its principal for the grace period."""

    @abstractmethod
    def _local_peer(self, peer_id: str) -> Connection | None:
        """The connection on this node that owns ``peer_id``."""

    def _remote_peer(self, topic: str, peer_id: str) -> Entry | None:
        """The presence entry (another node's) that lists ``peer_id`` in ``topic``."""
        return None

    def _remote_viewers(self, topic: str) -> bool:
        """Whether another node may have a viewer in ``topic`` (True when unsure)."""
        return False

    def _direct_remote(self, topic: str, frame: bytes, t0: float, to: str) -> bool:
        """Send a directed frame to the other node whose subscriber holds ``to`` in ``topic``
        only; False when no other node is known to (the caller fans it out as usual)."""
        return False

    async def _settle(self, topic: str) -> bool:
        """Wait for a refresh of the other nodes' entries of ``topic`` in flight; True if one was."""
        return False

    async def _fanout_remote(self, topic: str, frame: bytes, t0: float) -> None:  # noqa: B027
        """Send ``frame`` (a complete WebSocket frame) to the topic's subscribers elsewhere."""

    def _remote_entries(self, topic: str) -> list[Entry]:
        return []

    def _remote_count(self, topic: str) -> int:
        return 0

    async def _refresh(self, topic: str) -> None:  # noqa: B027
        pass

    async def _services_appeared(self) -> None:  # noqa: B027
        pass
