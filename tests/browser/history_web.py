"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): the history panel of the
real web client in headless Chromium, against real ``codesync signaling`` and ``codesync
persist`` — the timeline, an old version opened read-only with a diff against now, a restore by
an editor (converging in both browsers and in the database), blame by line, playback at 32×,
and a viewer refused by the default policy until the owner allows it.

Alice owns the room, Bob edits, Vic views. Prints one RESULT line: ``{"steps": {...}}``.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.browser.trust_web import open_as, stored_text, wait_js  # noqa: E402
from tests.browser.web_e2e import Steps, doc_text, type_into_editor  # noqa: E402
from tests.browser.workspace_web import new_entry  # noqa: E402
from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

PASSWORD = "correct horse battery"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FIRST = "greeting = 'hello'\nprint(greeting)\n"  # no indentation: CodeMirror would add its own
BOBS = "# bob's note\n"
SAVED = "() => document.querySelector('[data-testid=status-saved]').textContent === 'saved'"


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]))
    steps = Steps()
    state: dict = {"logs": []}
    try:
        await stack.start_signaling()
        await stack.start_service("persist", "persistence")
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in ("alice", "bob", "vic"):
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            owner = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "history", "language": "python"}, headers=owner)).json()
            for name, role in (("bob", "editor"), ("vic", "viewer")):
                inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": role}, headers=owner)).json()
                r = await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users[name]['access_token']}"})
                r.raise_for_status()
        room_id = room["id"]
        route = f"#/room/{room_id}"

        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            pages: dict = {}

            async def setup():
                for name in ("alice", "bob"):
                    _, pages[name] = await open_as(browser, stack.url, users[name], route)
                    pages[name].on("console", lambda m, n=name: state["logs"].append(f"{n}: {m.type}: {m.text}") if m.type in ("error", "warning") else None)
                    pages[name].on("pageerror", lambda e, n=name: state["logs"].append(f"{n}: pageerror: {e}"))
                a, b = pages["alice"], pages["bob"]
                for p in (a, b):
                    await p.wait_for_selector("[data-testid=status-saved].ok", timeout=45_000)
                await type_into_editor(a, FIRST, delay=10)
                await wait_js(b, "(t) => window.codesync.doc.getText('source').toString().includes(t)", FIRST)
                await type_into_editor(b, BOBS, delay=10)
                for p in (a, b):
                    await wait_js(p, "(t) => window.codesync.doc.getText('source').toString().endsWith(t)", BOBS)
                    await wait_js(p, SAVED)
                return {"text": await doc_text(a)}

            await steps.run("setup", setup)

            async def blame():
                a = pages["alice"]
                await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-tab-blame]")
                await a.wait_for_selector("[data-testid=blame-line]")
                await wait_js(a, "() => Array.from(document.querySelectorAll('[data-testid=blame-author]')).some(e => e.textContent === 'Bob')")
                lines = await a.evaluate("""() => Array.from(document.querySelectorAll('[data-testid=blame-line]')).map(l =>
                    [l.querySelector('[data-testid=blame-author]').textContent, l.lastChild.textContent])""")
                by_line = {text: who for who, text in lines}
                assert by_line.get("greeting = 'hello'") == "Alice" and by_line.get("# bob's note") == "Bob", lines
                await a.click("[data-testid=history-tab-timeline]")
                await a.click("[data-testid=history-close]")
                return {"lines": lines}

            await steps.run("blame_by_line", blame, ("setup",))

            async def timeline():
                a = pages["alice"]
                await a.click("[data-testid=history-open]")
                await a.wait_for_selector("[data-testid=history-panel]:not([hidden])")
                await a.wait_for_selector("[data-testid=history-item]")
                items = await a.locator("[data-testid=history-item]").all_inner_texts()
                assert any("Alice" in t for t in items) and any("Bob" in t for t in items), items
                await a.fill("[data-testid=history-name-input]", "first draft")
                await a.click("[data-testid=history-name-save]")
                await a.wait_for_selector("[data-testid=history-checkpoint] >> text=first draft")
                await a.click("[data-testid=history-close]")
                # the document changes after the named version: Alice replaces everything
                await a.click(".cm-content")
                await a.keyboard.press("Control+a")
                await a.keyboard.type("print('replaced')\n", delay=10)
                await wait_js(pages["bob"], "() => window.codesync.doc.getText('source').toString() === \"print('replaced')\\n\"")
                await wait_js(a, SAVED)
                return {"items": items}

            await steps.run("timeline_and_named_version", timeline, ("setup",))

            async def old_version():
                a = pages["alice"]
                await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-checkpoint] >> text=first draft")
                text = await (await a.wait_for_selector("[data-testid=history-version-text]")).inner_text()
                assert text.rstrip("\n") == (FIRST + BOBS).rstrip("\n"), text
                await a.click("[data-testid=history-diff]")
                await a.wait_for_selector("[data-testid=history-version-text] span.del")
                removed = await a.locator("[data-testid=history-version-text] span.del").all_inner_texts()
                added = await a.locator("[data-testid=history-version-text] span.add").all_inner_texts()
                assert any("greeting = 'hello'" in t for t in removed) and any("replaced" in t for t in added), (removed, added)
                SHOTS.mkdir(parents=True, exist_ok=True)
                await a.screenshot(path=str(SHOTS / "history-version.png"))
                await a.click("[data-testid=history-close]")
                assert await doc_text(a) == "print('replaced')\n"  # opening a version changes nothing
                return {"removed": removed, "added": added}

            await steps.run("old_version_read_only_with_diff", old_version, ("timeline_and_named_version",))

            async def restore():
                a, b = pages["alice"], pages["bob"]
                await b.click("[data-testid=history-open]")
                await b.click("[data-testid=history-checkpoint] >> text=first draft")
                await b.wait_for_selector("[data-testid=history-version-text]")
                await b.click("[data-testid=history-restore]")
                await b.wait_for_selector("[data-testid=history-message] >> text=Restored")
                for p in (a, b):
                    await wait_js(p, "(t) => window.codesync.doc.getText('source').toString() === t", FIRST + BOBS)
                    await wait_js(p, SAVED)
                stored = await stored_text(stack, room_id)
                assert stored == FIRST + BOBS, stored
                await b.click("[data-testid=history-close]")
                return {"stored": stored}

            await steps.run("restore_converges_and_is_stored", restore, ("old_version_read_only_with_diff",))


            async def playback():
                a = pages["alice"]
                await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-tab-play]")
                await a.wait_for_selector("[data-testid=player-play]")
                await wait_js(a, "() => window.codesync.history.player.state !== null")
                await a.evaluate("""() => { window.typingSeen = new Set(); window.textsSeen = new Set()
                    const t = document.querySelector('[data-testid=player-typing]')
                    const x = document.querySelector('[data-testid=player-text]')
                    new MutationObserver(() => { if (t.textContent) window.typingSeen.add(t.textContent) }).observe(t, {childList: true, characterData: true, subtree: true})
                    new MutationObserver(() => window.textsSeen.add(x.textContent)).observe(x, {childList: true, characterData: true, subtree: true}) }""")
                start = await a.inner_text("[data-testid=player-text]")
                # 1x: the keystrokes come back one after the other, as typed
                await a.select_option("[data-testid=player-speed]", "1")
                await a.click("[data-testid=player-play]")
                await wait_js(a, "() => window.textsSeen.size > 5")
                await a.click("[data-testid=player-play]")  # pause ...
                paused = await a.inner_text("[data-testid=player-text]")
                SHOTS.mkdir(parents=True, exist_ok=True)
                await a.screenshot(path=str(SHOTS / "history-playback.png"))
                await asyncio.sleep(0.5)
                assert await a.inner_text("[data-testid=player-text]") == paused, "the player moved while paused"
                await a.select_option("[data-testid=player-speed]", "32")
                await a.click("[data-testid=player-play]")  # ... and on to the end at 32x
                final = FIRST + BOBS
                await wait_js(a, "(t) => document.querySelector('[data-testid=player-text]').textContent === t", final, timeout=60_000)
                seen = await a.evaluate("() => [Array.from(window.typingSeen), window.textsSeen.size]")
                assert any("Alice" in s for s in seen[0]) and any("Bob" in s for s in seen[0]), seen
                assert seen[1] > 5, (seen, await a.evaluate("() => Array.from(window.textsSeen)"))
                # scrub to just before the restore (the last update): Alice's replacement
                scrub = "(v) => { const s = document.querySelector('[data-testid=player-scrub]'); s.value = v === 'min' ? s.min : String(Number(s.max) - 1); s.dispatchEvent(new Event('change')) }"
                await a.evaluate(scrub, "before-last")
                await wait_js(a, "() => document.querySelector('[data-testid=player-text]').textContent === \"print('replaced')\\n\"")
                # and back to the start: the first state again
                await a.evaluate(scrub, "min")
                await wait_js(a, "(t) => document.querySelector('[data-testid=player-text]').textContent === t", start)
                return {"typing": seen[0], "states": seen[1], "start": start}

            await steps.run("playback_32x_pause_scrub", playback, ("restore_converges_and_is_stored",))

            async def viewer_policy():
                a = pages["alice"]
                _, v = await open_as(browser, stack.url, users["vic"], route)
                pages["vic"] = v
                await v.wait_for_selector("[data-testid=status-saved].ok", timeout=45_000)  # linked to the persistence peer
                await v.click("[data-testid=history-open]")
                await v.wait_for_selector("[data-testid=history-message] >> text=may not")
                assert await v.locator("[data-testid=history-item]").count() == 0
                assert await v.locator("[data-testid=history-name-save]").count() == 0
                if await a.locator("[data-testid=history-panel]:not([hidden])").count() == 0:
                    await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-tab-timeline]")
                await a.check("[data-testid=history-policy]")
                await a.wait_for_selector("[data-testid=history-message] >> text=Viewers may now read")
                await v.click("[data-testid=history-tab-timeline]")
                await v.wait_for_selector("[data-testid=history-item]")
                assert await v.locator("[data-testid=history-restore]").count() == 0
                return {}

            await steps.run("viewer_reads_only_when_allowed", viewer_policy, ("setup",))

            lib_text = """(name) => { const d = window.codesync.doc
                for (const [, e] of d.getMap('files')) if (e.get('name') === name) return d.getText(e.get('text')).toString()
                return null }"""

            async def second_file():
                a = pages["alice"]
                if await a.locator("[data-testid=history-panel]:not([hidden])").count():
                    await a.click("[data-testid=history-close]")
                source_before = await doc_text(a)
                await new_entry(a, "tree-new-file", "lib.py")
                await wait_js(a, "(n) => window.codesync.doc && (" + lib_text + ")(n) === ''", "lib.py")
                await type_into_editor(a, "LIMIT = 1\nprint(LIMIT)\n", delay=10)
                await wait_js(a, "(n) => (" + lib_text + ")(n) === 'LIMIT = 1\\nprint(LIMIT)\\n'", "lib.py")
                await wait_js(a, SAVED)
                await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-tab-timeline]")
                await a.fill("[data-testid=history-name-input]", "lib limit 1")
                await a.click("[data-testid=history-name-save]")
                await a.wait_for_selector("[data-testid=history-checkpoint] >> text=lib limit 1")
                await a.click("[data-testid=history-close]")
                await a.click(".cm-content")
                await a.keyboard.press("Control+a")
                await a.keyboard.type("LIMIT = 2\nprint(LIMIT)\n", delay=10)
                await wait_js(a, "(n) => (" + lib_text + ")(n) === 'LIMIT = 2\\nprint(LIMIT)\\n'", "lib.py")
                await wait_js(a, SAVED)
                # the version view, blame and restore are about the file in view: lib.py
                await a.click("[data-testid=history-open]")
                await a.click("[data-testid=history-checkpoint] >> text=lib limit 1")
                await wait_js(a, "() => (document.querySelector('[data-testid=history-version-text]') || {}).textContent === 'LIMIT = 1\\nprint(LIMIT)\\n'")
                await a.click("[data-testid=history-tab-blame]")
                await wait_js(a, "() => Array.from(document.querySelectorAll('[data-testid=blame-line]')).some(l => l.lastChild.textContent === 'LIMIT = 2')")
                lines = await a.evaluate("""() => Array.from(document.querySelectorAll('[data-testid=blame-line]')).map(l =>
                    [l.querySelector('[data-testid=blame-author]').textContent, l.lastChild.textContent])""")
                assert ["Alice", "LIMIT = 2"] in lines and not any("greeting" in t for _, t in lines), lines
                await a.click("[data-testid=history-tab-timeline]")
                await a.click("[data-testid=history-checkpoint] >> text=lib limit 1")
                await a.wait_for_selector("[data-testid=history-version-text]")
                await a.click("[data-testid=history-restore]")
                await a.wait_for_selector("[data-testid=history-message] >> text=Restored")
                await wait_js(pages["bob"], "(n) => (" + lib_text + ")(n) === 'LIMIT = 1\\nprint(LIMIT)\\n'", "lib.py")
                assert await doc_text(a) == source_before  # the first file is untouched
                await a.click("[data-testid=history-close]")
                return {"blame": lines}

            await steps.run("second_file_history", second_file, ("setup",))
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        steps.results["driver"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    finally:
        stack.stop()
        emit_result({"steps": steps.results, "console": state["logs"][-80:],
                     "logs": {n: p.tail(3000) for n, p in stack.procs.items()}})


if __name__ == "__main__":
    asyncio.run(main())
