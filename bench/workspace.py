"""Workspace benchmarks: a 200-file, 5 MB project in one room (docs/workspace.md).

- ``peer join``: an aiortc peer joins a room where another peer holds the project — from
  ``Room.start()`` to holding every file with every byte (join-to-synced); then the same with
  only the persistence peer left in the room (served from SQL).
- ``store``: the persistence peer's ``DocumentStore`` with the project in its log (one row per
  file, as files are made one by one, plus 2,000 small edit rows): load (snapshot + log ->
  one update), compaction (replay into a Doc, one snapshot row), load after compaction.
- ``browser`` (headless Chromium in a private network namespace, tests/browser/workspace_bench_driver.py):
  a fresh page opening the room (goto -> every file in its document), and the console's stdin
  round trip: Enter in one browser's console -> the echoed input and the program's answer in
  the other browser's document.

Usage::

    .venv/bin/python -m bench.workspace [--files 200] [--mb 5] [--repeat 3] [--skip-browser] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402

from peer import Room  # noqa: E402
from peer import workspace as ws  # noqa: E402
from peer.persistence.store import DocumentStore  # noqa: E402
from codesync.settings import Settings  # noqa: E402
from tests.helpers.components import postgres_database, port_open  # noqa: E402
from tests.helpers.persistence import persist_stack, saved_covers  # noqa: E402


def make_project(files: int = 200, total_bytes: int = 5 * 1024 * 1024) -> dict[str, str]:
    """``path -> content``: code-like lines in 10 folders, ``files`` files, ``total_bytes`` in all."""
    per = total_bytes // files
    out: dict[str, str] = {}
    for i in range(files):
        lines, size, n = [], 0, 0
        while size < per:
            line = f"def function_{i}_{n}(value):  # file {i}, line {n}\n    return value * {n} + {i}\n"
            lines.append(line)
            size += len(line)
            n += 1
        out[f"pkg{i % 10}/module_{i:03d}.py"] = "".join(lines)[:per]
    return out


def build(doc: pycrdt.Doc, project: dict[str, str]) -> list[bytes]:
    """Put ``project`` into ``doc``'s tree, one transaction per file; returns the updates it made."""
    updates: list[bytes] = []
    sub = doc.observe(lambda e: updates.append(e.update))
    try:
        ws.ensure_first_file(doc, "python")
        folders: dict[str, str] = {}
        for path in project:
            folder = path.split("/")[0]
            if folder not in folders:
                folders[folder] = ws.create(doc, "folder", folder)
        for path, content in project.items():
            folder, name = path.split("/")
            ws.create(doc, "file", name, parent=folders[folder], content=content)
    finally:
        doc.unobserve(sub)
    return updates


def holds(doc: pycrdt.Doc, project: dict[str, str]) -> bool:
    entries = [e for e in ws.tree(doc).values() if e.kind == "file" and e.path in project]
    if len(entries) < len(project):
        return False
    return all(len(ws.file_text(doc, e)) == len(project[e.path].encode()) for e in entries)


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("not synced in time")
        await asyncio.sleep(0.01)


async def peer_join(project: dict[str, str], repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="codesync-ws-bench-") as tmp:
        async with persist_stack(Path(tmp), CODESYNC_PERSIST_IDLE_GRACE="600") as (stack, persisters):
            seeded = await stack.seed_room({"ann": "owner", **{f"u{i}": "editor" for i in range(repeat * 2)}})
            persisters.start()
            ann = Room(stack.url, seeded.token("ann"), seeded.id, ice_hosts="127.0.0.1")
            await ann.start()
            t0 = time.monotonic()
            build(ann.doc, project)
            build_s = time.monotonic() - t0
            update_bytes = len(ann.doc.get_update())
            await until(lambda: saved_covers(ann), 120)
            saved_s = time.monotonic() - t0
            from_peer, from_store = [], []
            label = iter(seeded.users)
            next(label)  # ann
            for i in range(repeat):
                joiner = Room(stack.url, seeded.token(next(label)), seeded.id, ice_hosts="127.0.0.1")
                t = time.monotonic()
                await joiner.start()
                await until(lambda j=joiner: holds(j.doc, project), 120)
                from_peer.append(time.monotonic() - t)
                await joiner.stop()
            await ann.stop()  # only the persistence peer holds the project now
            for i in range(repeat):
                joiner = Room(stack.url, seeded.token(next(label)), seeded.id, ice_hosts="127.0.0.1")
                t = time.monotonic()
                await joiner.start()
                await until(lambda j=joiner: holds(j.doc, project), 120)
                from_store.append(time.monotonic() - t)
                await joiner.stop()
    return {"build_s": round(build_s, 2), "update_mb": round(update_bytes / 2**20, 2), "saved_s": round(saved_s, 2),
            "join_from_peer_s": [round(x, 2) for x in from_peer], "join_from_persistence_s": [round(x, 2) for x in from_store],
            "join_from_peer_median_s": round(statistics.median(from_peer), 2),
            "join_from_persistence_median_s": round(statistics.median(from_store), 2)}


async def store_times(project: dict[str, str], database_url: str, tmp: Path, repeat: int) -> dict:
    doc = pycrdt.Doc()
    rows = []
    # One row per file as people make them, then typing: 2,000 one-character edits across files.
    updates = build(doc, project)
    rows.extend(updates)
    entries = [e for e in ws.tree(doc).values() if e.kind == "file"]
    sub = doc.observe(lambda e: rows.append(e.update))
    for n in range(2000):
        text = doc.get(entries[n % len(entries)].text, type=pycrdt.Text)
        text.insert(n % 50, "x")
    doc.unobserve(sub)
    store = await DocumentStore.open(Settings(database_url=database_url, data_dir=tmp / "data"))
    loads, compactions, loads_after = [], [], []
    try:
        for i in range(repeat):
            room = f"bench{i}"
            for start in range(0, len(rows), 500):
                await store.append(room, rows[start:start + 500])
            t = time.monotonic()
            loaded = await store.load(room)
            check = pycrdt.Doc()
            check.apply_update(loaded.update)
            loads.append(time.monotonic() - t)
            assert sum(1 for e in ws.tree(check).values() if e.path in project) == len(project), "the stored project is incomplete"
            t = time.monotonic()
            await store.compact(room)
            compactions.append(time.monotonic() - t)
            t = time.monotonic()
            after = await store.load(room)
            pycrdt.Doc().apply_update(after.update)
            loads_after.append(time.monotonic() - t)
            snapshot_mb = len(after.update) / 2**20
            await store.delete_room(room)
    finally:
        await store.close()
    return {"rows": len(rows), "load_s": round(statistics.median(loads), 3), "compact_s": round(statistics.median(compactions), 3),
            "load_after_compact_s": round(statistics.median(loads_after), 3), "snapshot_mb": round(snapshot_mb, 2)}


def browser(files: int, mb: float, rounds: int) -> dict:
    from tests.helpers.netns import browser_stack_available, run_driver

    ok, why = browser_stack_available()
    if not ok:
        return {"skipped": why}
    with tempfile.TemporaryDirectory(prefix="codesync-ws-browser-") as tmp:
        res = run_driver("workspace_bench_driver.py", {"workdir": tmp, "files": files, "mb": mb, "rounds": rounds},
                         Path(tmp) / "driver.log", timeout=600)
    if "error" in res:
        raise RuntimeError(f"{res['error']}\n{res.get('trace', '')}\n{res.get('logs', '')}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--mb", type=float, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20, help="stdin round trips in the browser")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    project = make_project(args.files, int(args.mb * 2**20))
    out: dict = {"files": args.files, "mb": args.mb}
    out["peer"] = asyncio.run(peer_join(project, args.repeat))
    print(f"peer join ({args.files} files, {args.mb} MB; update {out['peer']['update_mb']} MB): from a peer "
          f"{out['peer']['join_from_peer_median_s']} s, from the persistence peer {out['peer']['join_from_persistence_median_s']} s "
          f"(runs {out['peer']['join_from_peer_s']} / {out['peer']['join_from_persistence_s']}); "
          f"stored {out['peer']['saved_s']} s after building it", flush=True)

    async def stores() -> dict:
        res = {}
        with tempfile.TemporaryDirectory(prefix="codesync-ws-store-") as tmp:
            res["sqlite"] = await store_times(project, f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp), args.repeat)
            if port_open("127.0.0.1", 5432):
                async with postgres_database() as url:
                    res["postgresql"] = await store_times(project, url.replace("postgresql://", "postgresql+asyncpg://"), Path(tmp), args.repeat)
        return res

    out["store"] = asyncio.run(stores())
    for name, r in out["store"].items():
        print(f"store {name}: {r['rows']} log rows: load {r['load_s']} s, compaction {r['compact_s']} s, "
              f"load after compaction {r['load_after_compact_s']} s (snapshot {r['snapshot_mb']} MB)", flush=True)
    if not args.skip_browser:
        out["browser"] = browser(args.files, args.mb, args.rounds)
        b = out["browser"]
        if "skipped" in b:
            print(f"browser: skipped ({b['skipped']})")
        else:
            print(f"browser: a fresh page opening the room has every file after {b['join_s']} s (median of {len(b['joins_s'])}: "
                  f"{b['joins_s']}); stdin round trip (Enter in one browser -> echo / program's answer in the other): "
                  f"p50 {b['echo_p50_ms']} / {b['answer_p50_ms']} ms, p99 {b['echo_p99_ms']} / {b['answer_p99_ms']} ms over {b['rounds']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
