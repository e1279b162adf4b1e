"""Fixed-window rate limits, in process memory or shared through Redis.

Login throttling needs a count that every signaling node sees, otherwise an attacker spreads
guesses over the nodes; with ``CODESYNC_REDIS_URL`` set the counters live in Redis (one
``INCR`` + ``PEXPIRE`` script, atomic across nodes), without it in a bounded dict. If Redis
fails mid-flight the limiter falls back to its local counters rather than locking everyone
out or letting every guess through.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

from .settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from redis.asyncio import Redis

    from .state import AppState

log = logging.getLogger("codesync.ratelimit")


class RateLimited(Exception):
    """Too many attempts; ``retry_after`` is whole seconds until the window ends."""

    def __init__(self, retry_after: int, what: str):
        super().__init__(f"too many {what}; retry in {retry_after} s")
        self.retry_after = retry_after
        self.what = what


class Limiter(Protocol):
    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count one event under ``key``; return (events in this window, seconds left in it)."""

    async def reset(self, key: str) -> None:
        """Forget ``key``'s count."""


class MemoryLimiter:
    """Per-process counters, bounded: expired windows are swept when the table grows."""

    def __init__(self, max_keys: int = 100_000):
        self._windows: dict[str, tuple[int, float]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        count, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window
        count += 1
        self._windows[key] = (count, ends)
        if len(self._windows) > self._max_keys:
            self._sweep(now)
        return count, ends - now

    async def reset(self, key: str) -> None:
        self._windows.pop(key, None)

    def _sweep(self, now: float) -> None:
        live = {k: v for k, v in self._windows.items() if v[1] > now}
        if len(live) > self._max_keys:  # still full of live windows: keep the newest half
            keep = sorted(live.items(), key=lambda kv: kv[1][1])[len(live) // 2 :]
            live = dict(keep)
        self._windows = live


# KEYS[1] counter; ARGV[1] window in ms. Returns {count, ms left}.
_HIT_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""


class RedisLimiter:
    """Counters shared by every node through Redis; local counters if Redis is unreachable."""

    def __init__(self, redis: "Redis"):
        self._redis = redis
        self._script = redis.register_script(_HIT_SCRIPT)
        self._fallback = MemoryLimiter()

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        try:
            count, ttl_ms = await self._script(keys=[key], args=[max(1, int(window * 1000))])
            return int(count), int(ttl_ms) / 1000.0
        except Exception as exc:  # noqa: BLE001 - any Redis failure degrades to local limits
            log.warning("rate limiter: Redis unavailable (%s); using local counters", type(exc).__name__)
            return await self._fallback.hit(key, window)

    async def reset(self, key: str) -> None:
        try:
            await self._redis.delete(key)
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limiter: Redis unavailable (%s)", type(exc).__name__)
        await self._fallback.reset(key)


class LoginThrottle:
    """Login attempts per account and per client IP (and registrations per client IP).

    Every attempt counts against both; a successful login clears the account's count (the
    owner got in, earlier typos should not lock them out next time) but not the IP's.
    Emails are hashed before they become keys, so Redis never holds addresses.
    """

    def __init__(self, limiter: Limiter, settings: Settings):
        self.limiter = limiter
        self._prefix = f"{settings.redis_prefix}:ratelimit:login"
        self._per_account = settings.login_attempts_per_account
        self._per_ip = settings.login_attempts_per_ip
        self._window = settings.login_window

    def account_key(self, email: str) -> str:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        return f"{self._prefix}:account:{digest}"

    def ip_key(self, ip: str) -> str:
        return f"{self._prefix}:ip:{ip}"

    async def attempt(self, email: str, ip: str) -> None:
        """Count one attempt; raise :class:`RateLimited` when either limit is exceeded."""
        ip_count, ip_left = await self.limiter.hit(self.ip_key(ip), self._window)
        acct_count, acct_left = await self.limiter.hit(self.account_key(email), self._window)
        waits = []
        if ip_count > self._per_ip:
            waits.append((ip_left, "login attempts from this address"))
        if acct_count > self._per_account:
            waits.append((acct_left, "login attempts for this account"))
        if waits:
            left, what = max(waits)
            raise RateLimited(max(1, math.ceil(left)), what)

    async def register_attempt(self, ip: str) -> None:
        """Count one registration from ``ip`` (its own bucket, same per-address limit)."""
        count, left = await self.limiter.hit(f"{self._prefix}:register:{ip}", self._window)
        if count > self._per_ip:
            raise RateLimited(max(1, math.ceil(left)), "registrations from this address")

    async def succeeded(self, email: str) -> None:
        await self.limiter.reset(self.account_key(email))


def login_throttle(state: "AppState") -> LoginThrottle:
    """The app's throttle, made on first use (Redis is connected by then when configured)."""
    throttle = state.extras.get("login_throttle")
    if throttle is None:
        limiter: Limiter = RedisLimiter(state.redis) if state.redis is not None else MemoryLimiter()
        throttle = LoginThrottle(limiter, state.settings)
        state.extras["login_throttle"] = throttle
    return throttle
