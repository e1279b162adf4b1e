"""The signalling conversation of one room: which links exist (y-webrtc's ``SignalingConn``
message handler and ``Room.webrtcConns``).

What arrives on the room's signaling topic decides everything here; what travels on the
links is not this module's business (the Room hands their bytes to the document and
awareness parts):

- on (re)subscribing we publish ``announce``; whoever receives an ``announce`` initiates a
  link to its sender while below ``max_conns``;
- every ``signal`` carries a glare token; an offer arriving while our own offer to the same
  peer is pending wins only with the larger token;
- every ``publish`` stamps its ``from`` peer id in the :class:`~peer.roster.Roster`, every
  ``presence`` frame replaces the listed roles: users gone from presence lose every link and
  are ignored until listed again; users who come back make us re-announce;
- the server's ``error`` frames: a refused subscribe fails ``Room.start()``; ``forbidden``
  after joining means we were removed (every link closes); ``peer_id_taken`` makes us take a
  fresh peer id and announce again;
- a link that closes for any other reason than a newer offer makes us re-announce (at most
  once a second, never dropped), so a peer still in the room connects to us again.

CodeSync's additions on the wire: ``caps`` in every announce and signal, and with the
capability ``mesh`` (docs/protocol.md "Room topology"):

- links with service peers never count against ``max_conns`` (every member links to the
  persistence peer: the room's graph stays connected);
- a full peer refuses an offer from a mesh peer explicitly (a ``refuse`` signal); the
  offerer closes its pending link and does not offer to that peer for ``REFUSAL_BACKOFF``;
- a link not open within ``pending_timeout`` is closed (its slot is free again);
- we tell our linked mesh peers which links we have open (type 103, debounced) and keep
  what they tell us on their :class:`~peer.link.Link`; :meth:`Mesh.should_forward` applies
  the forward rule (:mod:`peer.topology`) to it;
- with free slots and members in presence we have no link with, we re-announce every
  ``MISSING_REANNOUNCE`` seconds (jittered), so links form again after churn — at most
  ``MISSING_REANNOUNCE_LIMIT`` times in a row without a change in presence or our links;
- two mesh peers that are both viewers (live roles) do not link: a viewer sends nothing the
  other may apply or forward (awareness is never relayed), so such a link would only cost a
  slot on each side. We neither offer to such a peer nor count it as missing, refuse its
  offer (``refuse`` with reason ``viewers``), answer its first announce with the same refuse
  (so it learns our caps and role) and close the link when both become viewers; a promotion
  makes us re-announce so the link forms.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import metrics
from . import protocol as p
from .link import Limits, Link, TransportFactory
from .metrics import Counters
from .roster import Roster
from .topology import should_forward

log = logging.getLogger(__name__)

MAX_KNOWN_PEERS = 1000  # PeerInfo records kept; the oldest disconnected ones go first
MAX_FRESH_PEER_IDS = 5  # peer_id_taken answered with a fresh id at most this often in a row
REANNOUNCE_INTERVAL = 1.0  # seconds between two announces made because a link closed or users returned
REFUSAL_BACKOFF = 30.0  # seconds we do not offer again to a peer that refused us (full)
LINKS_DEBOUNCE = 0.1  # seconds: changes of our open links within this go out as one type-103 message
MISSING_REANNOUNCE = 10.0  # seconds (±20 %) between announces while members we have no link with are present
MAX_BACKOFFS = 1000  # refusal back-off entries kept
MISSING_REANNOUNCE_LIMIT = 30  # such announces in a row without any change in presence or links


def new_glare_token() -> float:
    """y-webrtc's token: ``Date.now() + Math.random()`` — the larger one wins a glare."""
    return time.time() * 1000 + random.random()


@dataclass
class PeerInfo:
    """What we know about one remote peer id in the room."""

    peer_id: str
    sender: dict[str, Any] | None = None  # the server's stamp: {user_id, name, role} or {service}
    caps: frozenset[str] = frozenset()
    connected: bool = False
    synced: bool = False
    told_viewers: bool = False  # we answered its announce with refuse/viewers (once per peer id)
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


class Signaling(Protocol):
    """What the mesh needs of a signaling connection (:class:`peer.signaling_client.SignalingClient`)."""

    async def publish(self, topic: str, data: Any) -> bool: ...


class Mesh:
    """Links of one room, made and closed as signaling says. The Room gets told when a link
    opens, carries a message, or closes (``on_open``, ``on_message``, ``on_closed``), and
    when presence lets us write again (``on_writable``)."""

    def __init__(
        self,
        room_id: str,
        signaling: Signaling,
        *,
        peer_id: str,
        caps: tuple[str, ...],
        max_conns: int,
        limits: Limits,
        roster: Roster,
        counters: Counters,
        spawn: Callable[[Awaitable[Any]], Any],
        on_open: Callable[[Link, PeerInfo], None],
        on_message: Callable[[Link, bytes], None],
        on_closed: Callable[[Link, PeerInfo, bool], None],
        on_writable: Callable[[], None],
        pending_timeout: float = 10.0,
    ) -> None:
        self.room_id = room_id
        self.signaling = signaling
        self.peer_id = peer_id
        self.caps = caps
        self.max_conns = max_conns
        self.pending_timeout = pending_timeout
        self.limits = limits
        self.roster = roster
        self.counters = counters
        self.transport: TransportFactory | None = None  # set by Room.start()
        self.links: dict[str, Link] = {}
        self.peers: dict[str, PeerInfo] = {}
        self.removed = False  # the server took us out of the room (membership removed)
        self.running = False
        self.joined = asyncio.Event()  # our own announce came back (or the subscribe was refused)
        self.refused: str | None = None  # error code of a refused subscribe
        self._spawn = spawn
        self._on_open = on_open
        self._on_message = on_message
        self._on_closed = on_closed
        self._on_writable = on_writable
        self._fresh_ids = 0
        self._last_fresh_id = 0.0
        self._last_reannounce = 0.0
        self._reannounce_later: asyncio.TimerHandle | None = None
        self._pending: dict[Link, asyncio.TimerHandle] = {}  # links not open yet -> their timeout
        self._refused_by: dict[str, float] = {}  # peer id -> monotonic time until which we do not offer to it
        self._links_timer: asyncio.TimerHandle | None = None
        self._missing_announces = 0  # re-announces since presence or our links last changed

    # ------------------------------------------------------------------ questions
    def info(self, peer_id: str) -> PeerInfo:
        info = self.peers.get(peer_id)
        if info is None:
            if len(self.peers) >= MAX_KNOWN_PEERS:  # every browser reload is a new peer id
                gone = sorted((i for i in self.peers.values() if not i.connected), key=lambda i: i.last_seen)
                for old in gone[: len(self.peers) - MAX_KNOWN_PEERS + 1]:
                    del self.peers[old.peer_id]
                    self.roster.forget(old.peer_id)
            info = self.peers[peer_id] = PeerInfo(peer_id)
        return info

    def own_refusal(self, doc: str | None = None) -> str | None:
        """Why we may not write ``doc`` now; None when we may (or do not know who we are yet)."""
        if self.removed:
            return "removed"
        if self.roster.principal(self.peer_id) is None:
            return None
        return self.roster.write_refusal(self.peer_id, doc)

    def current(self, link: Link) -> bool:
        """True while ``link`` is the room's link to its peer (not replaced, not closed away)."""
        return self.links.get(link.peer_id) is link

    @property
    def mesh(self) -> bool:
        """We follow the room-topology rules (we advertise the capability ``mesh``)."""
        return "mesh" in self.caps

    @property
    def pending(self) -> int:
        """Links offered or answered whose data channel is not open yet."""
        return len(self._pending)

    def member_links(self) -> int:
        """Links that count against ``max_conns``: every link except those with service peers."""
        return sum(1 for link in self.links.values() if not link.service)

    def full(self) -> bool:
        return self.member_links() >= self.max_conns

    def is_service(self, peer_id: str) -> bool:
        principal = self.roster.principal(peer_id)
        return principal is not None and principal.service is not None

    def backing_off(self, peer_id: str) -> bool:
        """It refused us (full) less than REFUSAL_BACKOFF ago: no offer to it now."""
        until = self._refused_by.get(peer_id)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._refused_by[peer_id]
        return False

    def should_forward(self, origin: str, target: Link) -> bool:
        """The forward rule (peer.topology) for an update applied from ``origin``'s link."""
        if target.peer_id == origin:
            return False
        if "mesh" not in target.caps:
            return True
        origin_link = self.links.get(origin)
        origin_links = origin_link.remote_links if origin_link is not None and "mesh" in origin_link.caps else None
        return should_forward(self.peer_id, origin, target.peer_id, origin_links, target.remote_links,
                              passive=self._passive, service=self.is_service)

    def _passive(self, peer_id: str) -> bool:
        """Known not to forward usefully: it may not write the main document (a viewer, the
        runner), so whatever it forwarded would be dropped."""
        return self.roster.principal(peer_id) is not None and self.roster.write_refusal(peer_id) is not None

    def missing_members(self) -> list[str]:
        """Peer ids presence lists that we have no link with (and that did not just refuse us,
        and that are not viewers like us)."""
        return [pid for pid in self.roster.present_peer_ids
                if pid != self.peer_id and pid not in self.links and not self.backing_off(pid)
                and not self.viewer_pair(pid)]

    def viewer_pair(self, remote: str) -> bool:
        """We and ``remote`` are mesh peers and both viewers now (stamp and presence, live):
        no link between us. Neither of us may write the main document, so neither applies nor
        forwards what the other sends, and awareness is never relayed — a link would only
        carry our two cursors to each other, at the price of a slot on both sides. Viewers
        still link to writers and services (they get the document from them, and their
        cursor reaches the writers). A stock peer (no ``mesh``) is linked as before."""
        info = self.peers.get(remote)  # not info(): no record for ids we only saw in presence
        return (self.mesh and info is not None and "mesh" in info.caps
                and self.roster.role_of(self.peer_id) == "viewer" and self.roster.role_of(remote) == "viewer")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.running = True
        self.joined.clear()
        self.refused = None

    def stop(self) -> None:
        self.running = False
        if self._reannounce_later is not None:
            self._reannounce_later.cancel()
            self._reannounce_later = None
        if self._links_timer is not None:
            self._links_timer.cancel()
            self._links_timer = None

    async def reannounce_missing(self) -> None:
        """Rule 7: while we have free slots and presence lists members we have no link with,
        announce every MISSING_REANNOUNCE seconds (jittered), so links form again after churn
        (a refused offer, a dead pending link, peers that were full). One announce per period."""
        while self.running:
            await asyncio.sleep(MISSING_REANNOUNCE * random.uniform(0.8, 1.2))
            if (self.running and self.mesh and not self.removed and not self.full()
                    and self._missing_announces < MISSING_REANNOUNCE_LIMIT and self.missing_members()):
                self._missing_announces += 1  # bounded: a member who never links does not cost us forever
                self._last_reannounce = time.monotonic()
                await self.announce()

    # ------------------------------------------------------------------ signaling in
    def signaling_connected(self) -> None:
        if self.running:
            self._spawn(self.announce())

    def signaling_disconnected(self) -> None:
        pass  # links are peer to peer and survive a signaling outage

    def signal_received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "error":
            self._error(message)
        elif kind == "presence":
            self._presence(message.get("peers"))
        elif kind == "publish" and self.running:
            self._publish(message)

    def _error(self, message: dict[str, Any]) -> None:
        code = str(message.get("code") or "error")
        if code == "peer_id_taken" and self._take_fresh_peer_id():
            return
        if code == "forbidden" and self.joined.is_set() and not self.refused:
            self.removed_from_room()
        elif code == "forbidden" or not self.joined.is_set():
            # before our announce came back, an error about our topic is a refused subscribe
            # (forbidden, too_many_topics, ...): fail start() at once instead of timing out
            self.refused = code
            self.joined.set()
        else:
            log.info("room %s: signaling error %s: %s", self.room_id, code, message.get("message"))

    def _publish(self, message: dict[str, Any]) -> None:
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
                self.joined.set()
            return
        to = data.get("to")
        if to is not None and to != self.peer_id:
            return
        info = self.info(sender_from)
        info.last_seen = time.monotonic()
        sender = message.get("sender")
        if isinstance(sender, dict):
            info.sender = sender
        self.roster.stamp(sender_from, sender)
        if self.roster.blocked(sender_from) or self.removed:
            # its user is gone from presence (removed, or left): no links until listed again
            self.counters.drop("signal", "removed", sender_from)
            return
        caps = data.get("caps")
        if isinstance(caps, list):
            info.caps = frozenset(c for c in caps if isinstance(c, str))
        if data.get("type") == "announce":
            self.on_announce(sender_from)
        elif data.get("type") == "signal" and to == self.peer_id:
            signal = data.get("signal")
            if isinstance(signal, dict):
                self._spawn(self.on_signal(sender_from, signal, data.get("token")))

    def _presence(self, peers: Any) -> None:
        """Live roles: a demotion makes links read-only at once (the roster answers every
        writer check from the latest presence); a user gone from presence loses every link."""
        if not isinstance(peers, list):
            return
        was_refused = self.own_refusal() is not None
        self._missing_announces = 0
        viewer_pairs = {pid for pid in self.roster.present_peer_ids if self.viewer_pair(pid)}
        change = self.roster.presence(peers)
        for peer_id in change.close:
            link = self.links.get(peer_id)
            if link is not None:
                why = "its user is gone from the room" if self.roster.blocked(peer_id) else "it left"
                log.info("room %s: closing the link to %s: %s (presence)", self.room_id, peer_id, why)
                link.conn.close()
        if change.changed:
            log.info("room %s: roles changed for %d user(s) (presence)", self.room_id, len(change.changed))
        if change.returned and self.running:
            # they may have announced while we ignored them: make them connect to us again
            self.reannounce_soon()
        if was_refused and self.own_refusal() is None:
            self._on_writable()
        self._viewer_links(viewer_pairs)

    def _viewer_links(self, viewer_pairs_before: set[str]) -> None:
        """Roles changed: links between two viewers close; a peer that was a viewer like us
        and is not any more (one of us promoted) is missing now — announce so it links."""
        for pid, link in list(self.links.items()):
            if not link.closed and self.viewer_pair(pid):
                log.info("room %s: closing the link to %s: we are both viewers (presence)", self.room_id, pid)
                link.conn.close()
        if self.running and not self.removed and any(
                pid not in self.links and not self.viewer_pair(pid) for pid in viewer_pairs_before):
            self.reannounce_soon()

    def removed_from_room(self) -> None:
        """The server says we are no longer a member: stop writing, close every link."""
        if self.removed:
            return
        self.removed = True
        log.warning("room %s: we were removed from the room; closing %d links", self.room_id, len(self.links))
        for link in list(self.links.values()):
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
        if self.running:
            self._spawn(self.announce())
        return True

    # ------------------------------------------------------------------ signaling out
    async def announce(self) -> None:
        await self.signaling.publish(self.room_id, {"type": "announce", "from": self.peer_id, "caps": list(self.caps)})

    async def publish_signal(self, to: str, signal: dict[str, Any], token: float | None) -> None:
        """One ``signal`` to ``to``; ``token`` None (a ``refuse``) leaves the glare token out."""
        data: dict[str, Any] = {"type": "signal", "from": self.peer_id, "to": to, "signal": signal, "caps": list(self.caps)}
        if token is not None:
            data["token"] = token
        await self.signaling.publish(self.room_id, data)

    async def _signal_out(self, link: Link, signal: dict[str, Any]) -> None:
        if link.glare_token is None:
            link.glare_token = new_glare_token()
        await self.publish_signal(link.peer_id, signal, link.glare_token)

    def reannounce_soon(self) -> None:
        wait = self._last_reannounce + REANNOUNCE_INTERVAL - time.monotonic()
        if wait <= 0:
            self._reannounce()
        elif self._reannounce_later is None:
            self._reannounce_later = asyncio.get_running_loop().call_later(wait, self._reannounce)

    def _reannounce(self) -> None:
        self._reannounce_later = None
        if self.running:
            self._last_reannounce = time.monotonic()
            self._spawn(self.announce())

    # ------------------------------------------------------------------ links
    def on_announce(self, remote: str) -> None:
        if self.removed or self.roster.blocked(remote):
            return
        existing = self.links.get(remote)
        if existing is not None and not existing.closed:
            return
        if self.viewer_pair(remote):
            info = self.info(remote)
            if not info.told_viewers:
                # it may have joined after our announce: it knows neither our caps nor our
                # role and would count us as missing; one directed refuse tells it both
                info.told_viewers = True
                self._spawn(self._refuse(remote, "viewers"))
            return
        if not self._room_for(remote) or (self.mesh and self.backing_off(remote)):
            return
        link = self._new_link(remote, initiator=True)
        self._spawn(self._start_link(link))

    async def _start_link(self, link: Link) -> None:
        try:
            await link.conn.start()
        except Exception:
            log.exception("room %s: offer to %s failed", self.room_id, link.peer_id)
            link.conn.close()

    def _room_for(self, remote: str) -> bool:
        """A link with ``remote`` may be made: below max_conns, or ``remote`` is a service
        peer (those never count for a mesh peer; a stock-like peer counts every link)."""
        if self.mesh:
            return self.is_service(remote) or self.member_links() < self.max_conns
        return len(self.links) < self.max_conns

    async def on_signal(self, remote: str, signal: dict[str, Any], token: Any) -> None:
        kind = signal.get("type")
        link = self.links.get(remote)
        if kind == "refuse":
            self._refused(remote, link, signal.get("reason"))
            return
        if kind == "offer":
            if link is not None and not link.closed:
                local = link.glare_token
                if link.initiator and not link.open:  # glare: both of us are offering
                    if local is not None and isinstance(token, (int, float)) and local > token:
                        log.debug("room %s: glare with %s, our offer wins", self.room_id, remote)
                        return
                # we lost the glare, or the peer restarted its side: its offer replaces our link
                link.replaced = True
                await link.conn.aclose()
            link = self.links.get(remote)
            if link is None or link.closed:
                if self.viewer_pair(remote):
                    await self._refuse(remote, "viewers")  # a mesh peer, by viewer_pair's definition
                    return
                if not self._room_for(remote):
                    if self.mesh and "mesh" in self.info(remote).caps:
                        await self._refuse(remote, "full")
                    return  # a stock peer gets silence, as from y-webrtc
                link = self._new_link(remote, initiator=False)
        elif link is None or link.closed:
            return  # an answer or candidate for a link we no longer have
        if kind == "answer":
            link.glare_token = None
        try:
            await link.conn.handle_signal(signal)
        except Exception as exc:
            log.info("room %s: bad %s signal from %s: %s", self.room_id, kind, remote, exc)
            if kind in ("offer", "answer"):
                link.conn.close()

    async def _refuse(self, remote: str, reason: str) -> None:
        """Rule 6: we are full (``full``), or we and the offerer are both viewers
        (``viewers``); tell the (mesh) offerer at once so it tries someone else."""
        self.counters.stats["refusals_sent"] += 1
        metrics.REFUSALS.labels("sent", reason).inc()
        log.debug("room %s: refusing the offer of %s (%s; %d links)", self.room_id, remote, reason,
                  self.member_links())
        await self.publish_signal(remote, {"type": "refuse", "reason": reason}, None)

    def _refused(self, remote: str, link: Link | None, reason: Any = "full") -> None:
        """The peer we offered to refused: close our pending link. ``full``: no offers to it
        for a while. ``viewers``: no back-off — we offer only to a peer we do not see as a
        fellow viewer, and presence settles that (a promotion must link at once)."""
        if not self.mesh:
            return
        self.counters.stats["refusals_received"] += 1
        metrics.REFUSALS.labels("received", reason if reason in ("full", "viewers") else "other").inc()
        if reason == "viewers":
            if link is not None and link.initiator and not link.open and not link.closed:
                link.conn.close()
            return
        if len(self._refused_by) >= MAX_BACKOFFS:
            now = time.monotonic()
            self._refused_by = {k: v for k, v in self._refused_by.items() if v > now}
        if len(self._refused_by) < MAX_BACKOFFS:
            self._refused_by[remote] = time.monotonic() + REFUSAL_BACKOFF
        if link is not None and link.initiator and not link.open and not link.closed:
            link.conn.close()

    def _new_link(self, remote: str, initiator: bool) -> Link:
        assert self.transport is not None, "Room.start() sets the transport"
        link = Link(remote, initiator, self.info(remote).caps & frozenset(self.caps), self.limits, self.counters.stats)
        link.service = self.is_service(remote)
        link.conn = self.transport(
            remote,
            initiator,
            lambda signal: self._signal_out(link, signal),
            lambda: self._opened(link),
            lambda data: self._on_message(link, data),
            lambda: self._closed(link),
        )
        self.links[remote] = link
        self._pending[link] = asyncio.get_running_loop().call_later(self.pending_timeout, self._pending_expired, link)
        metrics.PENDING_LINKS.inc()
        return link

    def _not_pending(self, link: Link) -> None:
        timer = self._pending.pop(link, None)
        if timer is not None:
            timer.cancel()
            metrics.PENDING_LINKS.dec()

    def _pending_expired(self, link: Link) -> None:
        """Rule 5: a link that did not open in time (a lost offer or answer, ICE that never
        completes) is closed, freeing its slot; closing makes us re-announce."""
        if self._pending.pop(link, None) is None:
            return
        metrics.PENDING_LINKS.dec()
        if link.open or link.closed:
            return
        self.counters.stats["pending_timeouts"] += 1
        metrics.PENDING_TIMEOUTS.inc()
        log.info("room %s: the link to %s did not open within %.0fs; closing it", self.room_id, link.peer_id,
                 self.pending_timeout)
        link.conn.close()

    def _opened(self, link: Link) -> None:
        self._not_pending(link)
        if not self.current(link):
            return
        if self.viewer_pair(link.peer_id):
            # offered while one of us saw the other as a writer; presence has settled since
            log.info("room %s: closing the link to %s: we are both viewers", self.room_id, link.peer_id)
            link.conn.close()
            return
        info = self.info(link.peer_id)
        link.caps = info.caps & frozenset(self.caps)
        link.service = link.service or self.is_service(link.peer_id)
        info.connected = True
        self._on_open(link, info)
        self.links_changed()

    # ------------------------------------------------------------------ type 103: our links
    def links_changed(self) -> None:
        """Our set of open links changed: tell our mesh links (debounced)."""
        self._missing_announces = 0
        if self.mesh and self.running and self._links_timer is None:
            self._links_timer = asyncio.get_running_loop().call_later(LINKS_DEBOUNCE, self.send_links)

    def send_links(self) -> None:
        """Send our open links to every open mesh link that has not been told this set yet."""
        self._links_timer = None
        if not self.running:
            return
        now = frozenset(pid for pid, link in self.links.items() if link.open)
        frame: bytes | None = None
        for link in list(self.links.values()):
            if link.open and "mesh" in link.caps and link.sent_links != now:
                frame = frame or p.encode_links(now)
                if link.send(frame):
                    link.sent_links = now

    def links_received(self, link: Link, ids: frozenset[str] | None) -> None:
        """A type-103 message: what the peer says its open links are. It only changes what
        that peer itself is sent (or, as an origin, what its own updates reach — an editor's
        own business), so it needs no rights; malformed or oversized ones are counted and
        dropped."""
        if ids is None:
            self.counters.stats["links_malformed"] += 1
            self.counters.drop("links", "malformed", link.peer_id)
            return
        self.counters.stats["links_in"] += 1
        link.remote_links = ids - {link.peer_id}

    def _closed(self, link: Link) -> None:
        self._not_pending(link)
        if not self.current(link):
            return
        del self.links[link.peer_id]
        link.forget()
        self.links_changed()
        info = self.info(link.peer_id)
        was_connected = info.connected
        info.connected = False
        info.synced = False
        self._on_closed(link, info, was_connected)
        if self.running and not self.removed and not link.replaced and link.peer_id not in self.links:
            # y-webrtc re-announces so that a peer still in the room reconnects to us; at most
            # once a second, and a throttled one is deferred, never dropped (a link closed twice
            # within a second used to stay down for good — found by fuzzing)
            self.reannounce_soon()

    async def close_all(self) -> None:
        links = list(self.links.values())
        await asyncio.gather(*(link.conn.aclose() for link in links), return_exceptions=True)
        self.links.clear()
        for link in list(self._pending):
            self._not_pending(link)
