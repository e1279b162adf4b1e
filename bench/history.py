"""History: opening versions and seeking playback in a room with 250,000+ stored updates, the
persistence peer's memory while it serves them, and what a day of typing costs in storage.

1. **A big room.** The rustcode trace (36,981 keystroke transactions) typed ``--rounds``
   times (7: 258,867 updates) into one room through the real writer path
   (``RoomWriter``: a row per update with its attribution, bursts, compaction every
   ``CODESYNC_PERSIST_COMPACT_ROWS`` rows and snapshot thinning), each round rewriting the
   file (its first transaction deletes the previous round's text), with the trace's own
   timestamps shifted by the round.
2. **In process** (``peer.persistence.history``): ``version`` at random points and at the
   worst points (just below a kept snapshot: the most log to replay); **seek** = the newest
   seq at a random time (``seq_at``) + the version there + the first page of updates to play.
   Every opened version is checked against the trace replayed in Python.
3. **Over the data channel**: a real ``codesync signaling`` + ``codesync persist`` on the same
   database, an aiortc peer (the room's owner) asks ``version`` and seeks as the web client
   does (JSON + base64 answers, chunked); latency as the client sees it: the version view
   (``format: text``, the code as it was), the whole state the player starts from
   (``format: ydoc``), and a seek as the player does it (that version and the first page of
   the updates after it, asked at once). The
   persistence process's RSS before, at its highest while serving (sampled every 20 ms), and
   after.
4. **Storage per day of typing**: each trace written once into a fresh database; bytes of
   the database (SQLite: file size after a WAL checkpoint; PostgreSQL: relation sizes) per
   hour of *active* typing (pauses over 5 minutes do not count), per 8-hour day of it, and
   per calendar day the trace has edits on.

Usage::

    .venv/bin/python -m bench.history [--postgres] [--rounds 7] [--samples 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pycrdt  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from tests.helpers.traces import apply_txn, load_trace  # noqa: E402
from codesync.settings import Settings  # noqa: E402
from peer.persistence import history as h  # noqa: E402
from peer.persistence.attribution import Attribution  # noqa: E402
from peer.persistence.store import SNAPSHOTS, UPDATES, DocumentStore  # noqa: E402
from peer.persistence.writer import RoomWriter, WriterConfig  # noqa: E402
from peer.rights import Principal  # noqa: E402

ACTIVE_GAP_MS = 5 * 60_000


def trace_times(trace: dict) -> list[int]:
    """Epoch ms per transaction (the first one, a paste stamped 1970, takes the second's time)."""
    out = []
    for txn in trace["txns"]:
        t = txn.get("time")
        out.append(int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000) if t else 0)
    first_real = next(t for t in out if t > 86_400_000)
    return [t if t > 86_400_000 else first_real for t in out]


def active_hours(times: list[int]) -> float:
    return sum(min(b - a, ACTIVE_GAP_MS) for a, b in zip(times, times[1:]) if b - a <= ACTIVE_GAP_MS) / 3_600_000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pct(ms, 0.95), 1),
            "max_ms": round(max(ms), 1)}


# ----------------------------------------------------------------------------- the big room
async def write_trace(store: DocumentStore, room_id: str, trace: dict, rounds: int, *, compact_rows: int = 200,
                      keep_states_every: int = 0) -> tuple[list[int], dict[int, str], dict]:
    """Type the trace ``rounds`` times through a RoomWriter; returns (seqs of every update,
    {seq: text} samples, stats).

    Each round is typed in a fresh document (its own client id, like a new session) and its
    updates are handed to the room's writer; between rounds the writer's document deletes the
    previous round's text (one update), so every round rewrites the file from scratch. (Typing
    every round into the one growing document would make the *benchmark's* positional inserts
    walk all earlier rounds' tombstones — pycrdt has no search markers — which measures nothing
    about history.)
    """
    times = trace_times(trace)
    span = times[-1] - times[0] + 86_400_000
    attribution = Attribution()
    via = attribution.author_of(Principal(user_id="u" * 32, name="Typist", role="editor"))
    room_doc = pycrdt.Doc()
    writer = RoomWriter(store, room_id, room_doc, config=WriterConfig(compact_rows=compact_rows, linger=0),
                        attribution=attribution)
    await writer.load_into_doc()
    room_text = room_doc.get("source", type=pycrdt.Text)
    deletions: list[bytes] = []
    room_doc.observe(lambda e: deletions.append(e.update))
    samples: dict[int, str] = {}
    index = 0
    started = time.perf_counter()
    for r in range(rounds):
        if len(room_text):
            deletions.clear()
            with room_doc.transaction():
                del room_text[0:len(room_text)]
            writer.submit(deletions[-1], via, times[0] + r * span)
            index += 1
            if keep_states_every:
                samples[index] = ""
        doc = pycrdt.Doc()
        ytext = doc.get("source", type=pycrdt.Text)
        produced: list[bytes] = []
        doc.observe(lambda e: produced.append(e.update))
        attribution.claim(doc.client_id, via)
        current = ""
        for i, txn in enumerate(trace["txns"]):
            current = apply_txn(ytext, current, txn["patches"])
            writer.accept(produced[-1], via, times[i] + r * span)
            index += 1
            if keep_states_every and index % keep_states_every == 0:
                samples[index] = current
            if index % 2000 == 0:
                await writer.flush(120)
        print(f"round {r + 1}/{rounds}: {index} updates after {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
    await writer.flush(300)
    write_s = time.perf_counter() - started
    await writer.close()
    async with store.engine.connect() as conn:
        seqs = [int(r[0]) for r in (await conn.execute(
            select(UPDATES.c.seq).where(UPDATES.c.room_id == room_id).order_by(UPDATES.c.seq))).all()]
        snaps = (await conn.execute(select(func.count(), func.sum(func.length(SNAPSHOTS.c.data))).where(
            SNAPSHOTS.c.room_id == room_id))).one()
        log_bytes = (await conn.execute(select(func.sum(func.length(UPDATES.c.data))).where(
            UPDATES.c.room_id == room_id))).scalar()
    by_seq = {seqs[i - 1]: content for i, content in samples.items()}
    return seqs, by_seq, {"updates": len(seqs), "write_s": round(write_s, 1), "snapshots": int(snaps[0]),
                          "snapshot_bytes": int(snaps[1] or 0), "log_bytes": int(log_bytes or 0),
                          "compactions": writer.stats.compactions}


async def in_process(store: DocumentStore, room_id: str, seqs: list[int], samples: dict[int, str],
                     n: int, rng: random.Random) -> dict:
    engine = store.engine
    async with engine.connect() as conn:
        kept = sorted(int(r[0]) for r in (await conn.execute(select(SNAPSHOTS.c.upto_seq).where(
            SNAPSHOTS.c.room_id == room_id, SNAPSHOTS.c.doc == ""))).all())
    # random points; and the worst: right below each kept snapshot (the longest replay)
    random_points = rng.sample(list(samples), min(n, len(samples)))
    worst = [s - 1 for s in rng.sample(kept[1:], min(n // 2, len(kept) - 1))] if len(kept) > 1 else []
    opened, worst_ms, sizes = [], [], []
    for seq in random_points:
        t = time.perf_counter()
        version = await h.version(engine, room_id, seq)
        opened.append(1000 * (time.perf_counter() - t))
        sizes.append(len(version.docs[""]))
        doc = pycrdt.Doc()
        doc.apply_update(version.docs[""])
        assert str(doc.get("source", type=pycrdt.Text)) == samples[seq], f"version at {seq} differs from the trace"
    for seq in worst:
        t = time.perf_counter()
        await h.version(engine, room_id, seq)
        worst_ms.append(1000 * (time.perf_counter() - t))
    bounds = await h.bounds(engine, room_id)
    seeks = []
    for _ in range(n):
        at = rng.randint(bounds.first_at, bounds.last_at)
        t = time.perf_counter()
        seq = await h.seq_at(engine, room_id, at)
        await h.version(engine, room_id, seq)
        await h.updates(engine, room_id, seq, limit=500, max_bytes=512 * 1024)
        seeks.append(1000 * (time.perf_counter() - t))
    return {"version_random": summary(opened), "version_worst": summary(worst_ms) if worst_ms else None,
            "seek": summary(seeks), "version_bytes_p50": int(statistics.median(sizes)), "kept_snapshots": len(kept)}


# ----------------------------------------------------------------------------- over the data channel
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def over_the_wire(tmp: Path, database_url: str, seqs: list[int], n: int, rng: random.Random) -> dict:
    from peer import Room
    from peer.persistence.history_client import HistoryClient
    from tests.helpers.stack import seed_room, service_token
    from tests.helpers.components import free_port
    from tests.helpers.processes import child_env, start_service, start_signaling
    from tests.helpers.wait import wait_http_ok

    import secrets

    secret = secrets.token_urlsafe(48)
    env = {"CODESYNC_DATABASE_URL": database_url, "CODESYNC_SECRET_KEY": secret,
           "CODESYNC_DATA_DIR": str(tmp / "data")}
    seeded = await seed_room(database_url, secret, {"alice": "owner"})
    # the big room was written under its own id: move it to the seeded room
    store = await DocumentStore.open(Settings(database_url=database_url, data_dir=tmp / "data"))
    try:
        async with store.engine.begin() as conn:
            for table in ("document_updates", "document_snapshots", *(m.__tablename__ for m in _history_models())):
                await conn.execute(text(f"UPDATE {table} SET room_id = :new WHERE room_id = 'big'").bindparams(
                    new=seeded.id))
    finally:
        await store.close()
    signaling = await start_signaling(tmp, child_env(**env))
    ops = free_port()
    persist = start_service(["persist"], child_env(**{
        **env, "CODESYNC_SIGNALING_URL": signaling.url, "CODESYNC_ICE_HOSTS": "127.0.0.1",
        "CODESYNC_SERVICE_TOKEN": await service_token(database_url, secret, "persistence"),
        "CODESYNC_OPS_PORT": str(ops), "CODESYNC_PERSIST_IDLE_GRACE": "60",
    }), tmp / "persist.log", name="persist")
    room = None
    try:
        await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", persist)
        room = Room(signaling.url, seeded.token("alice"), seeded.id, ice_hosts="127.0.0.1")
        await room.start()
        client = HistoryClient(room)
        deadline = time.monotonic() + 120
        while client.persistence_peer() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the persistence peer did not join")
            await asyncio.sleep(0.02)
        await room.wait_synced(client.persistence_peer(), timeout=120)
        pid = persist.proc.pid
        rss_before = rss_kib(pid)
        peak = rss_before
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        await client.ask("timeline", timeout=60)
        opened, opened_ydoc, seeks, wire_bytes = [], [], [], []
        # requests paced below the per-link rate limit (5/s), as the web client's are
        for seq in rng.sample(seqs, n):
            t = time.perf_counter()
            await client.ask("version", seq=seq, format="text", timeout=60)  # the version view
            opened.append(1000 * (time.perf_counter() - t))
            await asyncio.sleep(0.25)
            t = time.perf_counter()
            answer = await client.ask("version", seq=seq, encoding="deflate", timeout=60)  # the player's start
            HistoryClient.version_doc(answer)
            opened_ydoc.append(1000 * (time.perf_counter() - t))
            wire_bytes.append(len(answer["docs"]["main"]) * 3 // 4)
            await asyncio.sleep(0.25)
        for seq in rng.sample(seqs, n):  # as the player seeks: version and first page at once
            t = time.perf_counter()
            version, _ = await asyncio.gather(client.ask("version", seq=seq, encoding="deflate", timeout=60),
                                              client.ask("updates", after=seq, limit=500, timeout=60))
            HistoryClient.version_doc(version)
            seeks.append(1000 * (time.perf_counter() - t))
            await asyncio.sleep(0.5)
        # many members at once: 4 version requests in flight (2 per link is the limit, so
        # some are refused "busy" — counted, as a client would retry them)
        busy = 0
        for _ in range(5):
            replies = await asyncio.gather(*(client.request("version", seq=rng.choice(seqs), timeout=60)
                                             for _ in range(4)))
            busy += sum(1 for r in replies if not r["ok"] and r["error"]["code"] == "busy")
            await asyncio.sleep(1.0)
        sampling = False
        await sampler
        rss_after = rss_kib(pid)
        return {"version_text": summary(opened), "version_ydoc": summary(opened_ydoc), "ydoc_deflated_bytes_p50": int(statistics.median(wire_bytes)),
                "seek": summary(seeks), "rss_kib_before": rss_before,
                "rss_kib_peak": peak, "rss_kib_after": rss_after, "busy_refusals_in_bursts": busy}
    finally:
        if room is not None:
            await room.stop()
        persist.stop()
        signaling.stop()


def _history_models():
    from codesync.models import HISTORY_TABLES

    return HISTORY_TABLES


# ----------------------------------------------------------------------------- storage per day
async def storage_per_day(tmp: Path, name: str, postgres: bool) -> dict:
    trace = load_trace(name)
    times = trace_times(trace)
    hours = active_hours(times)
    days = len({datetime.utcfromtimestamp(t / 1000).date() for t in times})
    if postgres:
        from tests.helpers.components import postgres_database

        async with postgres_database() as url:
            store = await DocumentStore.open(Settings(database_url=url, data_dir=tmp / "data"))
            try:
                before = await _pg_bytes(store)
                _, _, stats = await write_trace(store, "day", trace, 1)
                used = await _pg_bytes(store) - before
            finally:
                await store.close()
    else:
        path = tmp / f"{name}.db"
        store = await DocumentStore.open(Settings(database_url=f"sqlite+aiosqlite:///{path}", data_dir=tmp / "data"))
        try:
            before = await _sqlite_bytes(store, path)
            _, _, stats = await write_trace(store, "day", trace, 1)
            used = await _sqlite_bytes(store, path) - before
        finally:
            await store.close()
    return {"trace": name, "updates": stats["updates"], "active_hours": round(hours, 2), "days_with_edits": days,
            "db_bytes": used, "log_bytes": stats["log_bytes"], "snapshot_bytes": stats["snapshot_bytes"],
            "bytes_per_update": round(used / stats["updates"], 1),
            "mb_per_active_hour": round(used / hours / 1e6, 2), "mb_per_8h_day": round(8 * used / hours / 1e6, 1),
            "mb_per_calendar_day": round(used / days / 1e6, 2)}


async def _sqlite_bytes(store: DocumentStore, path: Path) -> int:
    async with store.engine.begin() as conn:
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    return path.stat().st_size


async def _pg_bytes(store: DocumentStore) -> int:
    tables = ["document_updates", "document_snapshots", *(m.__tablename__ for m in _history_models())]
    async with store.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        total = 0
        for t in tables:
            total += int((await conn.execute(text(f"SELECT pg_total_relation_size('{t}')"))).scalar())
    return total


# ----------------------------------------------------------------------------- main
async def run(args) -> dict:
    rng = random.Random(11)
    trace = load_trace("rustcode")
    out: dict = {"db": "postgres" if args.postgres else "sqlite"}
    with tempfile.TemporaryDirectory(prefix="cs-bench-history-") as tmpdir:
        tmp = Path(tmpdir)

        async def big(url: str) -> None:
            store = await DocumentStore.open(Settings(database_url=url, data_dir=tmp / "data"))
            try:
                seqs, samples, stats = await write_trace(store, "big", trace, args.rounds, keep_states_every=997)
                out["room"] = stats
                print(f"room written: {stats}", file=sys.stderr, flush=True)
                out["in_process"] = await in_process(store, "big", seqs, samples, args.samples, rng)
                print(f"in process: {out['in_process']}", file=sys.stderr, flush=True)
            finally:
                await store.close()
            out["data_channel"] = await over_the_wire(tmp, url, seqs, args.samples, rng)
            print(f"data channel: {out['data_channel']}", file=sys.stderr, flush=True)

        if args.postgres:
            from tests.helpers.components import postgres_database

            async with postgres_database() as url:
                await big(url.replace("postgresql://", "postgresql+asyncpg://"))
        else:
            await big(f"sqlite+aiosqlite:///{tmp / 'big.db'}")
        if not args.skip_storage:
            out["storage"] = [await storage_per_day(tmp, name, args.postgres) for name in ("rustcode", "sveltecomponent")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database instead of SQLite")
    ap.add_argument("--rounds", type=int, default=7, help="times the rustcode trace is typed (7: 258,867 updates)")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--skip-storage", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
