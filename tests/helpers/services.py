"""A signaling stack with a seeded room and the real ``codesync persist`` / ``codesync runner``
services, and aiortc ``peer.Room`` members of it (loopback ICE only)."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pycrdt

from codesync.settings import Settings
from peer import Room
from peer.persistence.store import DocumentStore
from tests.helpers.components import free_port, require
from tests.helpers.processes import Service, child_env, start_service
from tests.helpers.rooms import service_peer
from tests.helpers.stack import SeededRoom, Stack, signaling_stack
from tests.helpers.wait import wait_for, wait_http_ok

ICE_HOSTS = "127.0.0.1"  # loopback-only ICE


# ----------------------------------------------------------------------------- the stack
@dataclass
class Services:
    stack: Stack
    seeded: SeededRoom
    tmp: Path
    persist: Service | None = None
    runner: Service | None = None
    ops: dict[str, int] = field(default_factory=dict)

    async def metric(self, service: str, name: str, **labels: str) -> float:
        """A counter's value from the service's own ``/metrics`` (0 when absent)."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.ops[service]}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
            if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).items() >= labels.items():
                total += float(m.group(2))
        return total

    async def rest(self, as_label: str, method: str, path: str, **kw) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=10) as http:
            r = await http.request(method, path, headers={"Authorization": f"Bearer {self.seeded.token(as_label)}"}, **kw)
        assert r.status_code < 300, r.text
        return r

    async def set_role(self, label: str, role: str, by: str = "alice") -> None:
        await self.rest(by, "PUT", f"/api/rooms/{self.seeded.id}/members/{self.seeded.user(label).id}", json={"role": role})

    async def remove(self, label: str, by: str = "alice") -> None:
        await self.rest(by, "DELETE", f"/api/rooms/{self.seeded.id}/members/{self.seeded.user(label).id}")

    async def stored(self, doc: str = "") -> pycrdt.Doc:
        """The room's document as the database holds it now."""
        store = await DocumentStore.open(Settings(database_url=self.stack.database_url, data_dir=self.tmp / "data"))
        try:
            out = pycrdt.Doc()
            out.apply_update((await store.load(self.seeded.id, doc)).update)
            return out
        finally:
            await store.close()


@asynccontextmanager
async def services(tmp: Path, roles: dict[str, str | None], *, persist: bool = True, runner: bool = False,
                   before_persist=None) -> AsyncIterator[Services]:
    if runner:
        require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    async with signaling_stack(tmp) as stack:
        seeded = await stack.seed_room(roles)
        svc = Services(stack, seeded, tmp)
        base = {**stack.env, "CODESYNC_SIGNALING_URL": stack.url, "CODESYNC_ICE_HOSTS": "127.0.0.1"}
        try:
            if before_persist is not None:
                await before_persist(svc)
            if persist:
                svc.ops["persist"] = free_port()
                svc.persist = start_service(["persist"], child_env(**{
                    **base, "CODESYNC_SERVICE_TOKEN": await stack.service_token("persistence"),
                    "CODESYNC_PERSIST_IDLE_GRACE": "1", "CODESYNC_OPS_PORT": str(svc.ops["persist"]),
                }), tmp / "persist.log", name="persist")
                await wait_http_ok(f"http://127.0.0.1:{svc.ops['persist']}/healthz", svc.persist)
            if runner:
                svc.ops["runner"] = free_port()
                svc.runner = start_service(["runner"], child_env(**{
                    **base, "CODESYNC_SERVICE_TOKEN": await stack.service_token("runner"),
                    "CODESYNC_SANDBOX": "bubblewrap", "CODESYNC_RUNNER_IDLE_GRACE": "1",
                    "CODESYNC_OPS_PORT": str(svc.ops["runner"]),
                }), tmp / "runner.log", name="runner")
                await wait_http_ok(f"http://127.0.0.1:{svc.ops['runner']}/healthz", svc.runner)
            yield svc
        finally:
            for proc in (svc.runner, svc.persist):
                if proc is not None:
                    proc.stop()


@asynccontextmanager
async def peers(svc: Services, *labels: str, **kw) -> AsyncIterator[list[Room]]:
    async with AsyncExitStack() as es:
        rooms = []
        for label in labels:
            room = Room(svc.stack.url, svc.seeded.token(label), svc.seeded.id, ice_hosts=ICE_HOSTS, **kw)
            await room.start()
            es.push_async_callback(room.stop)
            rooms.append(room)
        yield rooms


async def all_linked(rooms: list[Room], *services_: str, timeout: float = 45) -> None:
    """Every peer has an open link to every other one and to each named service."""
    ids = {r.peer_id for r in rooms}

    def ready() -> bool:
        return all(ids - {r.peer_id} <= set(r.connected_peers) and all(service_peer(r, s) for s in services_)
                   for r in rooms)

    await wait_for(ready, timeout, what=f"links among {len(rooms)} peers and {services_}")
