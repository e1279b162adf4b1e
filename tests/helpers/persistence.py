"""The persistence peer under test: ``codesync persist`` processes on a signaling stack, and
what a peer can tell about what they stored (their ``saved`` awareness, the database).

Used by the persistence, workspace and fuzz tests and by the benchmarks.
"""

from __future__ import annotations

import base64
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pycrdt

from codesync.settings import Settings
from peer import Room
from peer.persistence.store import DocumentStore
from peer.protocol import decode_state_vector
from tests.helpers.processes import Service, child_env, start_service
from tests.helpers.stack import Stack, signaling_stack


def persistence_states(room: Room) -> list[dict]:
    return [s for s in room.awareness.states.values() if isinstance(s, dict) and s.get("service") == "persistence"]


def saved_covers(room: Room) -> bool:
    """Some persistence peer says it has stored everything this peer's document holds."""
    mine = decode_state_vector(room.doc.get_state())
    for state in persistence_states(room):
        saved = state.get("saved") or {}
        if saved.get("status") != "saved":
            continue
        stored = decode_state_vector(base64.b64decode(saved["state_vector"]))
        if all(stored.get(c, 0) >= clock for c, clock in mine.items()):
            return True
    return False


def persistence_peers(room: Room) -> list[str]:
    return [pid for pid, info in room.peers.items() if info.service == "persistence" and info.connected]


def source(room: Room) -> pycrdt.Text:
    return room.doc.get("source", type=pycrdt.Text)


async def stored_text(database_url: str, room_id: str, tmp: Path) -> str:
    store = await DocumentStore.open(Settings(database_url=database_url, data_dir=tmp / "data"))
    try:
        doc = pycrdt.Doc()
        doc.apply_update((await store.load(room_id)).update)
        return str(doc.get("source", type=pycrdt.Text))
    finally:
        await store.close()


class Persisters:
    """``codesync persist`` child processes for one stack."""

    def __init__(self, stack: Stack, tmp: Path, token: str, **env: str) -> None:
        self.stack, self.tmp, self.token, self.env = stack, tmp, token, env
        self.started: list[Service] = []

    def start(self, **env: str) -> Service:
        n = len(self.started)
        svc = start_service(
            ["persist"],
            child_env(
                **{
                    **self.stack.env,
                    "CODESYNC_SIGNALING_URL": self.stack.url,
                    "CODESYNC_SERVICE_TOKEN": self.token,
                    "CODESYNC_ICE_HOSTS": "127.0.0.1",
                    "CODESYNC_PERSIST_IDLE_GRACE": "1",
                    "CODESYNC_PERSIST_LEASE_TTL": "2",
                    "CODESYNC_PERSIST_COMPACT_ROWS": "20",
                    **self.env,
                    **env,
                }
            ),
            self.tmp / f"persist-{n}.log",
            name=f"persist-{n}",
        )
        self.started.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in self.started:
            svc.stop()


@asynccontextmanager
async def persist_stack(tmp: Path, database_url: str | None = None, **env: str) -> AsyncIterator[tuple[Stack, Persisters]]:
    async with signaling_stack(tmp, database_url=database_url) as stack:
        persisters = Persisters(stack, tmp, await stack.service_token("persistence"), **env)
        try:
            yield stack, persisters
        finally:
            persisters.stop_all()
