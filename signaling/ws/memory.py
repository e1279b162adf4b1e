"""In-process hub: one signaling node, everything in memory (the embedded default)."""

from __future__ import annotations

import time

from .connection import Connection
from .hub import Hub


class Reservations:
    """Peer ids whose connection closed, kept for their principal until the grace ends.

    Insertion order is expiry order (the grace is constant; a re-reserved id moves to the
    end), so expired ones are swept from the front. Each principal holds at most ``cap`` —
    only its own oldest reservations make room, so nobody can evict another's.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._by_peer: dict[str, tuple[str, float]] = {}  # peer id -> (principal, expiry)
        self._by_principal: dict[str, dict[str, None]] = {}  # principal -> its peer ids, oldest first

    def __len__(self) -> int:
        return len(self._by_peer)

    def holder(self, peer_id: str) -> str | None:
        """The principal ``peer_id`` is reserved to, if its grace has not ended."""
        self.sweep()
        found = self._by_peer.get(peer_id)
        return found[0] if found is not None else None

    def reserve(self, peer_id: str, principal: str, cap: int) -> None:
        if self.grace <= 0 or cap <= 0:
            return
        self.drop(peer_id)
        self._by_peer[peer_id] = (principal, time.monotonic() + self.grace)
        mine = self._by_principal.setdefault(principal, {})
        mine[peer_id] = None
        while len(mine) > cap:
            self.drop(next(iter(mine)))
        self.sweep()

    def drop(self, peer_id: str) -> None:
        found = self._by_peer.pop(peer_id, None)
        if found is None:
            return
        mine = self._by_principal.get(found[0])
        if mine is not None:
            mine.pop(peer_id, None)
            if not mine:
                del self._by_principal[found[0]]

    def sweep(self) -> None:
        now = time.monotonic()
        while self._by_peer:
            peer_id = next(iter(self._by_peer))
            if self._by_peer[peer_id][1] > now:
                return
            self.drop(peer_id)


class MemoryHub(Hub):
    def __init__(self, peer_id_grace: float = 60.0, reserve_cap: tuple[int, int] = (80, 20000)) -> None:
        super().__init__(peer_id_grace, reserve_cap)
        self._owners: dict[str, Connection] = {}  # peer id -> connection that bound it
        self.reserved = Reservations(self.peer_id_grace)

    async def _entry_changed(self, conn: Connection, topic: str, present: bool) -> None:
        self.room_changed(topic)

    def _local_peer(self, peer_id: str) -> Connection | None:
        return self._owners.get(peer_id)

    async def _claim(self, conn: Connection, peer_id: str) -> bool:
        owner = self._owners.get(peer_id)
        if owner is not None and owner is not conn:
            if owner.principal_key != conn.principal_key:
                return False
            # The same user reconnecting before its old socket timed out: the id moves.
            owner.bound.discard(peer_id)
            for topic, used in owner.peer_ids.items():
                if peer_id in used:
                    used.discard(peer_id)
                    self.room_changed(topic)
        elif owner is None:
            holder = self.reserved.holder(peer_id)
            if holder is not None and holder != conn.principal_key:
                return False  # its owner's connection closed a moment ago: kept for them
            self.reserved.drop(peer_id)
        self._owners[peer_id] = conn
        return True

    async def _release(self, conn: Connection, peer_ids: set[str]) -> None:
        cap = self.reserve_cap[1] if conn.is_service else self.reserve_cap[0]
        for peer_id in peer_ids:
            if self._owners.get(peer_id) is conn:
                del self._owners[peer_id]
                self.reserved.reserve(peer_id, conn.principal_key, cap)
