"""One owner per room among several persistence peers: a renewable, expiring lease.

Why: two persistence peers writing one room would not corrupt it (Yjs updates commute and
the store tolerates duplicates), but they would double the writes, race compactions and
publish two "saved" states. So a room is persisted by whoever holds its lease; the others
wait and take over when the owner stops renewing (crash, partition, shutdown).

Backends:
- Redis (``settings.redis_url`` set): ``SET key owner NX PX ttl`` (re-acquiring one's own key
  extends it); renew and release are compare-and-act Lua scripts, so only the owner can
  extend or drop its key.
- The database otherwise (``room_leases``): a conditional UPDATE (take over only when the
  row expired) or an INSERT racing on the primary key.

Safety margin: the holder believes in its lease only until ``start_of_acquire + 0.8 * ttl``
(monotonic clock), strictly before the key can expire anywhere, and the writer checks that
belief before every commit. A renewal that fails (lost or unreachable backend) ends the
lease; the service then leaves the room and competes for it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from codesync.models import RoomLease, utcnow
from codesync.backends import Backends, shared_or
from codesync.settings import Settings

log = logging.getLogger("codesync.persistence.lease")

LEASES = RoomLease.__table__
VALIDITY = 0.8  # fraction of the ttl the holder trusts its lease for


def new_owner_id() -> str:
    """Unique per process start (room_leases.owner is at most 64 characters)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseBackend(Protocol):
    owner: str

    async def acquire(self, room_id: str, ttl: float) -> bool: ...
    async def renew(self, room_id: str, ttl: float) -> bool: ...
    async def release(self, room_id: str) -> None: ...
    async def holder(self, room_id: str) -> str | None: ...
    async def close(self) -> None: ...


_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeases:
    def __init__(self, redis_url: str, prefix: str, owner: str | None = None) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(redis_url)
        self.prefix = prefix
        self.owner = owner or new_owner_id()
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    def key(self, room_id: str) -> str:
        return f"{self.prefix}:persist:lease:{room_id}"

    async def acquire(self, room_id: str, ttl: float) -> bool:
        return bool(await self._acquire(keys=[self.key(room_id)], args=[self.owner, int(ttl * 1000)]))

    async def renew(self, room_id: str, ttl: float) -> bool:
        return bool(await self._renew(keys=[self.key(room_id)], args=[self.owner, int(ttl * 1000)]))

    async def release(self, room_id: str) -> None:
        await self._release(keys=[self.key(room_id)], args=[self.owner])

    async def holder(self, room_id: str) -> str | None:
        value = await self.redis.get(self.key(room_id))
        return value.decode() if isinstance(value, bytes) else value

    async def close(self) -> None:
        await self.redis.aclose()


class DatabaseLeases:
    """Leases as rows; expiry compares wall clocks (keep the persistence hosts NTP-synced)."""

    def __init__(self, engine: AsyncEngine, owner: str | None = None) -> None:
        self.engine = engine
        self.owner = owner or new_owner_id()

    async def acquire(self, room_id: str, ttl: float) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=ttl)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(LEASES)
                .where(LEASES.c.room_id == room_id, (LEASES.c.owner == self.owner) | (LEASES.c.expires_at < now))
                .values(owner=self.owner, expires_at=expires)
            )
            if result.rowcount == 1:
                return True
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(LEASES).values(room_id=room_id, owner=self.owner, expires_at=expires))
            return True
        except IntegrityError:
            return False

    async def renew(self, room_id: str, ttl: float) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(LEASES)
                .where(LEASES.c.room_id == room_id, LEASES.c.owner == self.owner)
                .values(expires_at=utcnow() + timedelta(seconds=ttl))
            )
            return result.rowcount == 1

    async def release(self, room_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(LEASES).where(LEASES.c.room_id == room_id, LEASES.c.owner == self.owner))

    async def holder(self, room_id: str) -> str | None:
        from sqlalchemy import select

        async with self.engine.connect() as conn:
            row = (await conn.execute(select(LEASES.c.owner, LEASES.c.expires_at).where(LEASES.c.room_id == room_id))).first()
        if row is None or row.expires_at < utcnow():
            return None
        return row.owner

    async def close(self) -> None:
        pass


# Leases live in Redis when it is configured, else in the database (codesync/backends.py).
LEASE_BACKENDS: Backends[LeaseBackend] = Backends("lease", shared_or("database"))


@LEASE_BACKENDS.register("redis")
def _redis_leases(settings: Settings, engine: AsyncEngine, owner: str | None = None) -> LeaseBackend:
    return RedisLeases(settings.redis_url or "", settings.redis_prefix, owner)


@LEASE_BACKENDS.register("database")
def _database_leases(settings: Settings, engine: AsyncEngine, owner: str | None = None) -> LeaseBackend:
    return DatabaseLeases(engine, owner)


def lease_backend(settings: Settings, engine: AsyncEngine, owner: str | None = None) -> LeaseBackend:
    return LEASE_BACKENDS.create(settings, engine, owner)


class HeldLease:
    """A lease on one room held by this process, renewed in the background."""

    def __init__(self, backend: LeaseBackend, room_id: str, ttl: float, on_lost: Callable[[], None] | None = None):
        self.backend = backend
        self.room_id = room_id
        self.ttl = ttl
        self._on_lost = on_lost
        self._valid_until = 0.0
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.lost = False

    def valid(self) -> bool:
        return not self.lost and time.monotonic() < self._valid_until

    def may_write(self) -> bool | None:
        """True: write now. None: not sure (a renewal is late) — wait. False: lost for good."""
        if self.valid():
            return True
        return False if self.lost else None

    async def acquire(self) -> bool:
        started = time.monotonic()
        try:
            ok = await self.backend.acquire(self.room_id, self.ttl)
        except Exception as exc:  # noqa: BLE001 - backend unreachable: simply not ours
            log.warning("room %s: lease acquire failed: %s", self.room_id, exc)
            return False
        if ok:
            self.lost = False
            self._valid_until = started + VALIDITY * self.ttl
            self._task = asyncio.create_task(self._renew_loop(), name=f"lease:{self.room_id}")
        return ok

    async def _renew_loop(self) -> None:
        # Never cancelled in the middle of a backend call (a cancelled DB call can wedge a
        # pooled connection): stopping sets an event the loop waits on between renewals.
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.ttl / 3)
                return
            except asyncio.TimeoutError:
                pass
            started = time.monotonic()
            try:
                ok = await self.backend.renew(self.room_id, self.ttl)
            except Exception as exc:  # noqa: BLE001
                log.warning("room %s: lease renewal failed: %s", self.room_id, exc)
                ok = None
            if ok:
                self._valid_until = started + VALIDITY * self.ttl
            elif ok is False or not self.valid():
                self._lose()
                return

    def _lose(self) -> None:
        if self.lost:
            return
        self.lost = True
        log.warning("room %s: lease lost", self.room_id)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:  # noqa: BLE001
                log.exception("room %s: on_lost callback failed", self.room_id)

    async def abandon(self) -> None:
        """Stop renewing without releasing (what a crash looks like to the others)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.lost = True

    async def release(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        was_ours = not self.lost
        self.lost = True
        if was_ours:
            try:
                await self.backend.release(self.room_id)
            except Exception as exc:  # noqa: BLE001 - it expires on its own
                log.warning("room %s: lease release failed: %s", self.room_id, exc)
