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
  types, divided by the keystrokes, and the same net of its idle CPU (ICE consent checks,
  awareness renewals, catch-all anti-entropy: measured right before the typing, for as long);
- **sent**: the service peers' data-channel messages per keystroke by kind (their metrics);
- **service link**: seconds from the last join until every member's persistence link is open;
- **memory**: RSS of the persist process, signaling, and all peer processes together;
- ``--runner``: a ``codesync runner`` (bubblewrap sandbox, a runner service token) joins too,
  and its CPU per keystroke is reported like the persist process's (it receives every
  keystroke as a member: the issue's "service-peer CPU per keystroke flat in N");
- ``--rooms R``: R rooms of N members at once (one writer each, typing in step), one persist
  (and runner) process for all of them: its CPU % and CPU per keystroke as R grows, and an
  EXTRAPOLATED number of rooms of ``--class-size`` members (everyone typing at ``--rate``) it
  would carry at 100 % of one core — labelled as such, since the machine cannot run them.

Usage::

    .venv/bin/python -m bench.room_scale [--sizes 4,8,16,32] [--procs 4] [--keys 100] [--rate 10]
                                         [--max-conns 100] [--legacy] [--json out.json]
                                         [--runner] [--rooms 1,2,4] [--class-size 30]
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


def sent_by_kind(port: int) -> dict[str, float]:
    """``codesync_peer_messages_sent_total`` by kind from a service peer's ops endpoint."""
    import urllib.request

    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("codesync_peer_messages_sent_total{"):
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                out[kind] = float(line.rsplit(" ", 1)[1])
    return out


# ----------------------------------------------------------------------------- a worker process
async def worker(cfg: dict[str, Any]) -> None:
    """Members ``cfg["members"]`` ([label, token]) join; report joins, convergence, arrivals."""
    from peer import Room

    names = set(cfg["names"])  # the same labels u0.. in every room
    keys = cfg["keys"]
    rooms: list[tuple[str, Room]] = []
    joined_at: dict[str, float] = {}
    converged_at: dict[str, float] = {}
    service_linked_at: dict[str, float] = {}  # the member's link with the persistence peer opened
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

        def peer_event(_peer_id: str, info: Any, what: str) -> None:
            if what == "connected" and info.service == "persistence":
                service_linked_at.setdefault(label, time.monotonic())

        room.on_peer(peer_event)

    async def join(label: str, token: str, room_id: str) -> None:
        label = f"{room_id}/{label}"
        room = Room(cfg["url"], token, room_id, ice_hosts=ICE_HOSTS, max_conns=cfg["max_conns"], **caps_option(cfg))
        watch(label, room)
        await room.start()
        joined_at[label] = time.monotonic()
        room.doc.get("source", type=pycrdt.Text).insert(0, f"{label.rsplit('/', 1)[1]}\n")
        rooms.append((label, room))

    await asyncio.gather(*(join(label, token, room_id) for label, token, room_id in cfg["members"]))
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
        "service_linked_at": service_linked_at,
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
def service_cpu(services: dict[str, Any]) -> dict[str, float]:
    return {name: cpu_seconds(svc.proc.pid) for name, svc in services.items()}


async def one_size(n: int, args: argparse.Namespace, tmp: Path, r: int = 1) -> dict[str, Any]:
    """``r`` rooms of ``n`` members each (one writer per room, all in this process), one
    signaling, one persist (and with ``--runner`` one runner) process for all of them."""
    from peer import Room
    from tests.helpers.components import free_port
    from tests.helpers.processes import child_env, start_service, start_signaling
    from tests.helpers.stack import seed_rooms, service_token
    from tests.helpers.wait import wait_http_ok

    tag = f"{r}x{n}"
    secret = secrets.token_urlsafe(48)
    database_url = f"sqlite+aiosqlite:///{tmp / f'room-{tag}.db'}"
    env = {"CODESYNC_DATABASE_URL": database_url, "CODESYNC_SECRET_KEY": secret,
           "CODESYNC_DATA_DIR": str(tmp / "data"), "CODESYNC_LOG_LEVEL": "WARNING"}
    seeded_rooms = await seed_rooms(database_url, secret, r, n)
    signaling = await start_signaling(tmp, child_env(**env))
    services: dict[str, Any] = {}
    workers: list[asyncio.subprocess.Process] = []
    writers: list[Room] = []
    try:
        base = {**env, "CODESYNC_SIGNALING_URL": signaling.url, "CODESYNC_ICE_HOSTS": ICE_HOSTS}
        ops = free_port()
        ops_ports = {"persist": ops}
        services["persist"] = start_service(["persist"], child_env(**{
            **base, "CODESYNC_SERVICE_TOKEN": await service_token(database_url, secret, "persistence"),
            "CODESYNC_OPS_PORT": str(ops),
        }), tmp / f"persist-{tag}.log", name="persist")
        await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", services["persist"])
        if args.runner:  # as tests/helpers/services.py starts it: bubblewrap, a runner service token
            if not os.access("/usr/bin/bwrap", os.X_OK):
                raise SystemExit("--runner needs bubblewrap (/usr/bin/bwrap): apt-get install bubblewrap")
            rops = free_port()
            ops_ports["runner"] = rops
            services["runner"] = start_service(["runner"], child_env(**{
                **base, "CODESYNC_SERVICE_TOKEN": await service_token(database_url, secret, "runner"),
                "CODESYNC_SANDBOX": "bubblewrap", "CODESYNC_OPS_PORT": str(rops),
            }), tmp / f"runner-{tag}.log", name="runner")
            await wait_http_ok(f"http://127.0.0.1:{rops}/healthz", services["runner"])
        labels = [f"u{i}" for i in range(n)]
        for seeded in seeded_rooms:
            writer = Room(signaling.url, seeded.token("u0"), seeded.id, ice_hosts=ICE_HOSTS, max_conns=args.max_conns,
                          **caps_option({"legacy": args.legacy}))
            await writer.start()
            writer.doc.get("source", type=pycrdt.Text).insert(0, "u0\n")
            writers.append(writer)
        writer_joined = time.monotonic()
        members = [[m, seeded.token(m), seeded.id] for seeded in seeded_rooms for m in labels[1:]]
        procs = max(1, min(args.procs, len(members)))
        shares = [members[i::procs] for i in range(procs)]
        for share in shares:
            cfg = {"url": signaling.url, "names": labels, "keys": args.keys,
                   "max_conns": args.max_conns, "legacy": args.legacy, "members": share}
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
        deadline = time.monotonic() + args.converge_timeout
        writer_converged: list[float] = []
        for writer in writers:
            src = writer.doc.get("source", type=pycrdt.Text)
            while not set(str(src).split()) >= set(labels) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            writer_converged.append(time.monotonic())

        def services_linked() -> bool:  # every service peer is linked with every writer
            scopes = {"persist": "persistence", "runner": "runner"}
            return all(any(info.service == scopes[name] and info.connected for info in w.peers.values())
                       for w in writers for name in services)

        while not services_linked() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not services_linked():
            raise RuntimeError(f"the service peers ({', '.join(services)}) did not link with every writer")
        await asyncio.sleep(args.settle)  # links messages settled, no join traffic left
        # the services' idle cost (ICE consent checks, awareness renewals, catch-all
        # anti-entropy), measured over as long as the typing will take, right before it
        idle0, idle_t0 = service_cpu(services), time.monotonic()
        await asyncio.sleep(args.keys / args.rate + args.tail)
        idle_s = time.monotonic() - idle_t0
        idle_rate = {k: (v - idle0[k]) / idle_s for k, v in service_cpu(services).items()}
        for proc in workers:
            proc.stdin.write(b"mark\n")
            await proc.stdin.drain()
        await asyncio.sleep(0.2)
        benches = [w.doc.get("bench", type=pycrdt.Text) for w in writers]
        sent: list[float] = []  # keystroke i of every room's writer (typed in the same tick)
        cpu0 = service_cpu(services)
        sent0 = {name: sent_by_kind(port) for name, port in ops_ports.items()}
        gap = 1.0 / args.rate
        start = time.monotonic()
        for i in range(args.keys):
            target = start + i * gap
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            for bench, writer in zip(benches, writers):
                bench.insert(len(bench), "x")
                writer.flush()
            sent.append(time.monotonic())
        typed_s = time.monotonic() - start
        await asyncio.sleep(args.tail)
        cpu1 = service_cpu(services)
        sent1 = {name: sent_by_kind(port) for name, port in ops_ports.items()}
        typing_s = time.monotonic() - start
        rss = {name: rss_kib(svc.proc.pid) for name, svc in services.items()}
        rss.update({"signaling": rss_kib(signaling.proc.pid), "peers": rss_kib(os.getpid())})
        reports = []
        for proc in workers:
            proc.stdin.write(b"report\n")
            await proc.stdin.drain()
            reports.append(await line_of(proc, 60))
        rss["peers"] += sum(r["rss_kib"] for r in reports)
        joined_all = [writer_joined] + [t for rep in reports for t in rep["joined_at"].values()]
        last_join = max(joined_all)
        converged = writer_converged + [t for rep in reports for t in rep["converged_at"].values()]
        missing = n * r - len(converged)
        service_links = [t for rep in reports for t in rep["service_linked_at"].values()]
        latencies = [(t - s) * 1000 for rep in reports for arr in rep["arrivals"].values()
                     for s, t in zip(sent, arr) if t is not None]
        lost = sum(1 for rep in reports for arr in rep["arrivals"].values() for t in arr if t is None)
        copies = [c / args.keys for rep in reports for c in rep["copies"].values()]
        dups = [c / args.keys for rep in reports for c in rep["duplicates"].values()]
        links = [c for rep in reports for c in rep["links"].values()]
        keystrokes = args.keys * r
        result: dict[str, Any] = {
            "n": n,
            "rooms": r,
            "max_conns": args.max_conns,
            "legacy": args.legacy,
            "converge_s": round(max(converged) - last_join, 2) if not missing else None,
            "not_converged": missing,
            # the last member's link with the persistence peer opened, seconds after the last join
            "service_linked_s": round(max(service_links) - last_join, 2) if service_links else None,
            "copies_per_key": round(sum(copies) / len(copies), 3) if copies else None,
            "copies_max": round(max(copies), 3) if copies else None,
            "duplicates_per_key": round(sum(dups) / len(dups), 3) if dups else None,
            "latency_p50_ms": round(percentile(latencies, 50), 1),
            "latency_p99_ms": round(percentile(latencies, 99), 1),
            "keystrokes_missing": lost,
            "keystrokes_per_s": round(keystrokes / typed_s, 1),
            "links_per_member": round(sum(links) / len(links), 1) if links else None,
            "repairs": sum(rep["repairs"] for rep in reports),
            "forwarded": sum(rep["forwarded"] for rep in reports),
            "rss_mib": {k: round(v / 1024, 1) for k, v in rss.items()},
        }
        for name in services:  # CPU per keystroke (all rooms' keystrokes), gross and net of idle
            used = cpu1[name] - cpu0[name]
            result[f"{name}_cpu_ms_per_key"] = round(used * 1000 / keystrokes, 2)
            result[f"{name}_idle_cpu_pct"] = round(idle_rate[name] * 100, 2)
            result[f"{name}_net_cpu_ms_per_key"] = round(max(0.0, used - idle_rate[name] * typing_s) * 1000 / keystrokes, 2)
            result[f"{name}_cpu_pct"] = round(used / typing_s * 100, 1)  # while typing (tail included)
            # data-channel messages it sent per keystroke while the writers typed, by kind
            result[f"{name}_sent_per_key"] = {k: round((v - sent0[name].get(k, 0.0)) / keystrokes, 2)
                                              for k, v in sorted(sent1[name].items()) if v - sent0[name].get(k, 0.0) > 0}
        return result
    finally:
        for proc in workers:
            if proc.returncode is None:
                try:
                    proc.stdin.close()
                    await asyncio.wait_for(proc.wait(), 30)
                except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError):
                    proc.kill()
                    await proc.wait()
        for writer in writers:
            await writer.stop()
        for svc in reversed(list(services.values())):
            svc.stop()
        signaling.stop()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="cs-bench-rooms-") as tmpdir:
        for r in args.rooms:
            for n in args.sizes:
                result = await one_size(n, args, Path(tmpdir), r)
                print(json.dumps(result), flush=True)
                out.append(result)
    return out


def capacity(result: dict[str, Any], args: argparse.Namespace, name: str = "persist") -> tuple[float, float]:
    """EXTRAPOLATED rooms of ``args.class_size`` members one service process carries at 100 %
    of one core: its net CPU per keystroke (measured) × the keystrokes per second of a room of
    that size where every member types at ``args.class_rate`` (assumed), plus its idle CPU per room.
    Returns (CPU seconds per second one such room costs, rooms per core)."""
    per_key = result[f"{name}_net_cpu_ms_per_key"] / 1000
    idle_per_room = result[f"{name}_idle_cpu_pct"] / 100 / result["rooms"]
    per_room = per_key * args.class_rate * args.class_size + idle_per_room
    return per_room, (1.0 / per_room if per_room > 0 else float("inf"))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(worker(json.loads(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4,8,16,32", help="room sizes N (members, the writer included)")
    ap.add_argument("--rooms", default="1", help="numbers of rooms R run at once (R rooms of N, one writer each)")
    ap.add_argument("--runner", action="store_true", help="also run `codesync runner` (bubblewrap) and report its CPU")
    ap.add_argument("--class-size", type=int, default=30,
                    help="members per room for the extrapolated rooms-per-core figure")
    ap.add_argument("--class-rate", type=float, default=None,
                    help="keystrokes per second each of those members types (default: --rate) for that figure")
    ap.add_argument("--procs", type=int, default=4, help="worker processes the members are spread over")
    ap.add_argument("--keys", type=int, default=100, help="keystrokes each writer types")
    ap.add_argument("--rate", type=float, default=10.0, help="keystrokes per second")
    ap.add_argument("--max-conns", type=int, default=100, help="each member's link limit (service links do not count)")
    ap.add_argument("--legacy", action="store_true",
                    help="members without the mesh capability: they relay everything, as before room topology")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between convergence and measuring the services' idle CPU (as long as the typing)")
    ap.add_argument("--tail", type=float, default=2.0, help="seconds after the last keystroke before reading")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.rooms = [int(x) for x in str(args.rooms).split(",") if x]
    args.class_rate = args.rate if args.class_rate is None else args.class_rate
    results = asyncio.run(run(args))
    print(f"\n{'legacy relaying (no mesh capability)' if args.legacy else 'room topology (mesh)'}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("  R    N  max_conns  converge  copies/key (max)  dups/key  p50 ms  p99 ms  keys/s  links  RSS MiB")
    for r in results:
        conv = f"{r['converge_s']:.2f} s" if r["converge_s"] is not None else f"{r['not_converged']} not"
        rss = " / ".join(f"{k} {v}" for k, v in r["rss_mib"].items())
        print(f"{r['rooms']:3d}  {r['n']:3d}  {r['max_conns']:9d}  {conv:>8}  {r['copies_per_key']:.2f} ({r['copies_max']:.2f})"
              f"        {r['duplicates_per_key']:.2f}  {r['latency_p50_ms']:6.1f}  {r['latency_p99_ms']:6.1f}"
              f"  {r['keystrokes_per_s']:6.1f}  {r['links_per_member']:5.1f}  {rss}")
    names = ["persist"] + (["runner"] if args.runner else [])
    print("\nservice CPU (measured): per keystroke gross (net of idle), % of a core while typing, idle % of a core")
    for r in results:
        cols = "  ".join(f"{name} {r[f'{name}_cpu_ms_per_key']:.2f} ms ({r[f'{name}_net_cpu_ms_per_key']:.2f})"
                         f" {r[f'{name}_cpu_pct']:.1f} % idle {r[f'{name}_idle_cpu_pct']:.2f} %" for name in names)
        print(f"  R {r['rooms']:2d}  N {r['n']:3d}  {cols}")
    print("\nservice messages sent per keystroke, by kind")
    for r in results:
        cols = "  ".join(f"{name} " + " ".join(f"{k} {v:g}" for k, v in r[f"{name}_sent_per_key"].items()) for name in names)
        print(f"  R {r['rooms']:2d}  N {r['n']:3d}  {cols}")
    print(f"\nEXTRAPOLATED (not measured): rooms of {args.class_size} members, every member typing {args.class_rate:g} keys/s,"
          " one service process at 100 % of one core = 1 / (net CPU per keystroke x keys/s per room + idle per room)")
    for r in results:
        cols = "  ".join("{} {:.1f} % of a core per room -> {:.1f} rooms".format(
            name, capacity(r, args, name)[0] * 100, capacity(r, args, name)[1]) for name in names)
        print(f"  from R {r['rooms']:2d}  N {r['n']:3d}:  {cols}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
