"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py) for bench/workspace.py: the
workspace in real Chromium with the whole stack. Alice uploads a generated project (``files``
files, ``mb`` MB) through the client's own import; a fresh page of Bob's opens the room and is
timed from ``goto`` to holding every file with every byte (several times, a fresh context each);
then the console's stdin round trip: a Python echo program runs, Bob presses Enter in his
console, and Alice's page records when the echoed input and the program's answer arrive in her
runs document (both pages' epoch clocks: same machine, same Chromium). Prints one RESULT line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.browser.trust_web import PASSWORD, open_as  # noqa: E402
from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

HOLDS = """([n, bytes]) => { const cs = window.codesync; if (!cs) return false
  const files = cs.tree().filter(e => e.kind === 'file' && e.path.startsWith('pkg'))
  if (files.length < n) return false
  let total = 0
  for (const e of files) total += new TextEncoder().encode(cs.doc.getText('file:' + e.id).toString()).length
  return total >= bytes }"""


def pct(values, p):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


async def main() -> None:
    cfg = read_config()
    files, mb, rounds = int(cfg.get("files", 200)), float(cfg.get("mb", 5)), int(cfg.get("rounds", 20))
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]), extra_env={"CODESYNC_RUNNER_WALL_SECONDS": "120", "CODESYNC_RUNNER_CPU_SECONDS": "60",
                                                  "CODESYNC_PERSIST_IDLE_GRACE": "600"})
    result: dict = {}
    try:
        await stack.start_signaling()
        await stack.start_service("persist", "persistence")
        await stack.start_service("runner", "runner")
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in ("alice", "bob"):
                users[name] = (await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})).json()
            auth = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "bench", "language": "python"}, headers=auth)).json()
            inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=auth)).json()
            (await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users['bob']['access_token']}"})).raise_for_status()
        route = f"#/room/{room['id']}"
        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            _, a = await open_as(browser, stack.url, users["alice"], route)
            await a.wait_for_function("() => window.codesync.tree().some(e => e.path === 'main.py')", timeout=60_000)
            per = int(mb * 2**20) // files
            made = await a.evaluate("""([files, per]) => {
                const out = []
                for (let i = 0; i < files; i++) {
                  let s = '', n = 0
                  while (s.length < per) { s += `def function_${i}_${n}(value):  # file ${i}, line ${n}\\n    return value * ${n} + ${i}\\n`; n++ }
                  out.push({ path: `pkg${i % 10}/module_${String(i).padStart(3, '0')}.py`, text: s.slice(0, per) })
                }
                const t = performance.now()
                window.codesync.ws.importFiles(window.codesync.doc, out)
                return { ms: performance.now() - t, bytes: out.reduce((n, f) => n + f.text.length, 0) }
            }""", [files, per])
            result["import_ms"] = round(made["ms"], 1)
            await a.wait_for_selector("[data-testid=status-saved].ok", timeout=180_000)
            joins = []
            for _ in range(3):
                # A fresh sign-in per page (refresh tokens rotate: one session per browser profile).
                async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                    bob = (await http.post("/api/auth/login", json={"email": "bob@example.com", "password": PASSWORD})).json()
                ctx = await browser.new_context()
                session = {"access_token": bob["access_token"], "refresh_token": bob["refresh_token"], "user": bob["user"]}
                await ctx.add_init_script(f"if (!localStorage.getItem('codesync.session')) localStorage.setItem('codesync.session', JSON.stringify({json.dumps(session)}))")
                b = await ctx.new_page()
                t0 = asyncio.get_running_loop().time()
                await b.goto(f"{stack.url}/{route}")
                try:
                    await b.wait_for_function(HOLDS, arg=[files, made["bytes"]], timeout=120_000, polling=20)
                except Exception as exc:
                    seen = await b.evaluate("""() => window.codesync ? {files: window.codesync.tree().length, links: window.codesync.provider.connectedPeers().map(c => [c.sender, c.synced]),
                        stats: window.codesync.provider.stats, state: window.codesync.provider.state} : location.href""")
                    await b.screenshot(path=str(Path(cfg["workdir"]).parent / "ws-bench-fail.png"))
                    seen = {"seen": seen, "text": (await b.inner_text("body"))[:500]}
                    raise AssertionError(f"the fresh page did not get the project: {seen}") from exc
                joins.append(asyncio.get_running_loop().time() - t0)
                await ctx.close()
            result["joins_s"] = [round(x, 2) for x in joins]
            result["join_s"] = round(statistics.median(joins), 2)

            # stdin round trip: Bob's Enter -> Alice's runs document (echo, then the program's answer).
            async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
                bob = (await http.post("/api/auth/login", json={"email": "bob@example.com", "password": PASSWORD})).json()
            _, b = await open_as(browser, stack.url, bob, route)
            await b.wait_for_function("() => !!window.codesync.provider.runnerPeer()", timeout=60_000)
            await a.evaluate("""() => { const t = window.codesync.doc.getText('source'); window.codesync.doc.transact(() => { t.delete(0, t.length)
                t.insert(0, "import sys\\nfor line in sys.stdin:\\n    print('got', line.strip(), flush=True)\\n") }) }""")
            await a.evaluate("() => window.codesync.tabs.open('source')")
            await a.click("[data-testid=run]")
            await b.wait_for_selector("[data-testid=console-input]:not([disabled])", timeout=60_000)
            await a.evaluate("""() => { window.arrivals = {}
                const runs = window.codesync.runsDoc.getMap('runs')
                runs.observeDeep(() => { runs.forEach((r) => { const out = String(r.get('output') || '')
                  for (const m of out.matchAll(/ping(\\d+)/g)) { const k = 'echo' + m[1]; if (!(k in window.arrivals)) window.arrivals[k] = performance.timeOrigin + performance.now() }
                  for (const m of out.matchAll(/got ping(\\d+)/g)) { const k = 'answer' + m[1]; if (!(k in window.arrivals)) window.arrivals[k] = performance.timeOrigin + performance.now() } }) }) }""")
            # One round first, not counted: the sandbox may still be starting when the console opens.
            await b.fill("[data-testid=console-input]", "warmup")
            await b.press("[data-testid=console-input]", "Enter")
            await a.wait_for_function("() => Array.from(window.codesync.runsDoc.getMap('runs').values()).some(r => String(r.get('output')).includes('got warmup'))", timeout=30_000)
            echo, answer = [], []
            for i in range(rounds):
                await b.fill("[data-testid=console-input]", f"ping{i}")
                sent = await b.evaluate("""() => { const el = document.querySelector('[data-testid=console-input]')
                    const t = performance.timeOrigin + performance.now()
                    el.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true })); return t }""")
                got = await a.wait_for_function("(i) => ('answer' + i) in window.arrivals && window.arrivals", arg=i, timeout=20_000)
                arrivals = await got.json_value()
                echo.append(arrivals[f"echo{i}"] - sent)
                answer.append(arrivals[f"answer{i}"] - sent)
                await asyncio.sleep(0.05)
            await b.keyboard.press("Escape")
            result.update({
                "rounds": rounds, "echo_ms": [round(x, 2) for x in echo], "answer_ms": [round(x, 2) for x in answer],
                "echo_p50_ms": round(pct(echo, 50), 1), "echo_p99_ms": round(pct(echo, 99), 1),
                "answer_p50_ms": round(pct(answer, 50), 1), "answer_p99_ms": round(pct(answer, 99), 1),
            })
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:],
                  "logs": {n: p.tail(2000) for n, p in stack.procs.items()}}
    finally:
        stack.stop()
        emit_result(result)


if __name__ == "__main__":
    asyncio.run(main())
