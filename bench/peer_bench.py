"""peer/ benchmarks: real aiortc peers on loopback and a real ``codesync signaling`` process.

Measures (README, "Benchmarks"):

- join-to-synced: a new peer starts (signaling connect, subscribe, announce, ICE, DTLS, SCTP,
  SyncStep1/2) until it holds a 100 KB / 5 MB document;
- one-way edit latency: a one-character edit on peer A until peer B applied it (same
  process, same clock), p50/p99, edits spaced ``--gap-ms`` apart;
- trace replay throughput: the rustcode trace's 36,981 per-keystroke updates applied to
  peer A as they arrive from an editor, until peer B holds ``endContent``; compared with
  pycrdt's own ``apply_update`` rate for the same updates;
- memory per connection: RSS growth for K open links (both ends in this process).

Usage::

    .venv/bin/python -m bench.peer_bench [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402

from tests.helpers.traces import load_trace, trace_updates  # noqa: E402
from peer import Room  # noqa: E402
from peer.connection import PeerConnection  # noqa: E402
from peer.ice import apply_ice_policy, rtc_configuration  # noqa: E402
from tests.helpers.stack import joined, signaling_stack  # noqa: E402

TRACE = "rustcode"
ICE_HOSTS = "127.0.0.1"  # loopback-only ICE


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def text_of(room: Room) -> pycrdt.Text:
    return room.doc.get("source", type=pycrdt.Text)


async def until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.001)


# ------------------------------------------------------------------ join-to-synced
async def join_to_synced(stack, seeded, size: int, rounds: int) -> dict:
    line = "fn main() { println!(\"hello\"); }  // padding padding padding\n"
    content = (line * (size // len(line) + 1))[:size]
    a = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
    await a.start()
    text_of(a).insert(0, content)
    times = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            b = Room(stack.url, seeded.token("bob"), seeded.id, ice_hosts=ICE_HOSTS)
            await b.start()
            await b.wait_synced(a.peer_id, timeout=120)
            times.append((time.perf_counter() - t0) * 1000)
            assert len(str(text_of(b))) == size
            await b.stop()
    finally:
        await a.stop()
    return {"bytes": size, "rounds": rounds, "median_ms": statistics.median(times), "all_ms": times}


# ------------------------------------------------------------------ edit latency
async def edit_latency(stack, seeded, edits: int, gap_ms: float) -> dict:
    async with joined(stack, seeded, "alice", "bob", ice_hosts=ICE_HOSTS) as (a, b):
        await until(lambda: a.connected_peers and b.connected_peers, 30)
        await b.wait_synced(a.peer_id)
        arrived: list[float] = []
        b.on_update(lambda update, origin: arrived.append(time.perf_counter()))
        lat = []
        ta = text_of(a)
        for i in range(edits):
            n = len(arrived)
            t0 = time.perf_counter()
            ta.insert(0, "x")
            await until(lambda: len(arrived) > n, 10)
            lat.append((arrived[n] - t0) * 1000)
            await asyncio.sleep(gap_ms / 1000)
    return {
        "edits": edits,
        "gap_ms": gap_ms,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
    }


# ------------------------------------------------------------------ trace replay
def rustcode_updates() -> tuple[list[bytes], str]:
    """One update per trace transaction, as an editor would emit them."""
    trace = load_trace(TRACE)
    updates, end = trace_updates(trace)
    assert end == trace["endContent"]
    return updates, end


def pycrdt_apply_rate(updates: list[bytes]) -> float:
    best = 0.0
    for _ in range(3):
        doc = pycrdt.Doc()
        t0 = time.perf_counter()
        for u in updates:
            doc.apply_update(u)
        best = max(best, len(updates) / (time.perf_counter() - t0))
    return best


async def trace_replay(stack, seeded, updates: list[bytes], end: str, batch: int) -> dict:
    async with joined(stack, seeded, "alice", "bob", ice_hosts=ICE_HOSTS) as (a, b):
        await until(lambda: a.connected_peers and b.connected_peers, 30)
        await b.wait_synced(a.peer_id)
        received = 0

        def count(update: bytes, origin: str) -> None:
            nonlocal received
            received += 1

        b.on_update(count)
        tb = text_of(b)
        t0 = time.perf_counter()
        for i, u in enumerate(updates, 1):
            a.doc.apply_update(u)  # an editor's keystroke update arriving at peer A
            if i % batch == 0:
                await asyncio.sleep(0)
        await until(lambda: len(tb) == len(end) and str(tb) == end, 120)
        elapsed = time.perf_counter() - t0
    return {"updates": len(updates), "seconds": elapsed, "updates_per_s": len(updates) / elapsed, "messages": received}


_RECEIVER = """
import asyncio, sys
sys.path.insert(0, {root!r})
import pycrdt
from peer import Room

async def main():
    room = Room({url!r}, {token!r}, {room!r}, ice_hosts="127.0.0.1")
    text = room.doc.get("source", type=pycrdt.Text)
    done = asyncio.Event()
    def check(update, origin):
        if len(text) == {length} and not done.is_set() and str(text) == {end!r}:
            done.set()
    room.on_update(check)
    await room.start()
    print("ready", flush=True)
    await done.wait()
    await room.broadcast_app({{"op": "done"}})
    await asyncio.sleep(1)
    await room.stop()

asyncio.run(main())
"""


async def trace_replay_two_processes(stack, seeded, updates: list[bytes], end: str, batch: int) -> dict:
    """Like trace_replay, but peer B runs in its own process (as it would in reality) and
    tells A with an app message when it holds ``endContent``."""
    code = _RECEIVER.format(
        root=str(Path(__file__).resolve().parent.parent), url=stack.url, token=seeded.token("bob"),
        room=seeded.id, length=len(end), end=end,
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    a = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
    done = asyncio.Event()
    a.on_app(lambda obj, peer: done.set() if obj.get("op") == "done" else None)
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        await a.start()
        await until(lambda: a.connected_peers, 30)
        await a.wait_synced(timeout=30)
        t0 = time.perf_counter()
        for i, u in enumerate(updates, 1):
            a.doc.apply_update(u)
            if i % batch == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - t0
    finally:
        await a.stop()
        if child.returncode is None:
            child.kill()
        await child.wait()
    return {"updates": len(updates), "seconds": elapsed, "updates_per_s": len(updates) / elapsed}


# ------------------------------------------------------------------ memory per connection
async def memory_per_connection(links: int) -> dict:
    apply_ice_policy(ICE_HOSTS)
    config = rtc_configuration([])
    opened = 0
    pairs: list[tuple[PeerConnection, PeerConnection]] = []

    def on_open() -> None:
        nonlocal opened
        opened += 1

    async def make_pair() -> None:
        holder: dict[str, PeerConnection] = {}

        async def to_b(signal):  # delivered later, as signaling would
            asyncio.ensure_future(holder["b"].handle_signal(signal))

        async def to_a(signal):
            asyncio.ensure_future(holder["a"].handle_signal(signal))

        holder["a"] = PeerConnection("b", True, config, to_b, on_open, lambda d: None, lambda: None)
        holder["b"] = PeerConnection("a", False, config, to_a, on_open, lambda d: None, lambda: None)
        pairs.append((holder["a"], holder["b"]))
        await holder["a"].start()

    # warm up code paths and allocator once, then measure
    await make_pair()
    await until(lambda: opened == 2, 30)
    gc.collect()
    before = rss_bytes()
    for _ in range(links):
        await make_pair()
    await until(lambda: opened == 2 + 2 * links, 120)
    gc.collect()
    after = rss_bytes()
    await asyncio.gather(*(c.aclose() for pair in pairs for c in pair))
    return {"links": links, "rss_growth_bytes": after - before, "bytes_per_connection_end": (after - before) / (2 * links)}


# ------------------------------------------------------------------ main
async def run(quick: bool) -> dict:
    results: dict = {"loadavg_before": os.getloadavg()}
    results["memory"] = await memory_per_connection(20 if quick else 50)  # first: a fresh heap
    print("memory", results["memory"], flush=True)
    with tempfile.TemporaryDirectory(prefix="codesync-peer-bench-") as tmp:
        async with signaling_stack(Path(tmp)) as stack:
            seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
            results["join_100kb"] = await join_to_synced(stack, seeded, 100_000, 3 if quick else 10)
            print("join 100 KB", results["join_100kb"]["median_ms"], "ms", flush=True)
            results["join_5mb"] = await join_to_synced(stack, seeded, 5_000_000, 1 if quick else 3)
            print("join 5 MB", results["join_5mb"]["median_ms"], "ms", flush=True)
            results["edit_latency"] = await edit_latency(stack, seeded, 100 if quick else 500, 5)
            print("latency", results["edit_latency"], flush=True)
            updates, end = rustcode_updates()
            rate = pycrdt_apply_rate(updates)
            replay = await trace_replay(stack, seeded, updates, end, batch=50)
            replay["pycrdt_apply_update_per_s"] = rate
            replay["ratio"] = replay["updates_per_s"] / rate
            results["trace_replay"] = replay
            print("replay", replay, flush=True)
            two = await trace_replay_two_processes(stack, seeded, updates, end, batch=50)
            two["ratio"] = two["updates_per_s"] / rate
            results["trace_replay_two_processes"] = two
            print("replay, B in its own process", two, flush=True)
    results["loadavg_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    results = asyncio.run(run(args.quick))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
