"""Room scale in browsers: N headless Chromium contexts running the real web client in one room
(issue 15, the browser side of bench/room_scale.py).

Real ``codesync signaling`` and headless Chromium inside a private network namespace
(tests/helpers/netns.py); N users register, the first creates a room and invites the others as
editors, every browser opens it and waits for a full mesh. Then the first browser's page types
``--keys`` characters at ``--rate`` per second into a shared text of the room's document (in the
page, through the provider like any edit). Prints:

- **copies**: main-document Update messages each member received (provider ``stats``) per
  Update message the writer sent (its ``localUpdates``: the provider may merge keystrokes typed
  within a few ms), and the duplicates among them;
- **latency**: keystroke (in the writer's page) → the character present in a member's page, p50 /
  p99 over every member and keystroke (``performance.timeOrigin + performance.now()``, one wall
  clock for every page of the machine).

Usage::

    .venv/bin/python -m bench.room_scale_web [--members 8] [--keys 100] [--rate 10] [--json out.json]

(The same file is the driver run inside the namespace, as ``tests/browser/../../bench/room_scale_web.py``
with its config on stdin.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PASSWORD = "correct horse battery"
DRIVER = "../../bench/room_scale_web.py"  # run_driver runs tests/browser/<script>: this file
NOW = "performance.timeOrigin + performance.now()"
STATS = "() => ({...window.codesync.provider.stats})"
MESHED = """(n) => { const open = window.codesync.provider.connectedPeers().filter(c => !c.service)
  return open.length === n }"""
WATCH = f"""(keys) => {{ const t = window.codesync.doc.getText('bench'); window.__arrivals = new Array(keys).fill(null)
  t.observe(() => {{ const now = {NOW}; const n = Math.min(t.length, keys)
    for (let i = n - 1; i >= 0 && window.__arrivals[i] === null; i--) window.__arrivals[i] = now }}) }}"""
TYPE = f"""async ([keys, gap]) => {{ const t = window.codesync.doc.getText('bench'); const sent = []
  const start = {NOW}
  for (let i = 0; i < keys; i++) {{
    const wait = start + i * gap - ({NOW}); if (wait > 0) await new Promise(r => setTimeout(r, wait))
    sent.push({NOW}); t.insert(t.length, 'x') }}
  return sent }}"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- inside the namespace
async def driver() -> None:
    import httpx
    from playwright.async_api import async_playwright

    from tests.browser.mesh_web import open_page
    from tests.helpers.netns import emit_result, launch_chromium, namespace_stack, read_config, setup_interfaces

    cfg = read_config()
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]))
    n, keys, gap = cfg["members"], cfg["keys"], 1000.0 / cfg["rate"]
    result: dict = {}
    try:
        await stack.start_signaling()
        names = [f"u{i}" for i in range(n)]
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            users = {}
            for name in names:
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name})
                r.raise_for_status()
                users[name] = r.json()
            owner = {"Authorization": f"Bearer {users['u0']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "scale", "language": "python"}, headers=owner)).json()
            for name in names[1:]:
                inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=owner)).json()
                r = await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users[name]['access_token']}"})
                r.raise_for_status()
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            pages = []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for name in names:
                _ctx, page = await open_page(browser, stack.url, users[name], f"#/room/{room['id']}")
                pages.append(page)
            opened = loop.time()
            for page in pages:
                await page.wait_for_function(MESHED, arg=n - 1, timeout=180_000)
            result["opened_s"] = round(opened - t0, 1)
            result["meshed_after_last_open_s"] = round(loop.time() - opened, 2)
            await asyncio.sleep(2)  # link messages and the join's document exchange settled
            for page in pages[1:]:
                await page.evaluate(WATCH, keys)
            before = [await p.evaluate(STATS) for p in pages]
            sent = await pages[0].evaluate(TYPE, [keys, gap])
            for page in pages[1:]:
                await page.wait_for_function(f"() => window.__arrivals[{keys - 1}] !== null", timeout=60_000)
            await asyncio.sleep(2)  # any late (forwarded) copy arrives
            after = [await p.evaluate(STATS) for p in pages]
            arrivals = [await p.evaluate("() => window.__arrivals") for p in pages[1:]]
            await browser.close()
        d = [{k: a[k] - b.get(k, 0) for k in a if isinstance(a[k], (int, float))} for a, b in zip(after, before)]
        messages = d[0]["localUpdates"]
        lat = [t - s for arr in arrivals for s, t in zip(sent, arr) if t is not None]
        result.update({
            "members": n, "keys": keys, "writer_update_messages": messages,
            "copies_per_message": [round(x["updatesReceived"] / messages, 3) for x in d[1:]],
            "duplicates_per_message": [round(x["duplicateUpdates"] / messages, 3) for x in d[1:]],
            "forwarded": sum(x["updatesForwarded"] for x in d),
            "latency_p50_ms": round(percentile(lat, 50), 1), "latency_p99_ms": round(percentile(lat, 99), 1),
            "latency_max_ms": round(max(lat), 1),
        })
    except Exception as exc:  # noqa: BLE001 - reported in the RESULT line with the logs
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()[-3000:]
    finally:
        stack.stop()
        if "error" in result:
            result["logs"] = {name: p.tail(2000) for name, p in stack.procs.items()}
        emit_result(result)


# ----------------------------------------------------------------------------- outside
def main() -> None:
    if "tests/browser/../../" in sys.argv[0]:  # run_driver ran this file inside the namespace
        asyncio.run(driver())
        return
    from tests.helpers.netns import browser_stack_available, run_driver

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=8, help="browsers in the room, the writer included")
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0, help="keystrokes per second")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ok, why = browser_stack_available()
    if not ok:
        raise SystemExit(f"browser testbed unavailable: {why}")
    with tempfile.TemporaryDirectory(prefix="cs-bench-rooms-web-") as tmp:
        res = run_driver(DRIVER, {
            "workdir": tmp, "members": args.members, "keys": args.keys, "rate": args.rate,
        }, Path(tmp) / "driver.log", timeout=600)
    if "error" in res:
        raise SystemExit(f"{res['error']}\n{res.get('trace', '')}\n{json.dumps(res.get('logs', {}), indent=1)[-4000:]}")
    copies = res["copies_per_message"]
    print(json.dumps(res))
    print(f"\nbrowsers N = {res['members']}, load average {os.getloadavg()[0]:.1f}: {res['keys']} keystrokes at "
          f"{args.rate:g}/s = {res['writer_update_messages']} Update messages from the writer")
    print(f"  copies per message per member {sum(copies) / len(copies):.2f} (max {max(copies):.2f}), duplicates "
          f"{sum(res['duplicates_per_message']) / len(copies):.2f}, forwarded {res['forwarded']}")
    print(f"  writer -> member latency p50 {res['latency_p50_ms']} ms, p99 {res['latency_p99_ms']} ms, max {res['latency_max_ms']} ms")
    print(f"  all pages open in {res['opened_s']} s, full mesh {res['meshed_after_last_open_s']} s after the last")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
