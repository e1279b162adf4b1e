"""The runner peer under test: a ``codesync runner`` process (bubblewrap) on a signaling stack
with a seeded room, and :class:`Client` — a user's peer that asks it for runs and reads them.
"""

from __future__ import annotations

import base64
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pycrdt

from peer import Room
from tests.helpers.components import require
from tests.helpers.processes import Service, child_env, start_service
from tests.helpers.stack import SeededRoom, Stack, joined, signaling_stack
from tests.helpers.wait import wait_for


@asynccontextmanager
async def runner_stack(tmp: Path, **env: str) -> AsyncIterator[tuple[Stack, SeededRoom, Service]]:
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    async with signaling_stack(tmp) as stack:
        seeded = await stack.seed_room({"ann": "owner", "ed": "editor", "vic": "viewer"})
        runner = start_service(
            ["runner"],
            child_env(
                **{
                    **stack.env,
                    "CODESYNC_SIGNALING_URL": stack.url,
                    "CODESYNC_SERVICE_TOKEN": await stack.service_token("runner"),
                    "CODESYNC_ICE_HOSTS": "127.0.0.1",
                    "CODESYNC_SANDBOX": "bubblewrap",
                    "CODESYNC_RUNNER_IDLE_GRACE": "1",
                    **env,
                }
            ),
            tmp / "runner.log",
            name="runner",
        )
        try:
            yield stack, seeded, runner
        finally:
            runner.stop()


class Client:
    """A user's aiortc peer plus the app replies it received."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.replies: list[dict] = []
        room.on_app(lambda obj, _peer: self.replies.append(obj))

    @property
    def runs(self) -> pycrdt.Map:
        return self.room.docs["runs"].get("runs", type=pycrdt.Map)  # the named document only the runner writes

    @property
    def source(self) -> pycrdt.Text:
        return self.room.doc.get("source", type=pycrdt.Text)

    def runner(self) -> str | None:
        for peer_id, info in self.room.peers.items():
            if info.service == "runner" and info.connected and "app" in info.caps:
                return peer_id
        return None

    def field(self, run_id: str, key: str):
        entry = self.runs.get(run_id)
        return None if entry is None else entry.get(key)

    def output(self, run_id: str) -> str:
        entry = self.runs.get(run_id)
        return "" if entry is None else str(entry["output"])

    async def request(self, op: str, run_id: str, **extra) -> dict:
        runner = await wait_for(self.runner, timeout=20, what="a connected runner peer")
        assert await self.room.send_app(runner, {"op": op, "run_id": run_id, **extra})
        return await wait_for(
            lambda: next((r for r in self.replies if r.get("run_id") == run_id and str(r.get("op")).startswith(op + "-")), None),
            timeout=15,
            what=f"reply to {op}",
        )

    async def run(self, run_id: str, language: str = "python", **extra) -> dict:
        sv = base64.b64encode(self.room.doc.get_state()).decode()
        return await self.request("run", run_id, language=language, state_vector=sv, **extra)


@asynccontextmanager
async def clients(stack: Stack, seeded: SeededRoom, *labels: str) -> AsyncIterator[list[Client]]:
    async with joined(stack, seeded, *labels) as rooms:
        yield [Client(room) for room in rooms]
