"""Runner capacity benchmark: many users bursting runs in many rooms of one runner process.

Real ``RoomRuns`` (one per room, each with its own pycrdt document) on the real bubblewrap
sandbox, sharing one ``runner.capacity.Capacity`` as ``codesync runner`` does. Every user
presses Run in each of their rooms at the same instant (``--runs`` times per room: the room's
own queue holds them), then we watch the run entries as a peer would:

- sandboxes in use and runs waiting, sampled every ``--sample`` seconds (the limit must hold);
- queue wait (request → ``running``) p50 / p99 in ms, of the runs that were admitted;
- throughput (finished runs per second from the burst to the last finish);
- how many were refused at admission, and why.

Scenarios: ``burst`` (``--users`` × ``--rooms``) and ``heavy`` (one user holding
``--heavy-rooms`` rooms, the case the per-user limit exists for).

    python -m bench.runner_capacity [--users 12 --rooms 5 --runs 1 --max-concurrent 8 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import pycrdt

from runner.capacity import Capacity
from runner.languages import LanguageTable
from runner.runs import RoomRuns, RunnerConfig, RunRequest
from runner.sandbox.base import Limits
from runner.sandbox.bubblewrap import BubblewrapSandbox
from codesync.settings import Settings

FINAL = ("finished", "failed", "timeout", "killed", "refused")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def scenario(name: str, box: BubblewrapSandbox, users: int, rooms: int, runs: int, capacity: Capacity,
                   program: str, sample: float) -> dict:
    table = LanguageTable()
    config = RunnerConfig(capacity=capacity, rate_burst=1000, rate_per_minute=100000, queue_size=max(runs, 3),
                          keep_runs=max(20, runs), limits=Limits(wall_seconds=60, cpu_seconds=30))
    marks: dict[str, dict[str, float]] = collections.defaultdict(dict)
    rooms_runs: list[tuple[str, RoomRuns, pycrdt.Map]] = []
    loop = asyncio.get_running_loop()

    def check(runs_map: pycrdt.Map) -> None:
        now = time.perf_counter()
        for run_id in list(runs_map.keys()):
            status = runs_map[run_id].get("status")
            if status == "running":
                marks[run_id].setdefault("running", now)
            elif status in FINAL:
                marks[run_id].setdefault("final", now)
                marks[run_id]["status"] = status  # type: ignore[assignment]

    for u in range(users):
        for r in range(rooms):
            doc = pycrdt.Doc()
            doc.get("source", type=pycrdt.Text).insert(0, program)
            runs_map = doc.get("runs", type=pycrdt.Map)
            doc.observe(lambda _e, m=runs_map: loop.call_soon(check, m))
            rooms_runs.append((f"user{u}", RoomRuns(doc, box, table, config), runs_map))
    timeline: list[tuple[float, int, int]] = []
    done = asyncio.Event()

    async def sampler(t0: float) -> None:
        while not done.is_set():
            timeline.append((time.perf_counter() - t0, capacity.running, capacity.waiting))
            await asyncio.sleep(sample)

    t0 = time.perf_counter()
    sampling = asyncio.create_task(sampler(t0))
    requests = []
    for index, (user, room_runs, _) in enumerate(rooms_runs):
        for k in range(runs):
            run_id = f"{name}-{index}-{k}"
            marks[run_id]["requested"] = time.perf_counter()
            requests.append(room_runs.request(RunRequest(run_id, "python", user, user, "editor")))
    decisions = await asyncio.gather(*requests)
    accepted = [d.run_id for d in decisions if d.accepted]
    refused = collections.Counter(d.reason.split(" (")[0].split(";")[0] for d in decisions if not d.accepted)
    deadline = time.perf_counter() + 600
    while any("final" not in marks[r] for r in accepted) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    done.set()
    await sampling
    for _, room_runs, _ in rooms_runs:
        await room_runs.close()
    waits = [(marks[r]["running"] - marks[r]["requested"]) * 1000 for r in accepted if "running" in marks[r]]
    statuses = collections.Counter(marks[r].get("status") for r in accepted)
    last = max((marks[r]["final"] for r in accepted if "final" in marks[r]), default=t0)
    return {
        "name": name,
        "requests": len(decisions),
        "accepted": len(accepted),
        "refused": dict(refused),
        "statuses": dict(statuses),
        "peak": max((n for _, n, _ in timeline), default=0),
        "capacity_peak": capacity.peak,
        "wait_p50": pct(waits, 0.5) if waits else 0.0,
        "wait_p99": pct(waits, 0.99) if waits else 0.0,
        "wait_max": max(waits, default=0.0),
        "throughput": statuses.get("finished", 0) / max(last - t0, 1e-9),
        "seconds": last - t0,
        "timeline": timeline,
    }


def show(result: dict, limit: int, every: float) -> None:
    print(f"\n## {result['name']}: {result['requests']} requests, {result['accepted']} admitted, "
          f"refused {result['refused'] or 0}")
    print("time s | sandboxes in use | waiting")
    next_at = 0.0
    for t, running, waiting in result["timeline"]:
        if t >= next_at:
            print(f"{t:6.2f} | {running:3d} {'#' * running:<{limit}} | {waiting}")
            next_at = t + every
    print(f"final statuses {result['statuses']}; peak sandboxes {result['peak']} (limit {limit}, "
          f"capacity saw {result['capacity_peak']})")
    print(f"queue wait ms p50 {result['wait_p50']:.0f} / p99 {result['wait_p99']:.0f} / max {result['wait_max']:.0f}; "
          f"throughput {result['throughput']:.1f} runs/s over {result['seconds']:.1f} s")


async def main(args: argparse.Namespace) -> None:
    box = BubblewrapSandbox()
    health = await box.health()
    if not health.ready:
        raise SystemExit(f"bubblewrap sandbox not ready: {health.reason}")
    program = f"import time\ntime.sleep({args.seconds})\nprint('done')\n"
    print(f"bubblewrap; program sleeps {args.seconds}s; limits: {args.max_concurrent} at once, "
          f"{args.max_per_user} per user, {args.max_queued} waiting, {args.max_queued_per_user} waiting per user")
    results = []
    for name, users, rooms in (("burst", args.users, args.rooms), ("heavy", 1, args.heavy_rooms)):
        capacity = Capacity(args.max_concurrent, args.max_per_user, args.max_queued, args.max_queued_per_user)
        result = await scenario(name, box, users, rooms, args.runs, capacity, program, args.sample)
        assert result["peak"] <= args.max_concurrent and result["capacity_peak"] <= args.max_concurrent, result
        show(result, args.max_concurrent, args.every)
        results.append(result)
    print("\n| scenario | requests | admitted | refused | peak sandboxes | wait p50 ms | wait p99 ms | runs/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['name']} | {r['requests']} | {r['accepted']} | {sum(r['refused'].values())} | "
              f"{r['peak']} / {args.max_concurrent} | {r['wait_p50']:.0f} | {r['wait_p99']:.0f} | {r['throughput']:.1f} |")
    await box.close()


if __name__ == "__main__":
    defaults = Settings()
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--rooms", type=int, default=5, help="rooms per user in the burst scenario")
    parser.add_argument("--runs", type=int, default=1, help="runs requested per room")
    parser.add_argument("--heavy-rooms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=0.5, help="how long each run's program sleeps")
    parser.add_argument("--max-concurrent", type=int, default=defaults.runner_max_concurrent)
    parser.add_argument("--max-per-user", type=int, default=defaults.runner_max_per_user)
    parser.add_argument("--max-queued", type=int, default=defaults.runner_max_queued)
    parser.add_argument("--max-queued-per-user", type=int, default=defaults.runner_max_queued_per_user)
    parser.add_argument("--sample", type=float, default=0.02)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between printed timeline rows")
    asyncio.run(main(parser.parse_args()))
