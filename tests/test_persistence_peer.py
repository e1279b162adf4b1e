"""The persistence peer end to end: real ``codesync signaling`` and ``codesync persist``
processes, aiortc peers on loopback, SQLite and PostgreSQL, real Redis for the lease."""

from __future__ import annotations

import asyncio
import signal
from typing import AsyncIterator

import httpx
import pycrdt
import pytest

from tests.helpers.traces import load_trace, replay, trace_path
from peer import Room
from peer.persistence.store import DocumentStore
from codesync.settings import Settings
from tests.helpers.stack import joined, signaling_stack
from tests.helpers.components import free_port, postgres_database, require
from tests.helpers.processes import child_env, start_service
from tests.helpers.wait import wait_for, wait_http_ok
from tests.helpers.persistence import persist_stack, persistence_peers, saved_covers, source, stored_text

pytestmark = pytest.mark.timeout(180)

TRACE = "rustcode"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request, tmp_path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'codesync.db'}"
    else:
        async with postgres_database() as url:
            yield url.replace("postgresql://", "postgresql+asyncpg://")


# ----------------------------------------------------------------------------- tests
async def test_late_joiner_gets_the_document_from_the_persistence_peer_alone(tmp_path, db_url):
    async with persist_stack(tmp_path, db_url) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        svc = persisters.start()
        async with joined(stack, seeded, "alice") as (alice,):
            await wait_for(lambda: persistence_peers(alice), 45, what="persistence peer joins")
            for i in range(200):
                source(alice).insert(len(source(alice)), f"print({i})\n")
                if i % 10 == 0:
                    await asyncio.sleep(0.005)
            expected = str(source(alice))
            await wait_for(lambda: saved_covers(alice), 15, what="'saved' covering alice's edits")
        # alice is gone and the persistence peer left the idle room: the document is only in SQL
        await wait_for(lambda: f"room {seeded.id}: left" in svc.log(), 15, what="persistence leaves the idle room")
        async with joined(stack, seeded, "bob") as (bob,):
            await wait_for(lambda: persistence_peers(bob), 45, what="persistence peer rejoins")
            await bob.wait_synced(persistence_peers(bob)[0], timeout=20)
            # its SyncStep2 was held until the stored document was loaded: complete at once
            assert str(source(bob)) == expected
        assert await stored_text(db_url, seeded.id, tmp_path) == expected


async def test_kill_9_mid_stream_then_restart_loses_nothing(tmp_path, db_url):
    async with persist_stack(tmp_path, db_url) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor", "carol": "editor"})
        first = persisters.start()
        async with joined(stack, seeded, "alice", "bob") as (alice, bob):
            await wait_for(lambda: persistence_peers(alice) and persistence_peers(bob), 45, what="persistence joins")
            stop_typing = asyncio.Event()

            async def typist(room: Room, tag: str) -> None:
                i = 0
                while not stop_typing.is_set():
                    source(room).insert(0 if tag == "a" else len(source(room)), f"{tag}{i};")
                    i += 1
                    await asyncio.sleep(0.002)

            typing = [asyncio.create_task(typist(alice, "a")), asyncio.create_task(typist(bob, "b"))]
            await wait_for(lambda: len(str(source(alice))) > 3000, 20, what="a stream of edits")
            first.kill(signal.SIGKILL)
            await wait_for(lambda: len(str(source(alice))) > 6000, 20, what="edits while no persistence peer runs")
            persisters.start()  # the restart
            await wait_for(lambda: len(str(source(alice))) > 9000, 20, what="edits after the restart")
            stop_typing.set()
            await asyncio.gather(*typing)
            await wait_for(lambda: str(source(alice)) == str(source(bob)), 20, what="alice and bob converge")
            await wait_for(lambda: saved_covers(alice) and saved_covers(bob), 30, what="restarted peer saved all")
            expected = str(source(alice))
        assert await stored_text(db_url, seeded.id, tmp_path) == expected
        async with joined(stack, seeded, "carol") as (carol,):
            await wait_for(lambda: str(source(carol)) == expected, 20, what="carol gets everything from storage")


@pytest.mark.timeout(240)
async def test_trace_replay_is_stored_and_survives_a_restart(tmp_path):
    require("the editing traces", trace_path(TRACE).exists(), f"{trace_path(TRACE)} (tests/data/traces in the repository)")
    trace = load_trace(TRACE)
    async with persist_stack(tmp_path) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor", "carol": "editor"})
        first = persisters.start(CODESYNC_PERSIST_COMPACT_ROWS="200")
        async with joined(stack, seeded, "alice", "bob") as (alice, bob):
            await wait_for(lambda: persistence_peers(alice) and persistence_peers(bob), 45, what="persistence joins")
            current = ""
            for n, current in enumerate(replay(source(alice), trace)):
                if n % 50 == 0:
                    await asyncio.sleep(0)
            assert current == trace["endContent"]
            await wait_for(lambda: str(source(bob)) == trace["endContent"], 60, what="bob converges")
            await wait_for(lambda: saved_covers(alice), 60, what="persistence stored the whole trace")
        first.stop()  # SIGTERM: flush, compact, leave
        assert first.proc.wait(30) == 0, first.log()[-3000:]
        assert await stored_text(stack.database_url, seeded.id, tmp_path) == trace["endContent"]
        persisters.start()
        async with joined(stack, seeded, "carol") as (carol,):
            await wait_for(lambda: str(source(carol)) == trace["endContent"], 30, what="carol loads the trace's end")


@pytest.mark.parametrize("lease", ["redis", "database"])
async def test_two_persistence_peers_share_a_room_one_at_a_time(tmp_path, request, lease):
    env = {"CODESYNC_PERSIST_LEASE_TTL": "3"}
    if lease == "redis":
        env |= {"CODESYNC_REDIS_URL": request.getfixturevalue("redis_url"),
                "CODESYNC_REDIS_PREFIX": request.getfixturevalue("redis_prefix")}
    async with persist_stack(tmp_path, **env) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        one, two = persisters.start(), persisters.start()
        async with joined(stack, seeded, "alice") as (alice,):
            await wait_for(lambda: persistence_peers(alice), 45, what="a persistence peer joins")
            # Several lease periods (ttl 2 s): the other one keeps trying and never joins.
            seen_max = 0
            for i in range(40):
                seen_max = max(seen_max, len(persistence_peers(alice)))
                source(alice).insert(len(source(alice)), f"x{i}\n")
                await asyncio.sleep(0.1)
            assert seen_max == 1, "both persistence peers joined the room"
            owners = [s for s in (one, two) if f"room {seeded.id}: owner" in s.log()]
            assert len(owners) == 1, "exactly one process became owner"
            owner, other = owners[0], (two if owners[0] is one else one)
            await wait_for(lambda: saved_covers(alice), 15, what="saved")
            owner.kill(signal.SIGKILL)
            for i in range(20):
                source(alice).insert(len(source(alice)), f"y{i}\n")
            expected = str(source(alice))
            await wait_for(lambda: f"room {seeded.id}: owner" in other.log(), 20, what="takeover after the lease expired")
            await wait_for(lambda: saved_covers(alice), 20, what="the new owner saved everything")
        assert await stored_text(stack.database_url, seeded.id, tmp_path) == expected


async def test_malformed_frames_do_not_hurt_the_stored_document(tmp_path):
    async with persist_stack(tmp_path) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        svc = persisters.start()
        async with joined(stack, seeded, "alice") as (alice,):
            await wait_for(lambda: persistence_peers(alice), 45, what="persistence joins")
            source(alice).insert(0, "before\n")
            await wait_for(lambda: saved_covers(alice), 15, what="saved")
            link = alice.links[persistence_peers(alice)[0]]
            junk = [
                b"",
                b"\x00",  # sync without a sync type
                b"\x00\x02",  # Update without payload
                b"\x00\x02\x05abc",  # truncated payload
                b"\x00\x02\x04\xff\xff\xff\xff",  # an update pycrdt rejects
                b"\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # absurd length
                b"\x01\x03\x01\x02\x03",  # awareness garbage
                b"\x4d\x01\x02",  # unknown message type
                b"\x64\x00\x05\x00\x01x",  # a chunk that never completes
                bytes(range(256)) * 4,
            ]
            for frame in junk:
                link.conn.send(frame)
            source(alice).insert(len(source(alice)), "after\n")
            await wait_for(lambda: saved_covers(alice), 15, what="saving carries on")
            assert svc.proc.poll() is None, svc.log()[-3000:]
        assert await stored_text(stack.database_url, seeded.id, tmp_path) == "before\nafter\n"
        async with joined(stack, seeded, "bob") as (bob,):
            await wait_for(lambda: str(source(bob)) == "before\nafter\n", 20, what="bob loads it")


async def test_idle_room_is_left_and_sigterm_flushes(tmp_path):
    async with persist_stack(tmp_path) as (stack, persisters):
        seeded = await stack.seed_room({"alice": "owner"})
        ops_port = free_port()
        svc = persisters.start(CODESYNC_OPS_PORT=str(ops_port))
        await wait_http_ok(f"http://127.0.0.1:{ops_port}/healthz", svc)
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"http://127.0.0.1:{ops_port}/healthz")).json()
        assert health["checks"] == {"database": "ok", "signaling": "ok"}
        async with joined(stack, seeded, "alice") as (alice,):
            await wait_for(lambda: persistence_peers(alice), 45, what="persistence joins")
            source(alice).insert(0, "hello")
            await wait_for(lambda: saved_covers(alice), 15, what="saved")
        # room-idle, then the 1 s grace: the peer leaves (and says so in its log)
        await wait_for(lambda: f"room {seeded.id}: left" in svc.log(), 15, what="leaving an idle room")
        async with joined(stack, seeded, "alice") as (alice,):
            await wait_for(lambda: persistence_peers(alice), 45, what="persistence rejoins")
            await wait_for(lambda: str(source(alice)) == "hello", 20, what="the stored document comes back")
            source(alice).insert(5, " world")
            await wait_for(lambda: saved_covers(alice), 15, what="saved")
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{ops_port}/metrics")).text
            assert "codesync_persist_updates_stored_total" in metrics
            svc.stop()
            assert svc.proc.wait(20) == 0
        assert await stored_text(stack.database_url, seeded.id, tmp_path) == "hello world"


def test_persist_without_configuration_fails_clearly(tmp_path):
    svc = start_service(["persist"], child_env(CODESYNC_DATA_DIR=str(tmp_path)), tmp_path / "p.log")
    assert svc.proc.wait(30) == 2
    assert "CODESYNC_SIGNALING_URL" in svc.log() and "Traceback" not in svc.log()


class SlowLoadStore(DocumentStore):
    """The real store, with loading slowed down: makes the SyncStep1 hold observable."""

    delay = 1.5

    async def load(self, room_id: str, doc: str = ""):
        await asyncio.sleep(self.delay)
        return await super().load(room_id, doc)


async def test_sync_step1_is_answered_only_after_the_stored_document_is_loaded(tmp_path):
    from peer.persistence.service import PersistenceService

    async with signaling_stack(tmp_path) as stack:
        seeded = await stack.seed_room({"alice": "owner"})
        settings = Settings(
            database_url=stack.database_url, data_dir=tmp_path / "data", ice_hosts="127.0.0.1",
            signaling_url=stack.url, service_token=await stack.service_token("persistence"),
        )
        store = await SlowLoadStore.open(settings)
        writer_doc = pycrdt.Doc()
        updates: list[bytes] = []
        writer_doc.observe(lambda e: updates.append(e.update))
        writer_doc.get("source", type=pycrdt.Text).insert(0, "stored before anyone came")
        await store.append(seeded.id, updates)
        service = PersistenceService(settings, store=store)
        await service.start()
        try:
            async with joined(stack, seeded, "alice") as (alice,):
                await wait_for(lambda: persistence_peers(alice), 45, what="persistence joins (while loading)")
                pid = persistence_peers(alice)[0]
                await alice.wait_synced(pid, timeout=20)
                assert str(source(alice)) == "stored before anyone came", "answered SyncStep1 before loading"
                await wait_for(lambda: saved_covers(alice), 15, what="saved")
        finally:
            await service.stop()
