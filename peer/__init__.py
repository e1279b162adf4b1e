"""Headless CodeSync peers: aiortc WebRTC + pycrdt, speaking y-webrtc / y-protocols.

This docstring is the interface other parts (persistence peer, runner) code against.
Wire formats are in DESIGN.md ("Signaling protocol", "Data-channel protocol").

Joining one room (a user-like peer, its own signaling connection)::

    from peer import Room
    room = Room(signaling_url, token, room_id, settings, doc=None, peer_id=None)
    room.on_update(lambda update, origin_peer_id: ...)   # every REMOTE update applied to room.doc
    await room.start()          # connect signaling, subscribe, announce; returns once subscribed
    room.doc["source"]          # pycrdt.Doc; local edits are broadcast automatically (coalesced)
    room.awareness              # pycrdt.Awareness (local state: room.awareness.set_local_state({...}))
    room.peers                  # dict peer_id -> PeerInfo(peer_id, sender, caps, connected, synced)
    await room.stop()

``signaling_url`` may be ``ws://host:port/signal`` or the HTTP base ``http://host:port``
(ICE servers come from ``GET <base>/api/ice-servers``). ``settings`` is the one
``signaling.settings.Settings``; ``settings.ice_hosts`` restricts ICE (peer/ice.py).

Callbacks (all plain callables run in the event loop; return value ignored; exceptions
are logged, never propagated). Each ``on_*`` returns an ``unsubscribe()`` callable:

- ``room.on_update(cb(update: bytes, origin_peer_id: str))`` — a remote update (SyncStep2 or
  Update) that pycrdt accepted and applied to ``room.doc``. The persistence peer stores here.
  Local edits and ``room.load()`` do NOT fire it.
- ``room.on_app(cb(obj: dict, from_peer_id: str))`` — a type-101 app message (JSON object).
- ``room.on_peer(cb(peer_id: str, info: PeerInfo, event: str))`` — event is one of
  ``"connected"`` (data channel open), ``"synced"`` (its SyncStep2 applied), ``"disconnected"``.
- ``room.on_awareness(cb(changes: dict, origin))`` — thin alias of awareness "change".

Holding SyncStep1 answers until the stored document is loaded (persistence peer)::

    room = Room(..., hold_sync=True)       # join early, answer nobody's SyncStep1 yet
    await room.start()
    room.load(stored_update)               # apply without broadcasting / without on_update
    room.release_sync()                    # now answer queued and future SyncStep1s
    # or: Room(..., ready=some_asyncio_event) — answers wait until the event is set.

``room.load(update)`` may also be called before ``start()``. ``await room.wait_synced(peer_id=None,
timeout=...)`` waits until one (or the given) peer's SyncStep2 has been applied.

App messages: ``await room.send_app(peer_id, obj)`` and ``await room.broadcast_app(obj)`` —
only to peers whose caps include "app" (stock y-webrtc peers never get type >= 100).

More keyword options of ``Room`` (all optional): ``max_conns=100`` (y-webrtc's limit on links),
``coalesce_delay=0.002`` (seconds; outgoing updates merged per flush), ``relay=True`` (forward
remote updates to the other links, like y-webrtc), ``caps=("chunk", "app")`` (``()`` acts like
a stock y-webrtc peer), ``read_only_roles=("viewer",)`` (document updates from peers whose
server stamp has this role are dropped), ``limits=peer.room.Limits(...)`` (awareness/app
rate limits, error budget per link), ``join_timeout=10``. ``room.flush()`` sends coalesced
updates now (call it before ``stop()`` if you need them out immediately; ``stop()`` flushes
too). ``room.stats`` counts frames in/out, bad frames, rejected updates, dropped awareness.
``room.connected_peers`` lists peer ids with an open data channel.

Service peers: many rooms over ONE signaling connection::

    from peer import SignalingClient
    client = SignalingClient(signaling_url, service_token, settings)   # token_provider=async () -> str
                                            # optional: fetched before each reconnect (user tokens expire)
    client.on_room_active(cb(topic: str))   # server says someone is in the room
    client.on_room_idle(cb(topic: str))
    client.on_presence(cb(topic: str, peers: list[dict]))
    await client.start()                    # connects, reconnects with backoff on its own
    room = client.room(room_id, hold_sync=True, doc=...)   # a Room sharing the connection
    await room.start(); ...; await room.stop()              # stop() unsubscribes only that topic
    await client.stop()

Equivalently ``Room(url, token, room_id, settings, signaling=client)``. On every
reconnect the client re-subscribes all topics and each Room re-announces.

Text positions: pycrdt 0.14 ``Text`` indexes UTF-8 bytes, Yjs UTF-16 code units.
``peer.text.utf16_to_utf8(text, pos)`` / ``utf8_to_utf16(text, pos)`` convert;
``peer.text.insert_utf16(ytext, pos, s)`` / ``delete_utf16(ytext, pos, length)`` edit at a Yjs position.
"""

from __future__ import annotations

__all__ = ["Room", "PeerInfo", "SignalingClient"]


def __getattr__(name: str):  # lazy: importing peer.protocol must not pull in aiortc
    if name in ("Room", "PeerInfo"):
        from . import room

        return getattr(room, name)
    if name == "SignalingClient":
        from .signaling_client import SignalingClient

        return SignalingClient
    raise AttributeError(name)
