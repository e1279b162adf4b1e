"""Which received awareness entries a peer keeps (docs/protocol.md, "Awareness"). Pure, no I/O.

Awareness is never relayed: every peer sends its own state on its own links. So:

- **a client id belongs to the first link that announced it** until that link closes or
  removes the state; entries for that client id from any other link are dropped, and nobody
  speaks for the receiving peer's own client id;
- the state itself must match the link's principal (:func:`peer.rights.vet_awareness_state`:
  a person's ``user.id``, the stamped name, no ``service``/``saved``; a service's own name);
- bounds: state size, client ids per link, states held in total (entries per message and
  messages per second are bounded by the Room before decoding).

:class:`peer.room.Room` decodes a message, asks :meth:`AwarenessGate.vet`, applies what it
returns, and tells the gate when states go (:meth:`released`) or links close
(:meth:`link_closed`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .protocol import AwarenessEntry
from .rights import Principal, vet_awareness_state


class AwarenessGate:
    def __init__(self, own_client_id: int, *, state_bytes: int, per_link: int, total: int) -> None:
        self.own_client_id = own_client_id
        self.state_bytes = state_bytes
        self.per_link = per_link
        self.total = total
        self._owner: dict[int, str] = {}  # client id -> link (remote peer id) that announced it first
        self._owned: dict[str, set[int]] = {}  # link -> its client ids

    def owner(self, client_id: int) -> str | None:
        return self._owner.get(client_id)

    def vet(
        self,
        link: str,
        principal: Principal | None,
        entries: Iterable[AwarenessEntry],
        states: Mapping[int, Any],
    ) -> tuple[list[AwarenessEntry], Counter[str]]:
        """The entries to apply (states possibly rewritten) and the drops by reason."""
        kept: list[AwarenessEntry] = []
        drops: Counter[str] = Counter()
        owned = self._owned.get(link, set())
        for e in entries:
            cid = e.client_id
            if cid == self.own_client_id:
                if e.state is not None:
                    drops["own_client_id"] += 1
                continue  # nobody speaks for us (a removal of our state is ignored too)
            holder = self._owner.get(cid)
            if holder is not None and holder != link:
                drops["client_id_taken"] += 1
                continue
            if e.state is None:
                if holder == link:
                    kept.append(e)  # the owner removes its state; released once applied
                continue
            if len(json.dumps(e.state, separators=(",", ":"))) > self.state_bytes:
                drops["too_large"] += 1
                continue
            state, refusal = vet_awareness_state(principal, e.state)
            if state is None:
                drops[refusal or "refused"] += 1
                continue
            if holder is None:
                if len(owned) >= self.per_link or (cid not in states and len(self._owner) >= self.total):
                    drops["too_many"] += 1
                    continue
                self._owner[cid] = link
                owned.add(cid)
                self._owned[link] = owned
            kept.append(e if state is e.state else AwarenessEntry(cid, e.clock, state))
        return kept, drops

    def released(self, client_ids: Iterable[int]) -> None:
        """These states are gone (removed by their owner, timed out): their ids are free again."""
        for cid in client_ids:
            link = self._owner.pop(cid, None)
            if link is not None:
                ids = self._owned.get(link)
                if ids is not None:
                    ids.discard(cid)
                    if not ids:
                        del self._owned[link]

    def link_closed(self, link: str) -> list[int]:
        """The link is gone: its client ids (whose states the caller removes) are free again."""
        ids = self._owned.pop(link, set())
        for cid in ids:
            self._owner.pop(cid, None)
        return sorted(ids)
