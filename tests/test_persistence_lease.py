"""Room leases (peer/persistence/lease.py) on real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest

from peer.persistence.lease import DatabaseLeases, HeldLease, RedisLeases
from peer.persistence.store import DocumentStore
from tests.helpers.components import postgres_database
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["redis", "sqlite", "postgres"])
async def make_backend(request, make_settings, tmp_path):
    """A factory of lease backends (distinct owners) sharing one Redis namespace or one database."""
    made = []
    store = None
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "redis":
            yield _redis_factory(request, made)
        else:
            if request.param == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp_path / 'lease.db'}"
            else:
                url = await stack.enter_async_context(postgres_database())
            store = await DocumentStore.open(make_settings(database_url=url))

            def make():
                made.append(DatabaseLeases(store.engine))
                return made[-1]

            yield make
        for backend in made:
            await backend.close()
        if store is not None:
            await store.close()


def _redis_factory(request, made):
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")

    def make():
        made.append(RedisLeases(url, prefix))
        return made[-1]

    return make


async def test_one_owner_then_release_hands_over(make_backend):
    a, b = make_backend(), make_backend()
    assert await a.acquire("room", 5)
    assert await a.acquire("room", 5), "re-acquiring one's own lease is fine"
    assert not await b.acquire("room", 5)
    assert await a.holder("room") == a.owner
    assert not await b.renew("room", 5)
    await b.release("room")  # not b's: no effect
    assert await b.holder("room") == a.owner
    await a.release("room")
    assert await b.acquire("room", 5)
    assert not await a.renew("room", 5)
    assert await a.acquire("other-room", 5), "leases are per room"


async def test_takeover_after_the_owner_stops_renewing(make_backend):
    a, b = make_backend(), make_backend()
    assert await a.acquire("room", 0.4)
    assert not await b.acquire("room", 0.4)
    await wait_for(lambda: b.acquire("room", 5), timeout=5, what="takeover after expiry")
    assert not await a.renew("room", 5), "a dead owner must not get its lease back by renewing"


async def test_held_lease_renews_past_its_ttl(make_backend):
    a, b = make_backend(), make_backend()
    held = HeldLease(a, "room", 0.6)
    assert await held.acquire()
    deadline = time.monotonic() + 2.4
    while time.monotonic() < deadline:  # four ttls
        assert held.valid()
        assert not await b.acquire("room", 0.6)
        await asyncio.sleep(0.05)
    await held.release()
    assert not held.valid()
    assert held.may_write() is False
    assert await b.acquire("room", 0.6)


async def test_lost_lease_is_noticed(make_backend):
    a, b = make_backend(), make_backend()
    lost = asyncio.Event()
    held = HeldLease(a, "room", 0.3, on_lost=lost.set)
    assert await held.acquire()
    await a.release("room")  # behind the holder's back (as if the key expired and was taken)
    assert await b.acquire("room", 5)
    await asyncio.wait_for(lost.wait(), 2)
    assert not held.valid()


async def test_contenders_never_both_believe_they_own(make_backend):
    """Four contenders grab, hold, release or crash (stop renewing); validity windows never overlap."""
    ttl = 0.25
    intervals: list[tuple[float, float, int]] = []
    rng = random.Random(7)
    stop_at = time.monotonic() + 3.0

    async def contender(n: int) -> None:
        backend = make_backend()
        while time.monotonic() < stop_at:
            held = HeldLease(backend, "contested", ttl)
            if not await held.acquire():
                await asyncio.sleep(rng.uniform(0.005, 0.03))
                continue
            start = time.monotonic()
            last = start
            hold_for = rng.uniform(0.05, 0.6)
            while time.monotonic() - start < hold_for and held.valid():
                last = time.monotonic()
                await asyncio.sleep(0.01)
            if held.valid():
                last = time.monotonic()
            intervals.append((start, last, n))
            if rng.random() < 0.5:
                await held.release()
            else:  # crash: stop renewing, never release
                await held.abandon()
            await asyncio.sleep(rng.uniform(0.05, 0.2))  # let the others compete

    await asyncio.gather(*(contender(i) for i in range(4)))
    intervals.sort()
    assert len(intervals) >= 4, "too little contention to mean anything"
    assert len({n for _, _, n in intervals}) >= 2, "ownership never changed hands"
    for (s1, e1, n1), (s2, e2, n2) in zip(intervals, intervals[1:]):
        assert s2 > e1, f"contenders {n1} and {n2} both owned the room ({s1:.3f}-{e1:.3f} vs {s2:.3f}-{e2:.3f})"
