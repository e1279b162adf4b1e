"""Headless CodeSync peers: aiortc WebRTC + pycrdt, speaking y-webrtc / y-protocols.

This docstring is the interface other parts (persistence peer, runner) code against.
Wire formats and the trust model are in docs/protocol.md; a developer's tour is in
docs/peer-library.md. The library stands alone: it imports nothing of the server (no
``Settings``); callers pass what it needs as plain arguments.

Joining one room (a user-like peer, its own signaling connection)::

    from peer import Room
    room = Room(signaling_url, token, room_id, ice_hosts=None, doc=None, peer_id=None, docs=None)
    room.on_update(lambda update, origin_peer_id: ...)   # every REMOTE update applied to room.doc
    await room.start()          # connect signaling, subscribe, announce; returns once subscribed
    room.doc["source"]          # pycrdt.Doc; local edits are broadcast automatically (coalesced)
    room.docs["runs"]           # the named document ``runs`` (type 102; pass your own: docs={"runs": Doc()})
    room.awareness              # pycrdt.Awareness (local state: room.awareness.set_local_state({...}))
    room.peers                  # dict peer_id -> PeerInfo(peer_id, sender, caps, connected, synced)
    room.links                  # read-only: peer_id -> peer.link.Link (per-link state; link.conn: the transport)
    await room.stop()

The trust model (docs/protocol.md, "The trust model") is enforced on everything received,
with no option to turn it off:

- ``room.principal(peer_id)`` -> ``peer.rights.Principal(user_id, name, role, service)`` or None:
  whom a link belongs to — the server's ``sender`` stamp for that peer id, with the *effective,
  live* role (the latest presence frame's; the stamp's until presence lists the user; None
  once the user is gone from presence). ``room.role_of(peer_id)`` is that role (None for
  services). Decide on these, never on ``PeerInfo.sender`` (the stamp of the link's setup).
  ``room.own_principal``: ourselves as the server sees us.
- Main-document updates and SyncStep2 are applied only from owners, editors and the
  persistence service; the ``runs`` document only from the runner and persistence services.
  Everything else is dropped, counted and never forwarded (only applied changes are relayed;
  named documents are never relayed). A refused SyncStep2 still completes the handshake.
- A demotion shown in presence makes that link read-only at once; a user gone from presence
  loses every link and its announces/offers are ignored until presence lists it again.
- We ourselves: while we may not write a document our local edits to it are kept, not sent
  (``stats["withheld_updates"]``); main-document edits go out if we may write again
  (promotion). Removed from the room (``forbidden``): ``room.removed`` and every link closed.
- Awareness: a client id belongs to the first link that announced it; a person's state must
  carry their stamped ``user.id`` (``user.name`` is replaced by the stamped name) and no
  ``service``/``saved``; a service's state must name that service. We send only our own state.
- Counted: ``room.dropped`` ``{(what, reason): n}``, ``room.stats["updates_dropped"]`` /
  ``["awareness_dropped"]``, and the Prometheus counter ``codesync_peer_dropped_total{what,
  reason}`` (served by ``codesync persist`` / ``codesync runner``). Rules: ``peer.rights``,
  ``peer.roster``, ``peer.awareness_gate``.
- ``peer_id_taken`` from the server: the room takes a fresh ``room.peer_id`` and announces again.

``signaling_url`` may be ``ws://host:port/signal`` or the HTTP base ``http://host:port``
(ICE servers come from ``GET <base>/api/ice-servers``). ``ice_hosts`` (a list or a comma-
separated string of addresses; services pass ``CODESYNC_ICE_HOSTS``) restricts ICE to them
(peer/ice.py; one policy per process); None or empty: aioice's defaults.

Callbacks (all plain callables run in the event loop; return value ignored — a coroutine
runs as a task, cancelled by ``stop()``; exceptions are logged, never propagated; events go
through one pyee emitter, ``peer.events.Emitter``). Each ``on_*`` returns an ``unsubscribe()``
callable:

- ``room.on_update(cb(update: bytes, origin_peer_id: str))`` — a remote update (SyncStep2 or
  Update) that passed the writer check and that pycrdt applied to ``room.doc``. The
  persistence peer stores here. Local edits and ``room.load()`` do NOT fire it.
- ``room.on_doc_update(cb(name: str, update: bytes, origin_peer_id: str))`` — the same for a
  named document ``room.docs[name]``.
- ``room.on_app(cb(obj: dict, from_peer_id: str))`` — a type-101 app message (JSON object).
- ``room.on_peer(cb(peer_id: str, info: PeerInfo, event: str))`` — event is one of
  ``"connected"`` (data channel open), ``"synced"`` (its SyncStep2 applied), ``"disconnected"``.
- ``room.on_awareness(cb(changes: dict, origin))`` — thin alias of awareness "change".

Holding SyncStep1 answers until the stored document is loaded (persistence peer)::

    room = Room(..., hold_sync=True)       # join early, answer nobody's SyncStep1 yet
    await room.start()
    room.load(stored_update)               # apply without broadcasting / without on_update
    room.load(stored_runs, doc="runs")     # the same for a named document
    room.release_sync()                    # now answer queued and future SyncStep1s (all documents)
    # or: Room(..., ready=some_asyncio_event) — answers wait until the event is set.

``room.load(update)`` may also be called before ``start()``. ``await room.wait_synced(peer_id=None,
timeout=...)`` waits until one (or the given) peer's SyncStep2 has been applied.

App messages: ``await room.send_app(peer_id, obj)`` and ``await room.broadcast_app(obj)`` —
only to peers whose caps include "app" (stock y-webrtc peers never get type >= 100).
``room.buffered_amount(peer_id)``: bytes queued towards that peer not yet taken by SCTP (a
service answering large requests, e.g. history, looks before queuing more).

More keyword options of ``Room`` (all optional): ``max_conns=100`` (y-webrtc's limit on links;
links with service peers do not count), ``coalesce_delay=0.002`` (seconds; outgoing updates
merged per flush), ``relay=True`` (forward remote main-document updates it applied to the
other links where the forward rule says so — docs/protocol.md "Room topology"),
``anti_entropy_interval=5.0`` (seconds ±20 % between SyncStep1 rounds on every link — rounds run
only after our documents changed, and every sixth anyway; 0: off),
``pending_timeout=10.0`` (seconds a link may take to open),
``caps=peer.protocol.CAPS`` (``("chunk", "app", "docs", "roles", "mesh")``; ``()`` announces like a
stock y-webrtc peer and relays everything — it still enforces the trust model), ``limits=peer.room.Limits(...)``
(awareness/app rate limits and bounds, error budget per link), ``join_timeout=10``,
``transport=`` (how links are made: a ``peer.link.TransportFactory``; default aiortc — the tests
wire rooms through an in-memory one, tests/helpers/memory_peers.py), ``signaling=`` (see below).
``room.flush()`` sends coalesced updates now (call it before ``stop()`` if you need them out
immediately; ``stop()`` flushes too). ``room.stats`` counts frames in/out, bad frames,
rejected updates, dropped updates and awareness, and the room topology's counts
(``updates_in``, ``duplicates``, ``forwarded``, ``repairs``, ``pending_timeouts``, ``refusals_*``,
``oversize_*``). ``room.connected_peers`` lists peer ids with an open data channel;
``room.pending_links`` counts links not open yet; ``room.remote_links(peer_id)`` is what that
peer last said its open links are; ``room.anti_entropy()`` runs one SyncStep1 round now.

Service peers: many rooms over ONE signaling connection::

    from peer import SignalingClient
    client = SignalingClient(signaling_url, service_token)   # token_provider=async () -> str
                                            # optional: fetched before each reconnect (user tokens expire)
    client.on_room_active(cb(topic: str))   # server says someone is in the room
    client.on_room_idle(cb(topic: str))
    client.on_presence(cb(topic: str, peers: list[dict]))
    await client.start()                    # connects, reconnects with backoff on its own
    room = Room.over(client, room_id, ice_hosts=..., hold_sync=True, doc=...)   # sharing the connection
    await room.start(); ...; await room.stop()              # stop() unsubscribes only that topic
    await client.stop()

Equivalently ``Room(url, token, room_id, signaling=client, ...)``. On every reconnect the
client re-subscribes all topics and each Room re-announces. ``client.on_error(cb(frame))``,
``on_connected``, ``on_disconnected`` exist too. (``peer.service.RoomService.room(room_id, ...)``
does this for the persistence peer and the runner, with the configured ICE hosts.)

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
