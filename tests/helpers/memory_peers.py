"""Whole ``peer.Room``s without a signaling process or aiortc: an in-memory hub and link pair.

aiortc tests its protocol layers over in-memory transport pairs (its ``tests/utils.py``);
this does the same one level up, so the room logic — the mesh's announce/offer/glare rules,
sync and the hold, writer checks and relaying, awareness rules, named documents, chunking —
runs in milliseconds and deterministically. The real-process tests (tests/test_peer_room.py,
tests/test_trust_peers.py) keep covering aiortc and ``codesync signaling`` themselves.

- :class:`MemoryHub` plays the signaling server for one room, the way docs/protocol.md says it
  behaves: ``publish`` fanned out to every subscriber (the sender included) with the
  ``sender`` stamp of the publisher's principal *now*; a ``presence`` frame whenever who is in
  the room, their role or their peer ids change (people only); a removed member gets
  ``forbidden`` and nothing more. ``hub.send(client, frame)`` feeds any other frame.
- :class:`MemoryTransport` is a :class:`peer.link.Transport`: the initiator's offer names it,
  the answering side pairs with it, then both open; messages keep their order and arrive on
  a later loop turn (as over a network); closing one end closes the other.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from peer import Room
from peer.mesh import Mesh

DEFAULT_MAX_MESSAGE_SIZE = 65536  # what aiortc advertises


class MemoryTransport:
    """One end of an in-memory data channel."""

    def __init__(
        self,
        net: "MemoryHub",
        remote_id: str,
        initiator: bool,
        send_signal: Callable[[dict[str, Any]], Awaitable[None]],
        on_open: Callable[[], None],
        on_message: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        self.net = net
        self.remote_id = remote_id
        self.initiator = initiator
        self.max_message_size = net.max_message_size
        self.sent: list[bytes] = []
        self._send_signal = send_signal
        self._on_open = on_open
        self._on_message = on_message
        self._on_closed = on_closed
        self._peer: MemoryTransport | None = None
        self._open = False
        self._close: asyncio.Future[None] | None = None
        self._name = f"mem-{next(net.ids)}"

    @property
    def open(self) -> bool:
        return self._open and self._close is None

    @property
    def closed(self) -> bool:
        return self._close is not None

    async def start(self) -> None:
        self.net.offers[self._name] = self
        await self._send_signal({"type": "offer", "sdp": self._name})

    async def handle_signal(self, signal: dict[str, Any]) -> None:
        if self.closed:
            return
        kind, name = signal.get("type"), signal.get("sdp")
        if kind == "offer":
            if self.initiator:
                raise ValueError("an initiator cannot take an offer")
            offerer = self.net.offers.pop(name, None) if isinstance(name, str) else None
            if offerer is None or offerer.closed:
                raise ValueError("offer for no open transport")
            self._peer, offerer._peer = offerer, self
            await self._send_signal({"type": "answer", "sdp": name})
        elif kind == "answer":
            if not self.initiator or self._peer is None or name != self._name:
                raise ValueError("unexpected answer")
            loop = asyncio.get_running_loop()
            loop.call_soon(self._opened)
            loop.call_soon(self._peer._opened)
        elif kind == "candidate":
            pass  # nothing to gather in memory
        else:
            raise ValueError(f"unknown signal {kind!r}")

    def _opened(self) -> None:
        if not self.closed and not self._open:
            self._open = True
            self._on_open()

    def send(self, data: bytes) -> bool:
        if not self.open or self._peer is None:
            return False
        if len(data) > self._peer.max_message_size:
            self.net.oversize.append(len(data))  # a real channel would fail: tests assert this stays empty
            return False
        self.sent.append(bytes(data))
        asyncio.get_running_loop().call_soon(self._peer._received, bytes(data))
        return True

    def _received(self, data: bytes) -> None:
        if self.open:
            self._on_message(data)

    async def drain(self, timeout: float = 2.0) -> bool:
        return True

    def close(self) -> asyncio.Future[None]:
        if self._close is None:
            self._close = asyncio.get_running_loop().create_future()
            self.net.offers.pop(self._name, None)
            loop = asyncio.get_running_loop()
            loop.call_soon(self._closed)
            if self._peer is not None:  # a data channel closes at both ends, after what is in flight
                loop.call_soon(self._peer.close)
        return self._close

    def _closed(self) -> None:
        try:
            self._on_closed()
        finally:
            assert self._close is not None
            self._close.set_result(None)

    async def aclose(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.close()), timeout)


class MemorySignaling:
    """The part of :class:`peer.SignalingClient` a Room uses, connected to a :class:`MemoryHub`."""

    url = "memory://signal"
    token = ""
    connected = True

    def __init__(self, hub: "MemoryHub", stamp: dict[str, Any]) -> None:
        self.hub = hub
        self.stamp = stamp
        self.handler: Mesh | None = None
        self.peer_ids: list[str] = []
        self.received: list[dict[str, Any]] = []

    @property
    def user_id(self) -> str | None:
        return self.stamp.get("user_id")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def ice_servers(self) -> list[Any]:
        return []

    async def subscribe(self, topic: str, handler: Mesh) -> None:
        assert topic == self.hub.topic
        self.handler = handler
        if self.user_id is not None and self.user_id not in self.hub.roles:
            self.hub.send(self, {"type": "error", "code": "forbidden", "topic": topic})
            return
        self.hub.clients.append(self)
        handler.signaling_connected()
        self.hub.presence_changed()

    async def unsubscribe(self, topic: str) -> None:
        if self in self.hub.clients:
            self.hub.clients.remove(self)
            self.hub.presence_changed()
        self.handler = None

    async def publish(self, topic: str, data: Any) -> bool:
        return self.hub.publish(self, data)


class MemoryHub:
    """One room's signaling, in memory. ``roles``: user id -> role (the membership)."""

    def __init__(self, topic: str = "room-1", roles: dict[str, str] | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.topic = topic
        self.roles: dict[str, str] = dict(roles or {})
        self.names: dict[str, str] = {}
        self.max_message_size = max_message_size
        self.clients: list[MemorySignaling] = []
        self.offers: dict[str, MemoryTransport] = {}
        self.ids = itertools.count(1)
        self.owners: dict[str, MemorySignaling] = {}  # peer id -> the client that used it first
        self.presence_frames = 0
        self.oversize: list[int] = []  # sizes of messages sent above the remote's limit

    # ------------------------------------------------------------------ rooms
    def transport(self, *args: Any) -> MemoryTransport:
        """A :data:`peer.link.TransportFactory`."""
        return MemoryTransport(self, *args)

    def client(self, *, user: str | None = None, service: str | None = None, unstamped: bool = False) -> MemorySignaling:
        """A connection of ``user`` or of a ``service``; ``unstamped``: one whose frames carry no
        usable ``sender`` stamp (what a peer must never trust)."""
        if unstamped:
            return MemorySignaling(self, {})
        if service is not None:
            return MemorySignaling(self, {"service": service})
        assert user is not None
        self.names.setdefault(user, user.capitalize())
        return MemorySignaling(self, {"user_id": user})

    def room(self, *, user: str | None = None, service: str | None = None, unstamped: bool = False,
             **kwargs: Any) -> Room:
        """A Room of ``user`` (or of a ``service``) on this hub, links in memory."""
        client = self.client(user=user, service=service, unstamped=unstamped)
        return Room.over(client, self.topic, transport=self.transport, **kwargs)

    # ------------------------------------------------------------------ what the server does
    def _stamp(self, client: MemorySignaling) -> dict[str, Any]:
        uid = client.user_id
        if uid is None:
            return dict(client.stamp)
        return {"user_id": uid, "name": self.names[uid], "role": self.roles.get(uid)}

    def send(self, client: MemorySignaling, frame: dict[str, Any]) -> None:
        """Deliver one frame to one client, on a later loop turn (as over its WebSocket)."""

        def deliver() -> None:
            client.received.append(frame)
            if client.handler is not None:
                client.handler.signal_received(frame)

        asyncio.get_running_loop().call_soon(deliver)

    def publish(self, client: MemorySignaling, data: Any) -> bool:
        if client not in self.clients:
            return False
        peer_id = data.get("from") if isinstance(data, dict) else None
        if isinstance(peer_id, str):
            owner = self.owners.setdefault(peer_id, client)
            if owner is not client:
                self.send(client, {"type": "error", "code": "peer_id_taken", "topic": self.topic})
                return True
            if peer_id not in client.peer_ids:
                client.peer_ids.append(peer_id)
                self.presence_changed()
        frame = {"type": "publish", "topic": self.topic, "data": data, "clients": len(self.clients),
                 "sender": self._stamp(client)}
        for other in list(self.clients):
            self.send(other, frame)
        return True

    def presence_changed(self) -> None:
        people: dict[str, dict[str, Any]] = {}
        for c in self.clients:
            uid = c.user_id
            if uid is None:
                continue  # service connections are not listed
            entry = people.setdefault(uid, {"user_id": uid, "name": self.names[uid], "role": self.roles.get(uid),
                                            "peer_ids": []})
            entry["peer_ids"] += c.peer_ids
        frame = {"type": "presence", "topic": self.topic, "peers": list(people.values())}
        self.presence_frames += 1
        for c in list(self.clients):
            self.send(c, frame)

    def set_role(self, user: str, role: str) -> None:
        self.roles[user] = role
        self.presence_changed()

    def remove(self, user: str) -> None:
        """A membership removed while connected: ``forbidden`` to that user, presence to the rest."""
        self.roles.pop(user, None)
        for c in [c for c in self.clients if c.user_id == user]:
            self.clients.remove(c)
            self.send(c, {"type": "error", "code": "forbidden", "topic": self.topic})
        self.presence_changed()
