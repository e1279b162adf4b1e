"""Awareness (type 1) and query awareness (type 3) on the links of one room.

y-webrtc's ``Room`` awareness half with CodeSync's rules (docs/protocol.md, "Awareness"):

- awareness is never relayed: on a link's open and on a query we send only our own state;
  our local changes go to every link on the Room's coalescing flush;
- a received message passes the link's rate bucket, is decoded with a bound on its entries
  and then vetted by :class:`~peer.awareness_gate.AwarenessGate` (client ids belong to the
  first link that announced them, states must match the link's principal); only what the
  gate keeps reaches pycrdt's ``Awareness``;
- a closed link's client ids are freed and their states removed; on leaving we send our
  state's removal (y-protocols: a null state means "left").

pycrdt's awareness encoder writes character counts as byte lengths, so frames are encoded by
:mod:`peer.protocol`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from pycrdt import Awareness

from . import protocol as p
from .awareness_gate import AwarenessGate
from .events import Emitter
from .link import Limits, Link
from .metrics import Counters
from .rights import Principal

log = logging.getLogger(__name__)


class AwarenessSync:
    def __init__(
        self,
        awareness: Awareness,
        limits: Limits,
        *,
        principal: Callable[[str], Principal | None],
        counters: Counters,
        events: Emitter,
        schedule_flush: Callable[[], None],
    ) -> None:
        self.awareness = awareness
        self.limits = limits
        self.running = False
        self.gate = AwarenessGate(
            awareness.client_id,
            state_bytes=limits.awareness_state_bytes,
            per_link=limits.awareness_per_link,
            total=limits.awareness_clients,
        )
        self._principal = principal
        self._counters = counters
        self._events = events
        self._schedule_flush = schedule_flush
        self._dirty: set[int] = set()
        self._sub = awareness.observe(self._changed)

    async def run(self) -> None:
        """pycrdt's timer: renews our state and expires silent remote ones."""
        try:
            await self.awareness.start()
        except RuntimeError:
            pass  # already started by the caller

    # ------------------------------------------------------------------ sending
    def _encode(self, client_ids: list[int]) -> bytes:
        return p.encode_awareness_update(self.awareness.states, self.awareness.meta, client_ids)

    def own_frame(self) -> bytes | None:
        """Our own state as an awareness frame (awareness is never relayed)."""
        if self.awareness.get_local_state() is None:
            return None
        return p.encode_awareness(self._encode([self.awareness.client_id]))

    def link_opened(self, link: Link) -> None:
        self.answer_query(link)

    def answer_query(self, link: Link) -> None:
        own = self.own_frame()
        if own is not None:
            link.send(own)

    def flush(self, links: Iterable[Link]) -> None:
        if self._dirty:
            ids, self._dirty = sorted(self._dirty), set()
            frame = p.encode_awareness(self._encode(ids))
            for link in links:
                if link.open:
                    link.send(frame)

    def leave(self, links: Iterable[Link]) -> None:
        """Tell the links our state is gone (y-protocols: null state = left)."""
        try:
            self.awareness.set_local_state(None)
            frame = p.encode_awareness(self._encode([self.awareness.client_id]))
            for link in links:
                link.conn.send(frame)
        except Exception:
            log.debug("could not announce our departure", exc_info=True)
        self._dirty.clear()

    def _changed(self, topic: str, payload: tuple[dict[str, Any], Any]) -> None:
        changes, origin = payload
        if topic == "change":
            if changes["removed"]:
                self.gate.released(changes["removed"])
            self._events.emit("awareness", changes, origin)
            return
        if origin == "local" and self.running:  # "update" also fires on renewal, as in y-protocols
            self._dirty.update(changes["added"] + changes["updated"] + changes["removed"])
            self._schedule_flush()

    # ------------------------------------------------------------------ received
    def apply(self, link: Link, update: bytes) -> None:
        remote = link.peer_id
        if not link.awareness_bucket.take():
            self._counters.drop("awareness", "rate", remote)
            return
        entries = p.decode_awareness_update(update, max_entries=self.limits.awareness_entries)
        kept, drops = self.gate.vet(remote, self._principal(remote), entries, self.awareness.states)
        for reason, n in drops.items():
            self._counters.drop("awareness", reason, remote, n)
        if not kept:
            return
        filtered = p.encode_awareness_update(
            {e.client_id: e.state for e in kept if e.state is not None},
            {e.client_id: {"clock": e.clock} for e in kept},
            [e.client_id for e in kept],
        )
        self.awareness.apply_awareness_update(filtered, remote)

    def link_closed(self, link: Link) -> None:
        gone = [cid for cid in self.gate.link_closed(link.peer_id) if cid != self.awareness.client_id]
        if gone:
            self.awareness.remove_awareness_states(gone, "disconnect")
