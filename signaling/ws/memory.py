"""In-process hub: one signaling node, everything in memory (the embedded default)."""

from __future__ import annotations

from .connection import Connection
from .hub import Hub


class MemoryHub(Hub):
    def __init__(self) -> None:
        super().__init__()
        self._owners: dict[str, Connection] = {}  # peer id -> connection that bound it

    async def _entry_changed(self, conn: Connection, topic: str, present: bool) -> None:
        self.room_changed(topic)

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
        self._owners[peer_id] = conn
        return True

    async def _release(self, conn: Connection, peer_ids: set[str]) -> None:
        for peer_id in peer_ids:
            if self._owners.get(peer_id) is conn:
                del self._owners[peer_id]
