"""``python -m bench [NAME ...]`` (``make bench``): run the benchmarks one after another.

Each benchmark is also a module of its own with its own options (``python -m bench.NAME
--help``); this runner only calls them with their defaults so that one command reproduces
the README's tables. ``soak`` runs only when named (it takes minutes and injects faults).
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = {
    "signaling_load": "/signal fan-out vs the reference y-webrtc server",
    "peer_bench": "peer join, edit latency, trace replay, memory per connection",
    "persistence_write": "persistence store write throughput (SQLite)",
    "persistence_trace": "trace replay until the persistence peer stored it",
    "history": "versions and playback seeks in a 250k-update room, memory while serving, storage per day",
    "runner_latency": "run request to first output / finished, per language and sandbox",
    "runner_capacity": "sandboxes in use, queue wait and refusals when many users burst runs across rooms",
    "browser_latency": "keystroke in one Chromium page to text in another",
    "room_scale": "N members in one room (real services, aiortc over several processes): convergence, copies per keystroke, latency, persistence CPU",
    "room_scale_web": "N Chromium contexts in one room: copies per keystroke, writer to member latency",
    "workspace": "200-file 5 MB project: join-to-synced (aiortc, browser), store load/compaction, console stdin round trip",
    "soak": "fault-injecting soak (only when named)",
}
DEFAULT = [name for name in BENCHMARKS if name != "soak"]


def main(argv: list[str]) -> int:
    names = argv or DEFAULT
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name]} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.1f} s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
