"""Live numbers for the admin page: connected peers, active rooms, runs in progress.

Where each number honestly comes from:

* **Connections and active rooms** are what the ``/signal`` hub of each signaling node holds
  (the same state its ``codesync_signal_connections`` / ``codesync_signal_rooms`` gauges count).
  One node alone is the whole server. With Redis every node writes a snapshot of its own
  numbers into ``{prefix}:admin:nodes`` every few seconds; the admin API adds up the snapshots
  younger than three intervals and says how many nodes answered. A room with users on two
  nodes counts once (the snapshots list room ids, not just counts).
* **Runs in progress** live in the runner process (``codesync_runner_sandboxes``, plus
  ``codesync_runner_waiting``): the signaling server reads the runners' (and persistence
  peers') ``/metrics`` from ``CODESYNC_ADMIN_METRICS_URLS`` when the page asks, with a short
  timeout, and shows each source's state — a runner it cannot reach is shown as unreachable,
  never as zero. Without the setting the page says that runs are not observed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import httpx
from aiohttp import web

from .state import STATE, AppState

log = logging.getLogger("codesync.livestats")

INTERVAL = 5.0  # seconds between a node's snapshots in Redis
MAX_ROOMS = 20_000  # room ids per snapshot (beyond that: counted, not listed)
SCRAPE_TIMEOUT = 2.0
WATCHED = {
    "codesync_runner_sandboxes": "runs_in_progress",
    "codesync_runner_waiting": "runs_waiting",
    "codesync_runner_rooms": "runner_rooms",
    "codesync_persist_rooms_owned": "persistence_rooms",
}


def local_snapshot(hub: Any) -> dict[str, Any]:
    """This node's numbers, from its hub."""
    users = services = 0
    for conn in list(hub.connections.values()):
        if conn.is_service:
            services += 1
        else:
            users += 1
    rooms: dict[str, int] = {}
    for topic, conns in list(hub.topics.items()):
        n = sum(1 for c in conns.values() if not c.is_service)
        if n:
            rooms[topic] = n
    listed = dict(sorted(rooms.items(), key=lambda kv: -kv[1])[:MAX_ROOMS])
    return {"users": users, "services": services, "rooms": listed, "room_count": len(rooms), "at": time.time()}


def _redis_key(state: AppState) -> str:
    return f"{state.settings.redis_prefix}:admin:nodes"


async def _publish_loop(state: AppState, hub: Any, node: str) -> None:
    key = _redis_key(state)
    while True:
        try:
            assert state.redis is not None
            await state.redis.hset(key, node, json.dumps(local_snapshot(hub), separators=(",", ":")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis briefly gone: the page shows fewer nodes
            log.debug("could not publish this node's live numbers (%s)", type(exc).__name__)
        await asyncio.sleep(INTERVAL)


async def signaling_numbers(state: AppState, hub: Any) -> dict[str, Any]:
    """Connections and active rooms of the whole server (every live node)."""
    snapshots = [local_snapshot(hub)]
    source = "this node"
    if state.redis is not None:
        try:
            raw = await state.redis.hgetall(_redis_key(state))
            now = time.time()
            fresh, stale = [], []
            for node, value in raw.items():
                snap = json.loads(value)
                (fresh if now - float(snap.get("at", 0)) <= 3 * INTERVAL else stale).append((node, snap))
            if stale:
                await state.redis.hdel(_redis_key(state), *[n for n, s in stale if now - float(s.get("at", 0)) > 60])
            mine = state.extras.get("livestats_node")
            snapshots += [snap for node, snap in fresh if (node.decode() if isinstance(node, bytes) else node) != mine]
            source = f"{len(snapshots)} signaling node(s)"
        except Exception as exc:  # noqa: BLE001
            source = f"this node only (Redis: {type(exc).__name__})"
    rooms: dict[str, int] = {}
    for snap in snapshots:
        for room, n in snap.get("rooms", {}).items():
            rooms[room] = rooms.get(room, 0) + int(n)
    return {
        "connected_users": sum(int(s.get("users", 0)) for s in snapshots),
        "connected_services": sum(int(s.get("services", 0)) for s in snapshots),
        "active_rooms": max(len(rooms), max((int(s.get("room_count", 0)) for s in snapshots), default=0)),
        "rooms": rooms,
        "nodes": len(snapshots),
        "source": source,
    }


async def scrape(url: str) -> dict[str, Any]:
    """One ``/metrics`` endpoint's watched values, or why it could not be read."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
            r = await client.get(url)
        if r.status_code != 200:
            return {"url": url, "ok": False, "error": f"HTTP {r.status_code}"}
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(r.text):
            name = WATCHED.get(family.name)
            if name:
                values[name] = sum(s.value for s in family.samples if s.name == family.name)
        return {"url": url, "ok": True, "values": values}
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return {"url": url, "ok": False, "error": type(exc).__name__}


async def service_numbers(state: AppState) -> dict[str, Any]:
    urls = state.settings.admin_metrics_url_list
    if not urls:
        return {
            "configured": False, "sources": [], "runs_in_progress": None, "runs_waiting": None,
            "note": "runs are not observed: set CODESYNC_ADMIN_METRICS_URLS to the runners' /metrics "
                    "(codesync up does it when CODESYNC_OPS_PORT is set)",
        }
    sources = await asyncio.gather(*(scrape(u) for u in urls))
    runners = [s for s in sources if s["ok"] and "runs_in_progress" in s["values"]]

    def total(name: str) -> int | None:
        return int(sum(s["values"][name] for s in runners)) if runners else None

    return {
        "configured": True,
        "sources": list(sources),
        "runs_in_progress": total("runs_in_progress"),
        "runs_waiting": total("runs_waiting"),
        "runners": len(runners),
        "unreachable": sum(1 for s in sources if not s["ok"]),
    }


async def _context(app: web.Application):
    from .ws.server import HUB

    state = app[STATE]
    hub = app[HUB]
    task = None
    if state.redis is not None:
        node = hub.node or uuid.uuid4().hex[:12]
        state.extras["livestats_node"] = node
        task = asyncio.create_task(_publish_loop(state, hub, node), name="livestats")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                assert state.redis is not None
                await state.redis.hdel(_redis_key(state), state.extras["livestats_node"])
            except Exception:  # noqa: BLE001
                pass


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_context)
