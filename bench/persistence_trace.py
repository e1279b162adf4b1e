"""End-to-end trace replay through the persistence peer.

A real ``codesync signaling`` and ``codesync persist`` process, two aiortc peers (alice, bob).
The rustcode trace's 36,981 keystroke updates arrive at alice as an editor would produce them
(the loop yields every ``--batch``); alice's peer library sends them on, coalesced, to bob and
to the persistence peer. Measured from the first update until

- the persistence peer's awareness ``saved`` state vector covers alice's whole document —
  i.e. the last update is durable in SQL (``stored``);
- bob holds ``endContent`` (``peer``).

Then the persistence peer is restarted (SIGTERM: flush + compact) and a new peer, carol,
joins the room alone with it: join-to-synced from storage, and a check of the content.

Usage::

    .venv/bin/python -m bench.persistence_trace [--postgres] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402

from tests.helpers.traces import load_trace, trace_updates  # noqa: E402
from peer import Room  # noqa: E402
from tests.helpers.components import postgres_database  # noqa: E402
from tests.helpers.persistence import persist_stack, persistence_peers, saved_covers, stored_text

ICE_HOSTS = "127.0.0.1"  # loopback-only ICE


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.005)


async def run(tmp: Path, database_url: str | None, batch: int, verbose: bool = False) -> dict:
    updates, end = trace_updates(load_trace("rustcode"))
    async with persist_stack(tmp, database_url) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor", "carol": "editor"})
        first = persisters.start(CODESYNC_PERSIST_IDLE_GRACE="30", CODESYNC_PERSIST_COMPACT_ROWS="200")
        async with AsyncExitStack() as es:
            alice = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
            bob = Room(stack.url, seeded.token("bob"), seeded.id, ice_hosts=ICE_HOSTS)
            for r in (alice, bob):
                await r.start()
                es.push_async_callback(r.stop)
            await until(lambda: persistence_peers(alice) and persistence_peers(bob) and bob.connected_peers, 60)
            await until(lambda: saved_covers(alice), 30)
            tb = bob.doc.get("source", type=pycrdt.Text)
            t0 = time.perf_counter()
            for i, u in enumerate(updates, 1):
                alice.doc.apply_update(u)
                if i % batch == 0:
                    await asyncio.sleep(0)
            sent = time.perf_counter() - t0
            peer_s = stored_s = None
            while peer_s is None or stored_s is None:
                if peer_s is None and len(tb) == len(end) and str(tb) == end:
                    peer_s = time.perf_counter() - t0
                if stored_s is None and saved_covers(alice):
                    stored_s = time.perf_counter() - t0
                if time.perf_counter() - t0 > 300:
                    raise TimeoutError("trace replay did not finish")
                await asyncio.sleep(0.005)
        first.stop()
        first.proc.wait(60)
        assert await stored_text(stack.database_url, seeded.id, tmp) == end
        second = persisters.start()
        await until(lambda: "connected to" in second.log(), 60)  # process start is not the point
        carol = Room(stack.url, seeded.token("carol"), seeded.id, ice_hosts=ICE_HOSTS)
        t1 = time.perf_counter()
        await carol.start()
        try:
            tc = carol.doc.get("source", type=pycrdt.Text)
            await until(lambda: len(tc) == len(end), 60)
            join_s = time.perf_counter() - t1
            assert str(tc) == end
        finally:
            await carol.stop()
        if verbose:
            print(second.log()[-4000:], file=sys.stderr)
    return {
        "db": "postgres" if database_url else "sqlite",
        "updates": len(updates),
        "editor_loop_s": round(sent, 3),
        "stored_s": round(stored_s, 3),
        "stored_updates_per_s": round(len(updates) / stored_s),
        "peer_s": round(peer_s, 3),
        "peer_updates_per_s": round(len(updates) / peer_s),
        "restart_join_to_content_ms": round(1000 * join_s, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", action="store_true", help="store in a throwaway PostgreSQL database")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--verbose", action="store_true", help="print the restarted persistence peer's log")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        if args.postgres:
            async with postgres_database() as url:
                result = await run(Path(tmp), url, args.batch, args.verbose)
        else:
            result = await run(Path(tmp), None, args.batch, args.verbose)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
