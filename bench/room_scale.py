"""Room scale: N aiortc members in one room with the real services (issue 15).

A real ``codesync signaling`` and ``codesync persist`` (SQLite) on loopback; the room's N
members are ``peer.Room`` peers spread over ``--procs`` worker processes (plus the writer,
here); one writer types at ``--rate`` keystrokes per second. Per N it prints:

- **converge**: seconds from the last member's ``start()`` until every member holds every
  member's line (each member types its name when it joins);
- **copies**: main-document Update messages each member received per keystroke (1.0 = one
  copy: the forward rule's goal in a full mesh), and the duplicates (copies that changed
  nothing) per keystroke;
- **latency**: writer keystroke → applied at a member, p50 / p99 over every member and
  keystroke (CLOCK_MONOTONIC is one clock for all processes on Linux);
- **persistence CPU per keystroke**: the persist process's user+system CPU while the writer
  types, divided by the keystrokes, and the same net of its idle CPU (anti-entropy, awareness
  renewals: measured for a few seconds before the typing);
- **memory**: RSS of the persist process, signaling, and all peer processes together.

Usage::

    .venv/bin/python -m bench.room_scale [--sizes 4,8,16,32] [--procs 4] [--keys 100] [--rate 10]
                                         [--max-conns 100] [--legacy] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402

ICE_HOSTS = "127.0.0.1"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


LEGACY_CAPS = ("chunk", "app", "docs", "roles")  # before room topology: every peer relays everything


def caps_option(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"caps": LEGACY_CAPS} if cfg.get("legacy") else {}


# ----------------------------------------------------------------------------- a worker process
async def worker(cfg: dict[str, Any]) -> None:
    """Members ``cfg["members"]`` ([label, token]) join; report joins, convergence, arrivals."""
    from peer import Room

    names = set(cfg["names"])
    keys = cfg["keys"]
    rooms: list[tuple[str, Room]] = []
    joined_at: dict[str, float] = {}
    converged_at: dict[str, float] = {}
    arrivals: dict[str, list[float | None]] = {}
    base: dict[str, tuple[int, int]] = {}

    def watch(label: str, room: Room) -> None:
        seen = arrivals[label] = [None] * keys
        bench = room.doc.get("bench", type=pycrdt.Text)
        src = room.doc.get("source", type=pycrdt.Text)

        def changed(_update: bytes, _origin: str) -> None:
            now = time.monotonic()
            if label not in converged_at and set(str(src).split()) >= names:
                converged_at[label] = now
            n = min(len(bench), keys)
            i = n - 1
            while i >= 0 and seen[i] is None:
                seen[i] = now
                i -= 1

        room.on_update(changed)

    async def join(label: str, token: str) -> None:
        room = Room(cfg["url"], token, cfg["room"], ice_hosts=ICE_HOSTS, max_conns=cfg["max_conns"], **caps_option(cfg))
        watch(label, room)
        await room.start()
        joined_at[label] = time.monotonic()
        room.doc.get("source", type=pycrdt.Text).insert(0, f"{label}\n")
        rooms.append((label, room))

    await asyncio.gather(*(join(label, token) for label, token in cfg["members"]))
    print(json.dumps({"event": "joined"}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "mark":  # the writer starts typing: count copies from here
            for label, room in rooms:
                base[label] = (room.stats["updates_in"], room.stats["duplicates"])
        elif line == "report" or not line:
            break
    report = {
        "event": "report",
        "joined_at": joined_at,
        "converged_at": converged_at,
        "arrivals": arrivals,
        "copies": {label: room.stats["updates_in"] - base.get(label, (0, 0))[0] for label, room in rooms},
        "duplicates": {label: room.stats["duplicates"] - base.get(label, (0, 0))[1] for label, room in rooms},
        "links": {label: len(room.connected_peers) for label, room in rooms},
        "repairs": sum(room.stats["repairs"] for _, room in rooms),
        "forwarded": sum(room.stats["forwarded"] for _, room in rooms),
        "rss_kib": rss_kib(os.getpid()),
    }
    print(json.dumps(report), flush=True)
    await asyncio.gather(*(room.stop() for _, room in rooms), return_exceptions=True)


# ----------------------------------------------------------------------------- one room size
async def one_size(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from peer import Room
    from tests.helpers.components import free_port
    from tests.helpers.processes import child_env, start_service, start_signaling
    from tests.helpers.stack import seed_rooms, service_token
    from tests.helpers.wait import wait_http_ok

    secret = secrets.token_urlsafe(48)
    database_url = f"sqlite+aiosqlite:///{tmp / f'room-{n}.db'}"
    env = {"CODESYNC_DATABASE_URL": database_url, "CODESYNC_SECRET_KEY": secret,
           "CODESYNC_DATA_DIR": str(tmp / "data"), "CODESYNC_LOG_LEVEL": "WARNING"}
    (seeded,) = await seed_rooms(database_url, secret, 1, n)
    signaling = await start_signaling(tmp, child_env(**env))
    ops = free_port()
    persist = start_service(["persist"], child_env(**{
        **env, "CODESYNC_SIGNALING_URL": signaling.url, "CODESYNC_ICE_HOSTS": ICE_HOSTS,
        "CODESYNC_SERVICE_TOKEN": await service_token(database_url, secret, "persistence"),
        "CODESYNC_OPS_PORT": str(ops),
    }), tmp / f"persist-{n}.log", name="persist")
    workers: list[asyncio.subprocess.Process] = []
    writer: Room | None = None
    try:
        await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", persist)
        labels = [f"u{i}" for i in range(n)]
        writer = Room(signaling.url, seeded.token("u0"), seeded.id, ice_hosts=ICE_HOSTS, max_conns=args.max_conns,
                      **caps_option({"legacy": args.legacy}))
        await writer.start()
        writer_joined = time.monotonic()
        writer.doc.get("source", type=pycrdt.Text).insert(0, "u0\n")
        members = labels[1:]
        procs = max(1, min(args.procs, len(members)))
        shares = [members[i::procs] for i in range(procs)]
        for share in shares:
            cfg = {"url": signaling.url, "room": seeded.id, "names": labels, "keys": args.keys,
                   "max_conns": args.max_conns, "legacy": args.legacy, "members": [[m, seeded.token(m)] for m in share]}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.room_scale", "--worker", json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,
            )
            workers.append(proc)

        async def line_of(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
            if not raw:
                raise RuntimeError("a worker exited early")
            return json.loads(raw)

        for proc in workers:
            assert (await line_of(proc, 300))["event"] == "joined"
        src = writer.doc.get("source", type=pycrdt.Text)
        deadline = time.monotonic() + args.converge_timeout
        while not set(str(src).split()) >= set(labels) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        writer_converged = time.monotonic()
        await asyncio.sleep(args.settle / 2)  # links messages settled, no join traffic left
        idle0, idle_t0 = cpu_seconds(persist.proc.pid), time.monotonic()
        await asyncio.sleep(args.settle / 2)  # the persist process's idle cost: anti-entropy, awareness renewals
        idle_rate = (cpu_seconds(persist.proc.pid) - idle0) / (time.monotonic() - idle_t0)
        for proc in workers:
            proc.stdin.write(b"mark\n")
            await proc.stdin.drain()
        await asyncio.sleep(0.2)
        bench = writer.doc.get("bench", type=pycrdt.Text)
        sent: list[float] = []
        cpu0 = cpu_seconds(persist.proc.pid)
        gap = 1.0 / args.rate
        start = time.monotonic()
        for i in range(args.keys):
            target = start + i * gap
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            bench.insert(len(bench), "x")
            sent.append(time.monotonic())
            writer.flush()
        await asyncio.sleep(args.tail)
        cpu1 = cpu_seconds(persist.proc.pid)
        typing_s = time.monotonic() - start
        rss = {"persist": rss_kib(persist.proc.pid), "signaling": rss_kib(signaling.proc.pid),
               "peers": rss_kib(os.getpid())}
        reports = []
        for proc in workers:
            proc.stdin.write(b"report\n")
            await proc.stdin.drain()
            reports.append(await line_of(proc, 60))
        rss["peers"] += sum(r["rss_kib"] for r in reports)
        joined_all = [writer_joined] + [t for r in reports for t in r["joined_at"].values()]
        last_join = max(joined_all)
        converged = [writer_converged] + [t for r in reports for t in r["converged_at"].values()]
        missing = n - len(converged)
        latencies = [(t - s) * 1000 for r in reports for arr in r["arrivals"].values()
                     for s, t in zip(sent, arr) if t is not None]
        lost = sum(1 for r in reports for arr in r["arrivals"].values() for t in arr if t is None)
        copies = [c / args.keys for r in reports for c in r["copies"].values()]
        dups = [c / args.keys for r in reports for c in r["duplicates"].values()]
        links = [c for r in reports for c in r["links"].values()]
        return {
            "n": n,
            "max_conns": args.max_conns,
            "legacy": args.legacy,
            "converge_s": round(max(converged) - last_join, 2) if not missing else None,
            "not_converged": missing,
            "copies_per_key": round(sum(copies) / len(copies), 3) if copies else None,
            "copies_max": round(max(copies), 3) if copies else None,
            "duplicates_per_key": round(sum(dups) / len(dups), 3) if dups else None,
            "latency_p50_ms": round(percentile(latencies, 50), 1),
            "latency_p99_ms": round(percentile(latencies, 99), 1),
            "keystrokes_missing": lost,
            "persist_cpu_ms_per_key": round((cpu1 - cpu0) * 1000 / args.keys, 2),
            "persist_idle_cpu_pct": round(idle_rate * 100, 2),
            "persist_net_cpu_ms_per_key": round(max(0.0, cpu1 - cpu0 - idle_rate * typing_s) * 1000 / args.keys, 2),
            "links_per_member": round(sum(links) / len(links), 1) if links else None,
            "repairs": sum(r["repairs"] for r in reports),
            "forwarded": sum(r["forwarded"] for r in reports),
            "rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
        }
    finally:
        for proc in workers:
            if proc.returncode is None:
                try:
                    proc.stdin.close()
                    await asyncio.wait_for(proc.wait(), 30)
                except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError):
                    proc.kill()
                    await proc.wait()
        if writer is not None:
            await writer.stop()
        persist.stop()
        signaling.stop()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="cs-bench-rooms-") as tmpdir:
        for n in args.sizes:
            result = await one_size(n, args, Path(tmpdir))
            print(json.dumps(result), flush=True)
            out.append(result)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(worker(json.loads(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4,8,16,32", help="room sizes N (members, the writer included)")
    ap.add_argument("--procs", type=int, default=4, help="worker processes the members are spread over")
    ap.add_argument("--keys", type=int, default=100, help="keystrokes the writer types")
    ap.add_argument("--rate", type=float, default=10.0, help="keystrokes per second")
    ap.add_argument("--max-conns", type=int, default=100, help="each member's link limit (service links do not count)")
    ap.add_argument("--legacy", action="store_true",
                    help="members without the mesh capability: they relay everything, as before room topology")
    ap.add_argument("--settle", type=float, default=6.0,
                    help="seconds between convergence and typing (the second half measures the persist process idle)")
    ap.add_argument("--tail", type=float, default=2.0, help="seconds after the last keystroke before reading")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    results = asyncio.run(run(args))
    print(f"\n{'legacy relaying (no mesh capability)' if args.legacy else 'room topology (mesh)'}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("  N  max_conns  converge  copies/key (max)  dups/key  p50 ms  p99 ms  persist CPU/key (net of idle)  links  RSS persist/signaling/peers MiB")
    for r in results:
        conv = f"{r['converge_s']:.2f} s" if r["converge_s"] is not None else f"{r['not_converged']} not"
        print(f"{r['n']:3d}  {r['max_conns']:9d}  {conv:>8}  {r['copies_per_key']:.2f} ({r['copies_max']:.2f})"
              f"        {r['duplicates_per_key']:.2f}  {r['latency_p50_ms']:6.1f}  {r['latency_p99_ms']:6.1f}"
              f"  {r['persist_cpu_ms_per_key']:9.2f} ms ({r['persist_net_cpu_ms_per_key']:.2f})  {r['links_per_member']:5.1f}"
              f"  {r['rss_mib']['persist']}/{r['rss_mib']['signaling']}/{r['rss_mib']['peers']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
