"""The documents of one room on its links: y-protocols sync (type 0) for the main document,
CodeSync's named-document sync (type 102), the SyncStep1 hold, coalescing and relaying.

y-webrtc's ``Room`` document half, plus what CodeSync adds (docs/protocol.md):

- on a link's open we send SyncStep1 for the main document (and for every named document to
  peers with ``docs``); a SyncStep1 is answered with SyncStep2 — unless answers are *held*
  (a service peer loading its stored document first): then they queue until
  :meth:`release_sync`;
- a received Update or SyncStep2 passes the writer check (the roster's live principal of the
  link, :mod:`peer.rights`) before pycrdt sees it; refused ones are dropped and counted, and
  a refused SyncStep2 still completes the handshake;
- what pycrdt integrated is reported (``update`` / ``doc_update`` events) and, for the main
  document only, relayed to the other links where the forward rule says so
  (:func:`peer.topology.should_forward`, asked through ``forward``): a peer forwards only
  what it applied, and only while it may write itself. Named documents are never relayed;
- anti-entropy: :meth:`anti_entropy` (the Room's timer) sends SyncStep1 for each document
  that changed since the last round (all of them every ``QUIET_ROUNDS + 1``-th round); a
  SyncStep1 from a link we have not asked for ``ask_window`` is answered with ours as well,
  so one changed peer's round repairs both sides of each of its links. The answers repair
  whatever a link missed (counted: ``repairs``). A quiet room costs no anti-entropy messages
  between the catch-all rounds; a service peer asks only the links that changed it;
- outgoing updates are queued and sent on :meth:`flush` (the Room's coalescing timer), merged
  with ``merge_updates`` into one message per link (aiortc pays per message, not per byte);
- our own edits while we may not write are kept (``withheld_updates``) and sent once we may
  again (:meth:`resume_writing`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pycrdt
from pycrdt import Doc, merge_updates

from . import metrics
from . import protocol as p
from .events import Emitter
from .link import Link
from .metrics import Counters
from .roster import Roster
from .segments import split_update

log = logging.getLogger(__name__)

STOCK_MESSAGE_MAX = 200 * 1024
"""Bytes above which a main-document sync message to a peer without ``chunk`` (a stock
y-webrtc client: Chromium takes at most 256 KiB) travels as several bounded updates."""
SMALL_FRAME = 16 * 1024  # below every peer's limit: sent as it is (the per-keystroke case)

_LOAD = object()  # transaction origin marker for load()

QUIET_ROUNDS = 5
"""Anti-entropy rounds skipped in a row while none of our documents changed; the next one
is a catch-all round (with the Room's 5 s: every 30 s in a quiet room, instead of every 5 s)."""


class DocumentSync:
    def __init__(
        self,
        doc: Doc,
        docs: dict[str, Doc],
        links: Mapping[str, Link],
        *,
        roster: Roster,
        own_refusal: Callable[[str | None], str | None],
        counters: Counters,
        events: Emitter,
        schedule_flush: Callable[[], None],
        bad: Callable[[Link, str], None],
        synced: Callable[[Link], None],
        forward: Callable[[str, Link], bool] = lambda origin, link: True,
        relay: bool = True,
        released: bool = True,
    ) -> None:
        self.doc = doc
        self.docs = docs
        self.relay = relay
        self.released = released
        self.running = False
        self._links = links
        self._roster = roster
        self._own_refusal = own_refusal
        self._counters = counters
        self._stats = counters.stats
        self._events = events
        self._schedule_flush = schedule_flush
        self._bad = bad
        self._synced = synced
        self._forward = forward
        self._integrated = False  # set by the observers: the update being applied changed something
        self._applying: Any = None  # origin of the transaction being applied: a peer id, _LOAD or None (local)
        self._applying_relayed = False  # ... and whether it arrived as a type-104 (forwarded) Update
        self._remote_changes: list[tuple[str | None, bytes, str]] = []  # (doc name or None, update, origin)
        self._held_step1: list[tuple[str, str | None, bytes]] = []  # (peer id, doc name or None, state vector)
        self._pending: list[tuple[bytes, str | None, bool]] = []  # (update, origin peer or None=local, came relayed)
        self._pending_docs: dict[str, list[bytes]] = {}  # named doc -> our own updates to send
        self._withheld_since: bytes | None = None  # state vector before our first unsent edit
        self.changed: set[str | None] = {None, *docs}  # documents (None: main) changed since our last round
        self._sources: set[tuple[str, str | None]] = set()  # (peer id, doc) whose updates changed us since then
        self._served: set[str] = set()  # peer ids we forwarded main-document updates to since then
        self.hub: Callable[[], bool] = lambda: False  # are we a service peer (linked to everyone)? set by the Room
        self._version: dict[str | None, int] = {}  # per document (None: main): bumped on every change
        self._answers: dict[str | None, tuple[int, bytes, bytes]] = {}  # doc -> (version, state vector, answer)
        self.ask_window = 1.0  # seconds: a SyncStep1 we sent on a link this recently is not sent again
        self._quiet_rounds = 0
        self._asked: dict[tuple[str, str | None], float] = {}  # (peer id, doc name) -> when we sent SyncStep1
        self._doc_sub = doc.observe(self._doc_changed)
        self._named_subs = {
            name: named.observe(lambda event, name=name: self._named_changed(name, event))
            for name, named in docs.items()
        }

    # ------------------------------------------------------------------ loading and the hold
    def load(self, update: bytes, doc: str | None = None) -> None:
        """Apply a stored update without firing callbacks; it is broadcast only if SyncStep1
        answers were already released (before that, peers get it in their SyncStep2)."""
        target = self.doc if doc is None else self.docs[doc]
        self._applying = _LOAD
        try:
            target.apply_update(update)
        finally:
            self._applying = None

    def release_sync(self) -> None:
        """Answer every held and future SyncStep1 (the stored document is loaded)."""
        if self.released:
            return
        self.released = True
        held, self._held_step1 = self._held_step1, []
        for peer_id, name, state_vector in held:
            link = self._links.get(peer_id)
            if link is not None and link.open:
                try:
                    self._answer_step1(link, state_vector, name)
                except p.ProtocolError as exc:
                    self._bad(link, str(exc))

    # ------------------------------------------------------------------ links
    def link_opened(self, link: Link) -> None:
        self._ask(link, None)
        if "docs" in link.caps:
            for name in self.docs:
                self._ask(link, name)

    def _ask(self, link: Link, name: str | None) -> None:
        """SyncStep1 for the main (None) or a named document on ``link``."""
        if name is None:
            link.send(p.encode_sync_step1(self.doc.get_state()))
        else:
            link.send(p.encode_doc(name, p.SYNC_STEP1, self.docs[name].get_state()))
        self._asked[(link.peer_id, name)] = time.monotonic()

    def _asked_recently(self, link: Link, name: str | None) -> bool:
        at = self._asked.get((link.peer_id, name))
        return at is not None and time.monotonic() - at < self.ask_window

    def anti_entropy(self, force: bool = False) -> int:
        """One round: SyncStep1 (our state vectors) for each document of ours that changed
        since the last round — all of them when ``force`` or after QUIET_ROUNDS quiet rounds
        (the catch-all).

        The main document's goes to every link (a viewer's or the runner's answer is empty,
        but our SyncStep1 makes it ask us back — see :meth:`step1`); each named document's to
        the links whose answer we would apply. The answers bring whatever we missed — an
        update lost on a link that closed, a forward skipped in a race, a dropped offer — and
        the SyncStep1 they send back brings them what they missed. Why rounds only after a
        change: an update can only be missing somewhere if that document changed, and every
        peer that holds it changed when it got it; so a quiet room is quiet on the wire too
        (issue 15: anti-entropy was most of a big room's idle cost). The catch-all round
        covers what even that misses (a change we asked about a moment before it happened).

        A service peer (``hub``: linked to every member, so every changed member asks it each
        round) asks only the links whose updates changed it since its last round and those it
        forwarded to (members it serves as the hub may have missed a copy and have no one else
        to ask), outside the catch-all: its cost per keystroke must not grow with the room.
        Returns the number of links asked."""
        catch_all = force or self._quiet_rounds >= QUIET_ROUNDS
        if not (catch_all or self.changed):
            self._quiet_rounds += 1
            self._stats["anti_entropy_skipped"] += 1
            return 0
        changed, self.changed = self.changed, set()
        sources, self._sources = self._sources, set()
        served, self._served = self._served, set()
        hub = not catch_all and self.hub()
        self._quiet_rounds = 0
        asked = 0
        for link in list(self._links.values()):
            if not link.open:
                continue
            names: list[str | None] = [None]
            if "docs" in link.caps:
                names += [name for name in self.docs if self._roster.write_refusal(link.peer_id, name) is None]
            names = [name for name in names if (catch_all or name in changed)
                     and not (hub and (link.peer_id, name) not in sources and (name is not None or link.peer_id not in served))
                     and not self._asked_recently(link, name)]
            for name in names:
                self._ask(link, name)
            asked += bool(names)
        self._stats["anti_entropy_rounds"] += 1
        self._stats["anti_entropy_asked"] += asked
        return asked

    def link_closed(self, link: Link) -> None:
        self._held_step1 = [held for held in self._held_step1 if held[0] != link.peer_id]
        for name in [None, *self.docs]:
            self._asked.pop((link.peer_id, name), None)
            self._sources.discard((link.peer_id, name))
        self._served.discard(link.peer_id)

    # ------------------------------------------------------------------ received
    def step1(self, link: Link, state_vector: bytes, name: str | None) -> None:
        if (name in link.step2_docs and not self._asked_recently(link, name)
                and self._roster.write_refusal(link.peer_id, name) is None
                and (not self.hub() or self._ahead_of_us(state_vector, name))):
            # an anti-entropy SyncStep1 (the handshake is over) from a peer whose answer we
            # would apply: it changed, so we may be the one missing something — ask back (a
            # service peer only when the asker holds updates it has not: every member asks it)
            self._ask(link, name)
        if self.released:
            if self._pending or self._pending_docs:
                # what waits for the coalescing timer goes first: else the answer carries it
                # and the Update that follows is a duplicate
                self.flush()
            self._answer_step1(link, state_vector, name)
        else:
            remote = link.peer_id
            self._held_step1 = [h for h in self._held_step1 if h[0] != remote or h[1] != name]
            self._held_step1.append((remote, name, state_vector))

    def _ahead_of_us(self, state_vector: bytes, name: str | None) -> bool:
        """The state vector has some client further than our document of ``name`` has."""
        try:
            theirs = p.decode_state_vector(state_vector)
        except p.ProtocolError:
            return False  # the answer reports it
        ours = p.decode_state_vector((self.doc if name is None else self.docs[name]).get_state())
        return any(clock > ours.get(client, 0) for client, clock in theirs.items())

    def _answer_step1(self, link: Link, state_vector: bytes, name: str | None = None) -> None:
        """SyncStep2 for the main (or a named) document: every member may read. A peer that
        may not write the document answers with an empty update: its copy holds only what
        writers wrote, which the asker gets from them, and the asker would drop it anyway."""
        doc = self.doc if name is None else self.docs[name]
        if self._own_refusal(name) is not None:
            update = p.EMPTY_UPDATE
        else:
            # in a quiet room every link asks with the same state vector (the catch-all round):
            # the last answer is kept until the document changes
            version = self._version.get(name, 0)
            cached = self._answers.get(name)
            if cached is not None and cached[0] == version and cached[1] == state_vector:
                update = cached[2]
            else:
                try:
                    update = doc.get_update(state_vector)
                except Exception as exc:
                    raise p.ProtocolError(f"bad state vector: {exc}") from exc
                self._answers[name] = (version, bytes(state_vector), update)
        if name is None:
            self.send_sync(link, update, p.SYNC_STEP2)
        else:
            link.send(p.encode_doc(name, p.SYNC_STEP2, update))

    def send_sync(self, link: Link, update: bytes, step: int, frame: bytes | None = None) -> bool:
        """One main-document SyncStep2 or Update. To a peer without ``chunk`` whose limit it
        exceeds (or STOCK_MESSAGE_MAX), it goes as several bounded updates (peer.segments):
        Updates, and the last one as ``step`` — a stock client integrates them in order and
        counts itself synced after the last. Counted: ``oversize_split`` / ``oversize_unsplittable``."""
        if frame is None:
            frame = p.encode_sync_step2(update) if step == p.SYNC_STEP2 else p.encode_sync_update(update)
        if "chunk" in link.caps or len(frame) <= SMALL_FRAME:
            return link.send(frame)
        limit = min(link.conn.max_message_size or STOCK_MESSAGE_MAX, STOCK_MESSAGE_MAX)
        if len(frame) <= limit:
            return link.send(frame)
        try:
            segments = split_update(update, limit - 16)  # 16: the sync frame's own header
        except ValueError:
            log.exception("could not split a %d-byte update", len(update))
            segments = None
        if segments is None:
            self._stats["oversize_unsplittable"] += 1
            metrics.OVERSIZE.labels("unsplittable").inc()
            log.warning("a %d-byte update for %s holds one value above its %d-byte limit: not sent",
                        len(update), link.peer_id, limit)
            return link.send(frame)  # dropped and counted by the link
        self._stats["oversize_split"] += 1
        metrics.OVERSIZE.labels("split").inc()
        for segment in segments[:-1]:
            if not link.send(p.encode_sync_update(segment)):
                return False
        last = segments[-1]
        return link.send(p.encode_sync_step2(last) if step == p.SYNC_STEP2 else p.encode_sync_update(last))

    def apply_remote(self, link: Link, update: bytes, step: int, name: str | None = None, relayed: bool = False) -> None:
        """Hot path (once per received keystroke): the writer check, then pycrdt. ``relayed``:
        a type-104 Update — the link's peer forwarded it (it is not its own), so we forward
        it on to no peer with ``relayed`` (docs/protocol.md "Room topology")."""
        remote = link.peer_id
        if step == p.SYNC_UPDATE and name is None:
            self._stats["updates_in"] += 1
        if update != p.EMPTY_UPDATE:
            refusal = self._roster.write_refusal(remote, name)
            if refusal is not None:
                # dropped, never applied, so never forwarded; a SyncStep2 still completes the
                # handshake below (every member may read, only writers may write)
                self._counters.drop("update" if name is None else "doc_update", refusal, remote)
                update = p.EMPTY_UPDATE
        if update != p.EMPTY_UPDATE:
            self._applying = remote
            self._applying_relayed = relayed
            self._integrated = False
            try:
                (self.doc if name is None else self.docs[name]).apply_update(update)
            except BaseException as exc:
                if p.is_fatal(exc):
                    raise
                self._stats["rejected_updates"] += 1
                raise p.ProtocolError(f"update rejected by pycrdt: {exc}") from exc
            finally:
                self._applying = None
                self._applying_relayed = False
            if self._integrated:
                self._sources.add((remote, name))
            if not self._integrated:
                if step == p.SYNC_UPDATE:  # (a SyncStep2 that brings nothing is anti-entropy doing its job)
                    self._stats["duplicates"] += 1
                    metrics.DUPLICATES.inc()
            elif step == p.SYNC_STEP2 and name in link.step2_docs:
                # an answer to anti-entropy (the handshake's SyncStep2 came before) that
                # brought something: a missed update repaired
                self._stats["repairs"] += 1
                metrics.REPAIRS.inc()
        if step == p.SYNC_STEP2:
            link.step2_docs.add(name)
            if name is None:
                self._synced(link)

    def deliver_remote_changes(self) -> None:
        """Report what pycrdt integrated from a frame (after the frame, never inside a transaction)."""
        while self._remote_changes:
            changes, self._remote_changes = self._remote_changes, []
            for name, update, origin in changes:
                if name is None:
                    self._events.emit("update", update, origin)
                else:
                    self._events.emit("doc_update", name, update, origin)

    # ------------------------------------------------------------------ document changes
    def _doc_changed(self, event: pycrdt.TransactionEvent) -> None:
        update = event.update
        if update == p.EMPTY_UPDATE:
            return
        self.changed.add(None)
        self._version[None] = self._version.get(None, 0) + 1
        origin = self._applying
        self._integrated = True
        if origin is _LOAD:
            if self.released:
                self._queue_update(update, None)
            return
        if origin is None:  # a local edit
            if self._own_refusal(None) is None:
                self._queue_update(update, None)
            else:  # we may not write (demoted, removed): keep it, send it if we may again
                self._stats["withheld_updates"] += 1
                if self._withheld_since is None:
                    self._withheld_since = event.before_state
        else:  # a remote update that pycrdt integrated (observers run at commit time)
            self._remote_changes.append((None, update, origin))
            # only what we applied is forwarded (it passed our writer check), and only while
            # we may write: nobody would accept it from us otherwise
            if self.relay and self._own_refusal(None) is None:
                self._queue_update(update, origin, self._applying_relayed)

    def _named_changed(self, name: str, event: pycrdt.TransactionEvent) -> None:
        """A named document changed. Never relayed: only our own changes are sent."""
        update = event.update
        if update == p.EMPTY_UPDATE:
            return
        self.changed.add(name)
        self._version[name] = self._version.get(name, 0) + 1
        origin = self._applying
        self._integrated = True
        if origin is _LOAD:
            if self.released:
                self._queue_named(name, update)
        elif origin is None:
            if self._own_refusal(name) is None:
                self._queue_named(name, update)
            else:
                self._stats["withheld_updates"] += 1  # nobody would accept it from us
        else:
            self._remote_changes.append((name, update, origin))

    def resume_writing(self) -> None:
        """We may write again (promoted): send the edits we kept while we might not."""
        since, self._withheld_since = self._withheld_since, None
        if since is None:
            return
        try:
            update = self.doc.get_update(since)
        except Exception:  # noqa: BLE001 - never seen; peers get it in a later SyncStep2
            log.exception("could not encode the withheld edits")
            return
        self._queue_update(update, None)

    # ------------------------------------------------------------------ sending
    def _queue_update(self, update: bytes, origin: str | None, relayed: bool = False) -> None:
        """Hot path (once per keystroke): an append; the per-link work happens at flush."""
        if self.running and self._links:
            self._pending.append((update, origin, relayed))
            self._schedule_flush()

    def _queue_named(self, name: str, update: bytes) -> None:
        if self.running and self._links:
            self._pending_docs.setdefault(name, []).append(update)
            self._schedule_flush()

    def _forwards(self, origin: tuple[str, bool], link: Link, split: bool) -> bool:
        """Whether an update applied from ``origin`` (peer id, came relayed) goes to ``link``:
        one that came relayed never to a peer with ``relayed`` (its author's links were
        covered by the peer that forwarded it to us); otherwise the forward rule."""
        peer_id, relayed = origin
        if relayed and split:
            return False
        return self._forward(peer_id, link)

    def _send_merged(self, link: Link, frames: dict, key: tuple[bool, frozenset[tuple[str, bool]]],
                     pending: list[tuple[bytes, str | None, bool]], *, forwarded: bool) -> None:
        """One merged message to ``link``: ``key`` = (as type 104, the origins forwarded); the
        merge is shared by every link with the same key."""
        as_relayed, origins = key
        if key not in frames:
            if as_relayed:
                updates = [u for u, o, r in pending if o is not None and (o, r) in origins]
            else:
                updates = [u for u, o, r in pending if o is None or (o, r) in origins]
            frames[key] = _merged_frame(updates, relayed=as_relayed)
        merged = frames[key]
        if merged is None:
            return
        update, frame = merged
        if as_relayed or len(frame) <= SMALL_FRAME:
            sent = link.send(frame)  # type 104 goes only to CodeSync peers: they take chunks
        else:
            sent = self.send_sync(link, update, p.SYNC_UPDATE, frame)
        if sent and forwarded:
            self._served.add(link.peer_id)
            self._stats["forwarded"] += 1
            self._stats["forwarded_bytes"] += len(frame)
            metrics.forwarded(link.kind, len(frame))

    def flush(self) -> None:
        """Send what was queued: per link, our own updates and the remote ones the forward rule
        sends there (never back to their origin), merged — to a peer with ``relayed`` as two
        messages, our own as an Update and the forwarded ones as one type-104 Update (so it
        never forwards them again); to anyone else as one Update — and one merged type-102
        Update per named document to peers with ``docs``."""
        if self._pending:
            pending, self._pending = self._pending, []
            frames: dict[tuple[bool, frozenset[tuple[str, bool]]], tuple[bytes, bytes] | None] = {}
            origins = {(origin, relayed) for _, origin, relayed in pending if origin is not None}
            own = any(origin is None for _, origin, _ in pending)
            for link in list(self._links.values()):
                if not link.open:
                    continue
                split = "relayed" in link.caps
                key = frozenset(o for o in origins if self._forwards(o, link, split)) if origins else frozenset()
                if split:
                    if own:
                        self._send_merged(link, frames, (False, frozenset()), pending, forwarded=False)
                    if key:
                        self._send_merged(link, frames, (True, key), pending, forwarded=True)
                elif own or key:
                    self._send_merged(link, frames, (False, key), pending, forwarded=bool(key))
        if self._pending_docs:
            pending_docs, self._pending_docs = self._pending_docs, {}
            for name, updates in pending_docs.items():
                try:
                    doc_update = updates[0] if len(updates) == 1 else merge_updates(*updates)
                except Exception:
                    log.exception("merge_updates failed on %d updates of %s", len(updates), name)
                    continue
                frame = p.encode_doc(name, p.SYNC_UPDATE, doc_update)
                for link in list(self._links.values()):
                    if link.open and "docs" in link.caps:
                        link.send(frame)


def _merged_frame(updates: list[bytes], relayed: bool = False) -> tuple[bytes, bytes] | None:
    """(merged update, its Update frame — type 104 when ``relayed``)."""
    if not updates:
        return None
    try:
        merged = updates[0] if len(updates) == 1 else merge_updates(*updates)
    except Exception:
        log.exception("merge_updates failed on %d updates", len(updates))
        return None
    return merged, p.encode_relayed_update(merged) if relayed else p.encode_sync_update(merged)
