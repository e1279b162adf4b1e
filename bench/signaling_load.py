"""Signaling load: many clients in many rooms publishing signal-sized messages at a set rate.

Runs the same load against CodeSync's ``/signal`` (in-process hub; Redis hub on one or two
nodes) and against y-webrtc's reference server (``node tests/js/node_modules/y-webrtc/bin/server.js``),
and reports delivered messages/s, p50/p99 fan-out latency (publish sent -> frame received by each
subscriber, the sender included), loss and the server's RSS. The reference server has no auth
and no per-message checks; ours authenticates every connection, checks membership on subscribe,
binds peer ids and stamps ``sender`` — the comparison is deliberately not in our favour.

Usage::

    .venv/bin/python -m bench.signaling_load [--clients 400] [--rooms 100] [--rate 5] \\
        [--duration 10] [--size 300] [--targets memory,redis,reference] [--redis-nodes 2] \\
        [--viewers 0] [--json out.json]

``--viewers N`` makes the last N users of every room viewers and has every client announce the
``roles`` capability: every ``signal`` then goes through the relay rule's full check (a viewer
on one side, the addressee looked up) and is relayed — the cost of that rule on the publish
path. There each client addresses the next client of its own room (``to``), which CodeSync
delivers to that client only (y-webrtc peers ignore directed frames for others) and the
reference to every subscriber: deliveries are counted per server accordingly. Without
``--viewers`` the frames carry no ``to``: every server fans every frame out to the room —
the workload the comparison is about.

Needs Node.js + ``npm ci`` in tests/js for the reference, Redis on 127.0.0.1:6379 for ``redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.stack import signaling_stack  # noqa: E402
from tests.helpers.components import REDIS_URL, ROOT, free_port, port_open  # noqa: E402

JS = ROOT / "tests" / "js"


@dataclass
class Target:
    name: str
    urls: list[str]  # one ws URL per client, in client order
    pids: list[int]
    note: str = ""
    confirms_subscribe: bool = True  # ours answers a subscribe with a presence frame
    directs: bool = True  # ours delivers a frame with "to" to its addressee only (the reference: to everyone)


@dataclass
class Stats:
    sent: int = 0
    expected: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- servers
async def make_viewers(database_url: str, secret: str, room_ids: list[str], per_room: int, viewers: int) -> None:
    """The last ``viewers`` members (by seeding order: users u{per_room-viewers}..) of each room become viewers."""
    from sqlmodel import select

    from codesync import db
    from codesync.models import Membership, User
    from codesync.settings import Settings

    engine = db.create_engine(Settings(database_url=database_url, secret_key=secret))
    try:
        async with db.session_factory(engine)() as session:
            for room_id in room_ids:
                rows = (await session.exec(select(Membership, User).where(Membership.room_id == room_id).join(User))).all()
                # seeded names are R{r}U{i}: the index says which user it was
                for membership, user in rows:
                    if int(user.name.rsplit("U", 1)[1]) >= per_room - viewers:
                        membership.role = "viewer"
                        session.add(membership)
            await session.commit()
    finally:
        await engine.dispose()


@asynccontextmanager
async def ours(tmp: Path, clients: int, rooms: int, redis_nodes: int = 0, viewers: int = 0) -> AsyncIterator[Target]:
    per_room = clients // rooms
    env = {
        "CODESYNC_LOG_LEVEL": "WARNING",
        "CODESYNC_SIGNAL_MAX_CONNS_PER_USER": "4",
    }
    kw: dict = {}
    if redis_nodes:
        kw = dict(redis_url=REDIS_URL, redis_prefix=f"bench-{secrets.token_hex(4)}", nodes=redis_nodes)
    async with signaling_stack(tmp, **kw, **env) as stack:
        seeded = await stack.seed_rooms(rooms, per_room)
        if viewers:
            await make_viewers(stack.database_url, stack.secret, [s.id for s in seeded], per_room, viewers)
        urls = []
        for r in range(rooms):
            for i in range(per_room):
                node = (r * per_room + i) % len(stack.nodes)
                urls.append(stack.ws_url(seeded[r].token(f"u{i}"), node=node))
        name = f"codesync redis x{redis_nodes}" if redis_nodes else "codesync memory"
        if viewers:
            name += f" +{viewers}v"
        target = Target(name, urls, [n.proc.pid for n in stack.nodes])
        target.topics = [s.id for s in seeded]  # type: ignore[attr-defined]
        yield target


@asynccontextmanager
async def reference(clients: int, rooms: int) -> AsyncIterator[Target]:
    port = free_port()
    proc = subprocess.Popen(
        ["node", "node_modules/y-webrtc/bin/server.js"],
        cwd=JS,
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("reference server did not start")
            await asyncio.sleep(0.05)
        target = Target(
            "y-webrtc reference", [f"ws://127.0.0.1:{port}"] * clients, [proc.pid], note="no auth", confirms_subscribe=False,
            directs=False,
        )
        target.topics = [f"bench-room-{r}" for r in range(rooms)]  # type: ignore[attr-defined]
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- load
async def run_load(target: Target, rooms: int, rate: float, duration: float, size: int, caps: bool = False) -> dict:
    clients = len(target.urls)
    per_room = clients // rooms
    topics: list[str] = target.topics  # type: ignore[attr-defined]
    stats = Stats()
    pad = "x" * max(0, size - 160)
    extra = {"caps": ["roles"]} if caps else {}  # every client "enforces roles": viewers' signals are relayed
    hello_from: list[set[str]] = [set() for _ in range(clients)]
    subscribed = [not target.confirms_subscribe] * clients
    measuring = False
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector)
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def reader(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal measuring
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(msg.data)  # orjson: the client must not be the bottleneck
            kind = frame.get("type")
            if kind == "publish":
                data = frame.get("data") or {}
                if data.get("hello"):
                    hello_from[i].add(data.get("from"))
                elif "t" in data:
                    stats.received += 1
                    stats.latencies.append(time.perf_counter() - data["t"])
            elif kind == "presence":
                subscribed[i] = True
            elif kind == "error":
                stats.errors += 1

    try:
        # connect (bounded concurrency, like a crowd arriving) and subscribe
        sem = asyncio.Semaphore(50)

        async def connect(i: int) -> aiohttp.ClientWebSocketResponse:
            async with sem:
                return await session.ws_connect(target.urls[i], heartbeat=None, max_msg_size=0)

        sockets = list(await asyncio.gather(*(connect(i) for i in range(clients))))
        readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
        for i, ws in enumerate(sockets):
            await ws.send_str(json.dumps({"type": "subscribe", "topics": [topics[i // per_room]]}))
        # barrier: every subscription confirmed (ours), then every client hears every room-mate's hello
        deadline = time.monotonic() + 60
        while not all(subscribed):
            if time.monotonic() > deadline:
                raise RuntimeError(f"setup incomplete: {subscribed.count(False)} subscriptions unconfirmed")
            await asyncio.sleep(0.1)
        while True:
            missing = [i for i in range(clients) if len(hello_from[i]) < per_room]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"setup incomplete: {len(missing)} clients missing hellos")
            for i in range(clients):  # (re)announce until every room-mate has heard everyone
                hello = {"type": "announce", "from": f"peer-{i}", "hello": 1, **extra}
                await sockets[i].send_str(json.dumps({"type": "publish", "topic": topics[i // per_room], "data": hello}))
            await asyncio.sleep(0.5)

        async def publisher(i: int, stop_at: float) -> None:
            topic = topics[i // per_room]
            to = f"peer-{(i // per_room) * per_room + (i + 1) % per_room}"  # the next client of the same room
            directed = {"to": to} if caps else {}  # the relay rule looks the addressee up
            deliveries = 1 if caps and target.directs else per_room
            interval = 1.0 / rate
            next_at = time.perf_counter() + random.random() * interval
            seq = 0
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                seq += 1
                data = {
                    "type": "signal", "from": f"peer-{i}", **directed, "token": 0.5,
                    "signal": {"type": "candidate", "candidate": {"candidate": pad, "sdpMLineIndex": 0, "sdpMid": "0"}},
                    "seq": seq, "t": time.perf_counter(), **extra,
                }
                await sockets[i].send_str(orjson.dumps({"type": "publish", "topic": topic, "data": data}).decode())
                stats.sent += 1
                stats.expected += deliveries
                next_at += interval

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu0 = sum(cpu_seconds(pid) for pid in target.pids)
        t0 = time.perf_counter()
        await asyncio.gather(*(publisher(i, t0 + duration) for i in range(clients)))
        elapsed = time.perf_counter() - t0
        # let in-flight frames arrive (bounded)
        drain_deadline = time.monotonic() + 5
        last = -1
        while stats.received < stats.expected and time.monotonic() < drain_deadline:
            if stats.received == last:
                await asyncio.sleep(0.25)
            last = stats.received
            await asyncio.sleep(0.05)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = sum(cpu_seconds(pid) for pid in target.pids) - server_cpu0
        rss = sum(rss_mb(pid) for pid in target.pids)
        for task in readers:
            task.cancel()
        lat = stats.latencies
        return {
            "target": target.name,
            "note": target.note,
            "clients": clients,
            "rooms": rooms,
            "rate_per_client": rate,
            "offered_msgs_per_s": round(stats.sent / elapsed, 1),
            "delivered_msgs_per_s": round(stats.received / elapsed, 1),
            "p50_ms": round(pct(lat, 50) * 1000, 2),
            "p99_ms": round(pct(lat, 99) * 1000, 2),
            "loss_pct": round(100 * (1 - stats.received / stats.expected), 3) if stats.expected else 0.0,
            "errors": stats.errors,
            "server_rss_mb": round(rss, 1),
            "server_cpu_pct": round(100 * server_cpu / elapsed, 1),
            # CPU the server spent per delivered frame: robust to a busy machine, and the
            # throughput one fully used core would sustain is 1e6 / this.
            "server_cpu_us_per_delivery": round(1e6 * server_cpu / stats.received, 1) if stats.received else float("nan"),
            "load_avg_1m": round(os.getloadavg()[0], 1),  # the machine is shared: context for the latency
            "bench_cpu_pct": round(100 * ((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)) / elapsed, 1),
        }
    finally:
        for ws in sockets:
            try:
                await asyncio.wait_for(ws.close(), 1)
            except Exception:  # noqa: BLE001
                pass
        await session.close()


def show(r: dict) -> None:
    print(
        f"{r['target']:<22} {r['offered_msgs_per_s']:>9.0f} pub/s offered  {r['delivered_msgs_per_s']:>9.0f} msg/s delivered  "
        f"p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>8.2f} ms  loss {r['loss_pct']:>6.2f} %  "
        f"err {r['errors']}  RSS {r['server_rss_mb']:>6.1f} MB  server CPU {r['server_cpu_pct']:>4.0f} % = {r['server_cpu_us_per_delivery']:>5.1f} µs/delivery  "
        f"(bench client CPU {r['bench_cpu_pct']:.0f} %, load {r['load_avg_1m']:g}){'  [' + r['note'] + ']' if r['note'] else ''}",
        flush=True,
    )


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=400)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--rate", type=str, default="5", help="publishes per second per client; a comma list runs each")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    ap.add_argument("--size", type=int, default=300, help="approximate bytes per publish frame")
    ap.add_argument("--targets", default="memory,redis,reference")
    ap.add_argument("--redis-nodes", type=int, default=2)
    ap.add_argument("--viewers", type=int, default=0, help="viewers per room (ours); every client announces 'roles'")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.clients % args.rooms:
        ap.error("--clients must be a multiple of --rooms")
    rates = [float(r) for r in args.rate.split(",")]
    results = []
    print(f"{args.clients} clients in {args.rooms} rooms ({args.clients // args.rooms} per room), "
          f"~{args.size} B signal frames, {args.duration:g} s per run", flush=True)
    for name in args.targets.split(","):
        for rate in rates:
            with tempfile.TemporaryDirectory(prefix="sigbench-") as tmp:
                if name == "memory":
                    cm = ours(Path(tmp), args.clients, args.rooms, viewers=args.viewers)
                elif name == "redis":
                    if not port_open("127.0.0.1", 6379):
                        print("redis: skipped (no Redis on 127.0.0.1:6379)")
                        continue
                    cm = ours(Path(tmp), args.clients, args.rooms, redis_nodes=args.redis_nodes, viewers=args.viewers)
                elif name == "reference":
                    if not (JS / "node_modules" / "y-webrtc").exists():
                        print("reference: skipped (run npm ci in tests/js)")
                        continue
                    cm = reference(args.clients, args.rooms)
                else:
                    ap.error(f"unknown target {name}")
                async with cm as target:
                    try:
                        result = await run_load(target, args.rooms, rate, args.duration, args.size, caps=args.viewers > 0)
                    except Exception as exc:
                        for log in Path(tmp).glob("*.log"):  # the server's side of the story
                            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
                        print(f"{name} at rate {rate:g}: failed: {exc!r}", flush=True)
                        continue
                    show(result)
                    results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
