"""Persistence write throughput: how many Yjs updates per second reach SQL, SQLite and PostgreSQL.

Three numbers per database:

- ``one-per-txn``: ``DocumentStore.append`` with one update per transaction (what a naive
  writer does; the floor group commit has to beat);
- ``group commit``: the rustcode trace's 36,981 per-keystroke updates submitted to a
  ``RoomWriter`` as fast as a peer could hand them over (the loop yields every 50), until
  the last one is durable — updates/s, transactions, compactions, commit latency p50/p99;
- ``load``: reading the stored document back (snapshot + log) and applying it.

Usage::

    .venv/bin/python -m bench.persistence_write [--quick] [--json out.json]

PostgreSQL: a throwaway database on ``CODESYNC_TEST_PG`` (default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402

from tests.helpers.traces import load_trace, trace_updates  # noqa: E402
from peer.persistence.store import DocumentStore  # noqa: E402
from peer.persistence.writer import RoomWriter, WriterConfig  # noqa: E402
from codesync.settings import Settings  # noqa: E402

TRACE = "rustcode"
PG_ADMIN_URL = os.environ.get("CODESYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def bench_db(name: str, url: str, updates: list[bytes], expected: str, single: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    store = await DocumentStore.open(Settings(database_url=url, data_dir=tmp))
    try:
        # 1. one update per transaction
        t0 = time.perf_counter()
        for u in updates[:single]:
            await store.append("single", [u])
        single_rate = single / (time.perf_counter() - t0)

        # 2. group commit through the writer
        doc = pycrdt.Doc()
        writer = RoomWriter(store, "group", doc, config=WriterConfig())
        await writer.load_into_doc()
        t0 = time.perf_counter()
        for i, u in enumerate(updates):
            writer.accept(u)
            if i % 50 == 0:
                await asyncio.sleep(0)
        assert await writer.flush(600)
        elapsed = time.perf_counter() - t0
        await writer.close()
        commits = sorted(writer.stats.commit_seconds)

        # 3. load
        t0 = time.perf_counter()
        stored = await store.load("group")
        loaded = pycrdt.Doc()
        loaded.apply_update(stored.update)
        load_s = time.perf_counter() - t0
        assert str(loaded.get("source", type=pycrdt.Text)) == expected
        return {
            "db": name,
            "one_per_txn_updates_per_s": round(single_rate),
            "group_updates": len(updates),
            "group_seconds": round(elapsed, 3),
            "group_updates_per_s": round(len(updates) / elapsed),
            "transactions": writer.state.commits,
            "updates_per_transaction": round(len(updates) / max(1, writer.state.commits), 1),
            "compactions": writer.stats.compactions,
            "commit_ms_p50": round(1000 * statistics.median(commits), 2),
            "commit_ms_p99": round(1000 * commits[int(0.99 * (len(commits) - 1))], 2),
            "stored_bytes": len(stored.update),
            "load_ms": round(1000 * load_s, 1),
        }
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 5,000 trace transactions only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    updates, expected = trace_updates(load_trace(TRACE), 5000 if args.quick else None)
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    results.append(await bench_db("sqlite", f"sqlite+aiosqlite:///{tmp / 'bench.db'}", updates, expected, 500))
    try:
        import psycopg

        dbname = f"codesync_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        try:
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"
            results.append(await bench_db("postgres", url, updates, expected, 500))
        finally:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    except Exception as exc:  # noqa: BLE001 - report, keep the SQLite numbers
        print(f"postgres skipped: {exc}", file=sys.stderr)
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
