"""Driver (INSIDE a private network namespace, see tests/helpers/netns.py): the workspace in the real web
client — files and folders, tabs, cursors per file, multi-file runs, the console, upload and
download — with signaling, the persistence peer and the runner, and three users in headless
Chromium: Alice (owner), Bob (editor), Carol (viewer). Prints one RESULT line:
``{"steps": {...}}``. Config: ``workdir``; optional ``uploads`` (file name -> base64 content to upload,
in order; archives made by the pytest side with Python's zipfile, so links and ``..`` entries
are real zip entries; names starting with ``bad`` must be refused, ``good`` accepted).
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import time
import traceback
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

from tests.browser.trust_web import PASSWORD, never, open_as, probe  # noqa: E402
from tests.browser.web_e2e import Steps  # noqa: E402
from tests.helpers.netns import namespace_stack, emit_result, launch_chromium, read_config, setup_interfaces  # noqa: E402

T = 30_000
USERS = ("alice", "bob", "carol")

TREE = "() => window.codesync.tree().map(e => e.path).sort()"
HAS_PATHS = "(paths) => { const t = window.codesync.tree().map(e => e.path); return paths.every(p => t.includes(p)) }"
FILE_TEXT = """(path) => { const e = window.codesync.tree().find(x => x.path === path); if (!e) return null
  const d = window.codesync.doc; return d.getText(e.id === 'source' ? 'source' : 'file:' + e.id).toString() }"""
SET_TEXT = """([path, text]) => { const e = window.codesync.tree().find(x => x.path === path)
  const t = window.codesync.doc.getText(e.id === 'source' ? 'source' : 'file:' + e.id)
  window.codesync.doc.transact(() => { t.delete(0, t.length); t.insert(0, text) }) }"""
# What a modified client does: change its own document and push the update down every open link.
FORCE = """(what) => {
  const cs = window.codesync
  const varUint = (n) => { const out = []; while (n > 127) { out.push(128 | (n & 127)); n = Math.floor(n / 128) } out.push(n); return out }
  let update = null
  const grab = (u) => { update = u }
  cs.doc.on('update', grab)
  try {
    if (what === 'create') cs.ws.createEntry(cs.doc, 'file', 'viewer-planted.py', '', { content: 'print(1)' })
    else if (what === 'rename') cs.doc.getMap('files').get('source').set('name', 'viewer-renamed.py')
    else if (what === 'delete') cs.doc.getMap('files').delete('source')
  } finally { cs.doc.off('update', grab) }
  const msg = new Uint8Array([0, 2, ...varUint(update.length), ...update])
  let sent = 0
  cs.provider.conns.forEach(c => { if (c.connected) { c.send(msg); sent++ } })
  return sent
}"""


async def wait_js(page, expr: str, arg=None, timeout: int = T):
    return await page.wait_for_function(expr, arg=arg, timeout=timeout)


async def runs_state(page) -> list:
    """What a failure message needs: the runs as this page has them, and its run message."""
    return await page.evaluate("""() => ({runs: Array.from(window.codesync.runsDoc.getMap('runs').entries()).map(([id, r]) =>
        [id, r.get('status'), r.get('reason'), String(r.get('output')).slice(-300)]),
        message: (document.querySelector('[data-testid=run-message]') || {}).textContent,
        output: (document.querySelector('[data-testid=output]') || {}).textContent})""")


async def see_output(page, text: str, timeout: int = 45_000) -> None:
    try:
        await page.wait_for_selector(f"[data-testid=output] >> text={text}", timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"{text!r} not in the output: {await runs_state(page)}") from exc


async def row_action(page, path: str, testid: str) -> None:
    """A row's actions show on hover (and on the open file's row), as a person reaches them."""
    row = f"[data-testid=tree-row][data-path='{path}']"
    await page.hover(f"{row} .tree-label")
    await page.click(f"{row} [data-testid={testid}]")


async def click_row(page, path: str) -> None:
    await page.click(f"[data-testid=tree-row][data-path='{path}'] .tree-label")


async def new_entry(page, button: str, name: str) -> None:
    await page.click(f"[data-testid={button}]")
    box = page.locator("[data-testid=tree-name-input]")
    await box.fill(name)
    await box.press("Enter")


async def main() -> None:
    cfg = read_config()
    setup_interfaces()
    stack = namespace_stack(Path(cfg["workdir"]))
    steps = Steps()
    state: dict = {"logs": []}
    try:
        await stack.start_signaling()
        await stack.start_service("persist", "persistence")
        await stack.start_service("runner", "runner")
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            users = {}
            for name in USERS:
                r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
                r.raise_for_status()
                users[name] = r.json()
            owner = {"Authorization": f"Bearer {users['alice']['access_token']}"}
            room = (await http.post("/api/rooms", json={"name": "workspace", "language": "python"}, headers=owner)).json()
            for name, role in (("bob", "editor"), ("carol", "viewer")):
                inv = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": role}, headers=owner)).json()
                (await http.post(f"/api/invites/{inv['token']}/accept", headers={"Authorization": f"Bearer {users[name]['access_token']}"})).raise_for_status()
        ids = {n: users[n]["user"]["id"] for n in USERS}
        route = f"#/room/{room['id']}"

        async with async_playwright() as pw:
            browser = await launch_chromium(pw)
            pages: dict = {}
            ctxs: dict = {}
            for name in USERS:
                ctxs[name], pages[name] = await open_as(browser, stack.url, users[name], route)
                pages[name].on("console", lambda m, n=name: state["logs"].append(f"{n}: {m.type}: {m.text}") if m.type in ("error", "warning") else None)
                pages[name].on("pageerror", lambda e, n=name: state["logs"].append(f"{n}: pageerror: {e}"))
            a, b, c = pages["alice"], pages["bob"], pages["carol"]
            linked = "(ids) => ids.every(id => window.codesync.provider.connectedPeers().some(x => x.sender && x.sender.user_id === id))"

            async def setup():
                for name, page in pages.items():
                    await wait_js(page, linked, [ids[o] for o in USERS if o != name])
                    await wait_js(page, "() => !!window.codesync.provider.runnerPeer()", timeout=45_000)
                for page in pages.values():
                    await wait_js(page, HAS_PATHS, ["main.py"])
                    await page.wait_for_selector("[data-testid=tab][data-path='main.py']")
                return {"tree": await a.evaluate(TREE)}

            await steps.run("setup", setup)

            # ---------------------------------------------------------------- files and folders
            async def files_and_folders():
                await click_row(a, "main.py")
                await new_entry(a, "tree-new-file", "util.py")
                await new_entry(b, "tree-new-folder", "pkg")  # the new folder is selected: the next file goes in it
                await b.wait_for_selector("[data-testid=tree-row][data-path='pkg']")
                await new_entry(b, "tree-new-file", "helper.py")
                await new_entry(b, "tree-new-file", "__init__.py")
                want = ["main.py", "pkg", "pkg/__init__.py", "pkg/helper.py", "util.py"]
                for page in (a, b, c):
                    await wait_js(page, HAS_PATHS, want)
                    for path in want:
                        await page.wait_for_selector(f"[data-testid=tree-row][data-path='{path}']")
                # The one who made a file has it open; Alice's new file too.
                await a.wait_for_selector("[data-testid=tab].active[data-path='util.py']")
                await b.wait_for_selector("[data-testid=tab].active[data-path='pkg/__init__.py']")
                return {"tree": await c.evaluate(TREE)}

            await steps.run("files_and_folders", files_and_folders, ("setup",))

            # ---------------------------------------------------------------- two files at once
            async def edit_different_files():
                await click_row(b, "pkg/helper.py")
                await b.wait_for_selector("[data-testid=tab].active[data-path='pkg/helper.py']")
                ta, tb = "# alice types in util\n", "# bob types in helper\n"

                async def typ(page, text):
                    await page.click(".cm-content")
                    await page.keyboard.type(text, delay=15)

                await asyncio.gather(typ(a, ta), typ(b, tb))
                for page in (a, b, c):
                    await wait_js(page, "([p, t]) => (" + FILE_TEXT + ")(p) === t", ["util.py", ta])
                    await wait_js(page, "([p, t]) => (" + FILE_TEXT + ")(p) === t", ["pkg/helper.py", tb])
                # Each sees the other's cursor only in the file the other is in, and where they are.
                await a.wait_for_selector("[data-testid=presence] >> text=in pkg/helper.py")
                await b.wait_for_selector("[data-testid=presence] >> text=in util.py")
                bob_in_util = not await never(a, "() => Array.from(document.querySelectorAll('.cm-ySelectionInfo')).some(e => e.textContent.includes('Bob'))")
                await click_row(a, "pkg/helper.py")
                await a.wait_for_selector(".cm-ySelectionInfo >> text=Bob")
                await a.wait_for_selector("[data-testid=tab][data-path='util.py']")  # util.py stays open as a tab
                await click_row(b, "util.py")
                await b.wait_for_selector(".cm-ySelectionInfo >> text=Alice", state="detached")
                assert not bob_in_util, "Bob's cursor was shown in a file Bob is not in"
                return {"util": await a.evaluate(FILE_TEXT, "util.py")}

            await steps.run("edit_different_files_cursors_in_the_right_file", edit_different_files, ("files_and_folders",))

            # ---------------------------------------------------------------- multi-file run
            async def multi_file_run():
                await a.evaluate(SET_TEXT, ["util.py", "def f():\n    return 'util ok'\n"])
                await a.evaluate(SET_TEXT, ["pkg/helper.py", "def g():\n    return 'helper ok'\n"])
                await a.evaluate(SET_TEXT, ["main.py", "import util\nfrom pkg import helper\nprint(util.f(), helper.g())\n"])
                await click_row(a, "main.py")
                await row_action(a, "main.py", "tree-set-entry")
                for page in (a, b):
                    await page.wait_for_selector("[data-testid=tree-row][data-path='main.py'] [data-testid=tree-entry-mark]")
                    await page.wait_for_selector("[data-testid=run-target] >> text=main.py (entry)")
                # Bob looks at another file and presses Run: the entry file runs with every file present.
                await click_row(b, "util.py")
                await b.keyboard.press("Control+Enter")
                for page in (a, b, c):
                    await see_output(page, "util ok helper ok")
                    await page.wait_for_selector("[data-testid=run-state] >> text=finished")
                return {"output": await c.inner_text("[data-testid=output]")}

            await steps.run("multi_file_python_run_seen_by_both", multi_file_run, ("files_and_folders",))

            # ---------------------------------------------------------------- console input
            async def console_input():
                await a.evaluate(SET_TEXT, ["main.py", "name = input('name? ')\nprint('hello', name)\nprint('more', input('more? '))\n"])
                await a.click("[data-testid=run]")
                for page in (a, b, c):
                    await see_output(page, "name?")
                await b.wait_for_selector("[data-testid=console-input]:not([disabled])")
                viewer_disabled = await c.is_disabled("[data-testid=console-input]")
                await b.fill("[data-testid=console-input]", "Bob")
                await b.press("[data-testid=console-input]", "Enter")
                for page in (a, b, c):
                    await page.wait_for_selector("[data-testid=output] >> text=hello Bob")
                    await page.wait_for_selector("[data-testid=output] .stdin >> text=Bob")
                await b.press("[data-testid=console-input]", "Control+d")  # end of input: the second input() fails
                for page in (a, c):
                    await page.wait_for_selector("[data-testid=output] >> text=EOFError", timeout=20_000)
                assert viewer_disabled, "the viewer's console input is enabled"
                return {"output": await a.inner_text("[data-testid=output]")}

            await steps.run("input_answered_from_second_users_console", console_input, ("multi_file_python_run_seen_by_both",))

            # ---------------------------------------------------------------- output view
            async def output_view():
                await a.evaluate(SET_TEXT, ["main.py", "print('\\x1b[31mred\\x1b[0m plain <b>not bold</b>')\nprint('x' * 70000)\n"])
                await a.click("[data-testid=run]")
                for page in (a, b):
                    await page.wait_for_selector("[data-testid=output-truncated]", timeout=45_000)
                red = await a.evaluate("() => Array.from(document.querySelectorAll('[data-testid=output] span')).some(s => s.textContent === 'red' && s.style.color)")
                markup = await a.evaluate("() => document.querySelector('[data-testid=output] b') !== null")
                await a.click("[data-testid=output-clear]")
                cleared_a = await a.inner_text("[data-testid=output]")
                kept_b = await b.inner_text("[data-testid=output]")
                assert red and not markup, (red, markup)
                assert "red" not in cleared_a and "red plain <b>not bold</b>" in kept_b, (cleared_a[:200], kept_b[:200])
                return {}

            await steps.run("output_ansi_truncation_and_clear_for_one", output_view, ("multi_file_python_run_seen_by_both",))

            # ---------------------------------------------------------------- viewer
            async def viewer():
                edit_tools = await c.is_visible("[data-testid=tree-new-file]")
                row_actions = await c.locator("[data-testid=tree-rename]").count()
                await a.evaluate(SET_TEXT, ["main.py", "input('wait')\n"])
                await a.click("[data-testid=run]")
                await c.wait_for_selector("[data-testid=output] >> text=wait", timeout=45_000)
                await c.wait_for_selector("[data-testid=console-input][disabled]")
                run_id = await c.evaluate("() => Array.from(window.codesync.runsDoc.getMap('runs').entries()).find(([, r]) => r.get('status') === 'running')[0]")
                # Forced: a modified client writes the tree and pushes it down its links, and types into the run.
                sent = [await c.evaluate(FORCE, what) for what in ("create", "rename", "delete")]
                await c.evaluate("(id) => { window.replies = []; window.codesync.provider.on('app', (m) => window.replies.push(m))\n"
                                 "  const r = window.codesync.provider.runnerPeer(); window.codesync.provider.sendApp(r.remotePeerId, {op: 'input', run_id: id, data: 'evil\\n'}) }", run_id)
                await wait_js(c, "() => window.replies.some(m => m.op === 'input-refused')")
                await probe(c, 1, a, b)  # Alice and Bob have processed everything Carol sent before
                for page in (a, b):
                    tree = await page.evaluate(TREE)
                    assert "viewer-planted.py" not in tree and "main.py" in tree and "viewer-renamed.py" not in tree, tree
                out = await a.inner_text("[data-testid=output]")
                assert "evil" not in out, out
                dropped = await a.evaluate("() => window.codesync.provider.stats.droppedUpdates")
                # Legitimate use goes on: Bob answers the program.
                await b.fill("[data-testid=console-input]", "fine")
                await b.press("[data-testid=console-input]", "Enter")
                await a.wait_for_selector("[data-testid=run-state] >> text=finished", timeout=20_000)
                assert not edit_tools and row_actions == 0, (edit_tools, row_actions)
                assert dropped >= 3, dropped
                return {"links_written_to": sent, "alice_dropped": dropped}

            await steps.run("viewer_cannot_change_files_or_type", viewer, ("multi_file_python_run_seen_by_both",))

            # ---------------------------------------------------------------- upload / download
            async def upload():
                work = Path(cfg["workdir"])
                results = {}
                for name, data in (cfg.get("uploads") or {}).items():
                    path = work / name
                    path.write_bytes(base64.b64decode(data))
                    before = await a.evaluate(TREE)
                    await a.set_input_files("[data-testid=tree-upload-input]", str(path))
                    note = await a.wait_for_selector("[data-testid=tree-message]:not([hidden])")
                    results[name] = await note.inner_text()
                    if name == "good.zip":
                        for page in (a, b):
                            await wait_js(page, HAS_PATHS, ["lib/up.py", "lib/data/readme.txt"])
                    elif name.startswith("good"):
                        for page in (a, b):
                            await wait_js(page, "(n) => window.codesync.tree().some(e => e.path.endsWith(n))", name.split("-", 1)[1])
                    else:
                        await probe(a, 2 + len(results), b)
                        assert await a.evaluate(TREE) == before and await b.evaluate(TREE) == before, name
                assert all("refused" in v for k, v in results.items() if k.startswith("bad")), results
                assert all("Uploaded" in v for k, v in results.items() if k.startswith("good")), results
                # Download: the project as a zip, every file with its content.
                async with a.expect_download() as dl:
                    await a.click("[data-testid=tree-download]")
                saved = work / "download.zip"
                await (await dl.value).save_as(saved)
                with zipfile.ZipFile(io.BytesIO(saved.read_bytes())) as z:
                    names = sorted(z.namelist())
                    helper = z.read("pkg/helper.py").decode()
                assert {"main.py", "util.py", "pkg/helper.py", "lib/up.py"} <= set(names), names
                assert helper == "def g():\n    return 'helper ok'\n", helper
                return {"messages": results, "downloaded": names}

            await steps.run("upload_checked_and_download_zip", upload, ("files_and_folders",))

            # ---------------------------------------------------------------- limits
            async def limits():
                await click_row(a, "main.py")
                # A file at its size limit: typing more is refused with a message; deleting works.
                big = "x" * (2 * 1024 * 1024 - 4)
                await a.evaluate(SET_TEXT, ["util.py", big])
                await click_row(a, "util.py")
                await a.click(".cm-content")
                await a.keyboard.press("Control+End")
                await a.keyboard.type("abcdefgh", delay=5)
                note = await a.wait_for_selector("[data-testid=editor-message]:not([hidden])")
                message = await note.inner_text()
                size = await a.evaluate("(p) => new TextEncoder().encode((" + FILE_TEXT + ")(p)).length", "util.py")
                await a.keyboard.press("Backspace")  # making a full file smaller always works
                await wait_js(a, "([p, n]) => (" + FILE_TEXT + ")(p).length === n", ["util.py", size - 1])
                await a.evaluate(SET_TEXT, ["util.py", "def f():\n    return 'util ok'\n"])
                # A room at its file limit: one more file is refused with a message, nothing written.
                have = await a.evaluate("() => window.codesync.tree().filter(e => e.kind === 'file').length")
                await a.evaluate("(n) => window.codesync.ws.importFiles(window.codesync.doc, Array.from({length: n}, (_, i) => ({path: `bulk/f${i}.txt`, text: ''})))", 500 - have)
                await new_entry(a, "tree-new-file", "one-too-many.py")
                refused = await (await a.wait_for_selector("[data-testid=tree-message]:not([hidden])")).inner_text()
                files_now = await a.evaluate("() => window.codesync.tree().filter(e => e.kind === 'file').length")
                await row_action(a, "bulk", "tree-delete")
                await row_action(a, "bulk", "tree-delete")
                await wait_js(b, "() => !window.codesync.tree().some(e => e.path.startsWith('bulk'))")
                assert "size limit" in message and size <= 2 * 1024 * 1024, (message, size)
                assert "at most 500 files" in refused and files_now == 500, (refused, files_now)
                return {"typing": message, "create": refused}

            await steps.run("limits_refused_with_a_message", limits, ("upload_checked_and_download_zip",))

            # ---------------------------------------------------------------- delete under someone
            async def delete_folder_under_editor():
                await click_row(a, "pkg/helper.py")
                await a.wait_for_selector("[data-testid=tab].active[data-path='pkg/helper.py']")
                await row_action(b, "pkg", "tree-delete")
                await row_action(b, "pkg", "tree-delete")  # confirm
                await a.wait_for_selector("[data-testid=editor-message] >> text=was deleted")
                await wait_js(a, "() => !window.codesync.tree().some(e => e.path.startsWith('pkg'))")
                tabs = await a.evaluate("() => Array.from(document.querySelectorAll('[data-testid=tab]')).map(t => t.dataset.path)")
                assert "pkg/helper.py" not in tabs, tabs
                # Rename and move still work for the others.
                await row_action(b, "util.py", "tree-rename")
                box = b.locator("[data-testid=tree-name-input]")
                await box.fill("tools.py")
                # someone else changes the tree while Bob is typing the name: his tree re-renders,
                # and what he typed (and the focus) must survive it
                await a.evaluate("() => window.codesync.ws.importFiles(window.codesync.doc, [{path: 'notes.txt', text: ''}])")
                await wait_js(b, "() => window.codesync.tree().some(e => e.path === 'notes.txt')")
                assert await box.input_value() == "tools.py"
                assert not await b.evaluate("() => window.codesync.tree().some(e => e.path === 'tools.py')"), "committed half-typed"
                await box.press("Enter")
                await b.wait_for_selector("[data-testid=tree-row][data-path='notes.txt']")  # drawn again once named
                await b.wait_for_selector("[data-testid=tree-row][data-path='tools.py']")
                await a.wait_for_selector("[data-testid=tree-row][data-path='tools.py']")
                await a.hover("[data-testid=tree-row][data-path='tools.py'] .tree-label")
                await a.select_option("[data-testid=tree-row][data-path='tools.py'] [data-testid=tree-move]", label="lib")
                await b.wait_for_selector("[data-testid=tree-row][data-path='lib/tools.py']")
                await a.screenshot(path=str(Path(cfg.get("shots", cfg["workdir"])) / "workspace.png"))
                return {"tabs": tabs}

            await steps.run("folder_deleted_under_an_editor", delete_folder_under_editor, ("upload_checked_and_download_zip",))
            await browser.close()
    except Exception as exc:  # noqa: BLE001
        steps.results["driver"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    finally:
        stack.stop()
        emit_result({"steps": steps.results, "console": state["logs"][-80:],
                     "logs": {n: p.tail(3000) for n, p in stack.procs.items()}, "time": time.time()})


if __name__ == "__main__":
    asyncio.run(main())
