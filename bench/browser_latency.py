"""Browser-to-browser edit latency (p50/p99): a keystroke in one page to the text in the other.

Runs the real stack and headless Chromium inside a private network namespace
(tests/helpers/netns.py, driver tests/browser/latency_driver.py). Usage::

    .venv/bin/python -m bench.browser_latency [--keystrokes 300] [--delay-ms 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.netns import browser_stack_available, run_driver  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure(keystrokes: int = 300, delay_ms: float = 25) -> dict:
    ok, why = browser_stack_available()
    if not ok:
        raise SystemExit(f"browser testbed unavailable: {why}")
    with tempfile.TemporaryDirectory(prefix="codesync-latency-") as tmp:
        res = run_driver(
            "latency_driver.py", {"workdir": tmp, "keystrokes": keystrokes, "delay_ms": delay_ms},
            Path(tmp) / "driver.log", timeout=300,
        )
    if "error" in res:
        raise RuntimeError(f"{res['error']}\n{res.get('trace', '')}\n{res.get('logs', '')}")
    lat = res["latencies_ms"]
    local = res.get("local_ms") or [0.0]
    return {
        "local_p50_ms": round(percentile(local, 50), 2),
        "keystrokes": len(lat), "delay_ms": delay_ms,
        "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
        "mean_ms": round(statistics.fmean(lat), 2), "max_ms": round(max(lat), 2), "min_ms": round(min(lat), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystrokes", type=int, default=300)
    ap.add_argument("--delay-ms", type=float, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = measure(args.keystrokes, args.delay_ms)
    print(f"browser -> browser edit latency over {out['keystrokes']} keystrokes ({out['delay_ms']} ms apart): "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, mean {out['mean_ms']} ms, max {out['max_ms']} ms "
          f"(of which keydown -> local document change: p50 {out['local_p50_ms']} ms)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
