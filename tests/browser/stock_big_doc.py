"""Driver (runs INSIDE a private network namespace, see tests/netns.py): a stock y-webrtc
client in headless Chromium joins a room whose document is several megabytes, served by the
persistence peer alone. Chromium takes no data-channel message above 256 KiB and the stock
client knows no chunks, so the SyncStep2 must arrive as a sequence of bounded updates
(peer/segments.py). Prints one RESULT line: ``{"ok", "size", ...}`` or ``{"ok": false, "error"}``.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
import pycrdt  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from peer import Room  # noqa: E402
from tests.browser.web_e2e import build_stock_bundle  # noqa: E402
from tests.helpers.components import free_port  # noqa: E402
from tests.helpers.netns import NS_ADDR, emit_result, launch_chromium, namespace_stack, read_config, setup_interfaces  # noqa: E402
from tests.helpers.wait import wait_http_ok  # noqa: E402
from tests.helpers.persistence import saved_covers  # noqa: E402



async def until(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def metric(port: int, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).items() >= labels.items():
            total += float(m.group(2))
    return total


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    work = Path(cfg["workdir"])
    size = int(cfg.get("size", 3_000_000))
    (work / "stack").mkdir(parents=True, exist_ok=True)
    stack = namespace_stack(work / "stack")
    result: dict = {"ok": False}
    try:
        await stack.start_signaling()
        seeded = await stack.seed_room({"alice": "owner", "dave": "editor"})
        ops = free_port()
        persist = await stack.start_service("persist", "persistence", CODESYNC_OPS_PORT=str(ops))
        await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", persist)

        # alice writes a document of several megabytes in many edits, waits until it is stored, leaves
        alice = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=NS_ADDR)
        await alice.start()
        await until(lambda: any(i.service == "persistence" and i.synced for i in alice.peers.values()), 60,
                    "the persistence peer linked")
        text = alice.doc.get("source", type=pycrdt.Text)
        rnd = random.Random(15)
        while len(text) < size:
            line = "".join(rnd.choice("abcdefghij =()+\n") for _ in range(15_000))
            pos = rnd.randrange(len(text) + 1)
            s = str(text)
            while pos < len(s) and pos and s[pos - 1] != "\n":
                pos -= 1
            text.insert(pos, line)
            await asyncio.sleep(0.01)
        target = str(text)
        await until(lambda: saved_covers(alice), 120, "alice's document stored")
        state_bytes = len(alice.doc.get_update())
        await alice.stop()

        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            page = await (await browser.new_context()).new_page()
            logs: list[str] = []
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"[:300]))
            from urllib.parse import urlencode

            await page.goto(f"{stack.url}/healthz#" + urlencode(
                {"room": seeded.id, "signaling": f"ws://{NS_ADDR}:{stack.port}/signal?token={seeded.token('dave')}"}))
            await page.add_script_tag(content=build_stock_bundle(work))
            try:
                await page.wait_for_function("(n) => window.stock && window.stock.doc.getText('source').length === n",
                                             arg=len(target), timeout=120_000)
            except Exception:
                have = await page.evaluate("() => window.stock ? window.stock.doc.getText('source').length : -1")
                raise AssertionError(f"the stock client holds {have} of {len(target)} characters; console: {logs[-20:]}")
            got = await page.evaluate("() => window.stock.doc.getText('source').toString()")
            synced = await page.evaluate("() => Array.from(window.stock.provider.room.webrtcConns.values()).map(c => c.synced)")
            await page.evaluate("() => window.stock.doc.getText('source').insert(0, '# stock says hi\\n')")
            await browser.close()
        result = {
            "ok": got == target, "size": len(target), "state_bytes": state_bytes, "synced": synced,
            "split": await metric(ops, "codesync_peer_oversize_total", what="split"),
            "unsplittable": await metric(ops, "codesync_peer_oversize_total", what="unsplittable"),
        }
        if got != target:
            result["error"] = "the stock client's text differs"
    except Exception as exc:  # noqa: BLE001 - reported to the pytest side
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:],
                  "logs": {n: pr.tail(3000) for n, pr in stack.procs.items()}}
    finally:
        stack.stop()
    emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
