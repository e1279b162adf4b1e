"""Helpers for ``peer.Room`` peers, in memory or over real processes: the documents' parts,
what a modified client sends, what a room dropped, and starting rooms together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pycrdt

from peer import Room


@asynccontextmanager
async def started(*rooms: Room) -> AsyncIterator[tuple[Room, ...]]:
    async with AsyncExitStack() as es:
        for room in rooms:
            await room.start()
            es.push_async_callback(room.stop)
        yield rooms


async def turns(n: int = 20) -> None:
    """Let the in-memory network deliver what is in flight (every hop is one loop turn)."""
    for _ in range(n):
        await asyncio.sleep(0)


def source(room: Room | pycrdt.Doc) -> pycrdt.Text:
    doc = room.doc if isinstance(room, Room) else room
    return doc.get("source", type=pycrdt.Text)


def runs_of(room: Room | pycrdt.Doc) -> pycrdt.Map:
    """Run records: the ``runs`` map of the named document ``runs``."""
    doc = room.docs["runs"] if isinstance(room, Room) else room
    return doc.get("runs", type=pycrdt.Map)


def v1_runs(room: Room | pycrdt.Doc) -> pycrdt.Map:
    """The main document's v1 ``runs`` map (no longer used)."""
    doc = room.doc if isinstance(room, Room) else room
    return doc.get("runs", type=pycrdt.Map)


def service_peer(room: Room, service: str) -> str | None:
    return next((pid for pid, info in room.peers.items() if info.service == service and info.connected), None)


def send_raw(room: Room, frame: bytes) -> int:
    """What a modified client does: a frame straight down every open data channel."""
    sent = 0
    for link in list(room.links.values()):
        if link.conn.open and link.conn.send(frame):
            sent += 1
    return sent


def forged_update(room: Room, text: str) -> bytes:
    """An insert of ``text`` at the start of ``source``, made in a copy of the room's document
    under another client id (the attacker's own document stays clean)."""
    side = pycrdt.Doc()
    side.apply_update(room.doc.get_update())
    before = side.get_state()
    source(side).insert(0, text)
    return side.get_update(before)


def drops(room: Room, what: str, reason: str) -> int:
    return room.dropped.get((what, reason), 0)


UPDATE_PREFIX = bytes((0, 2))  # y-protocols sync, Update
RELAYED_PREFIX = bytes((104,))  # a forwarded Update (type 104)


def lose_first(room: Room, peer_id: str, prefix: bytes = UPDATE_PREFIX) -> list[bytes]:
    """The network loses the first message starting with ``prefix`` on ``room``'s link to
    ``peer_id``; returns the list it is appended to (empty until then)."""
    conn = room.links[peer_id].conn
    real_send = conn.send
    lost: list[bytes] = []

    def lossy(data: bytes) -> bool:
        if not lost and data[: len(prefix)] == prefix:
            lost.append(data)
            return True
        return real_send(data)

    conn.send = lossy  # type: ignore[method-assign]
    return lost
