"""Rate limits and login throttling, in process memory or shared through Redis.

Login throttling must slow a password guesser down without handing them a way to lock the
owner out. So the unit is *account and source address*:

- every login attempt from a source counts, pessimistically, as a failure of that
  (account, source) pair until it succeeds (so parallel guesses count too); after
  ``CODESYNC_LOGIN_FREE_FAILURES`` of them each further attempt must wait a delay that doubles
  every time (``CODESYNC_LOGIN_DELAY_BASE`` … ``CODESYNC_LOGIN_DELAY_MAX``) — a guesser from
  one address slows down exponentially; a refused (too early) attempt is not checked and does
  not count. A success clears the pair.
- another source that has not failed is never held back by those failures: the owner signs
  in from home while someone hammers the account from elsewhere;
- a per-source cap on all attempts in ``CODESYNC_LOGIN_WINDOW`` (``_ATTEMPTS_PER_IP``) bounds a
  source spraying many accounts;
- many failures on one account from many sources (``_ATTEMPTS_PER_ACCOUNT`` in the window)
  take away the free failures of every source that fails, so a botnet gets delays from its
  first miss — still without touching sources that have not failed.

Sources are the client address as :mod:`signaling.clientaddr` resolves it (behind a trusted
proxy: the real client). IPv6 sources count per /64 (one host usually holds a whole /64).

With ``CODESYNC_REDIS_URL`` the state is shared by every node (Lua scripts, atomic, Redis
time); without it, bounded dicts. If Redis fails mid-flight the throttle falls back to local
state rather than locking everyone out or letting every guess through.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from typing import TYPE_CHECKING, Protocol

from codesync.backends import Backends, shared_or
from codesync.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from redis.asyncio import Redis

    from .state import AppState

log = logging.getLogger("codesync.ratelimit")


class RateLimited(Exception):
    """Too many attempts; ``retry_after`` is whole seconds until the next one is allowed."""

    def __init__(self, retry_after: int, what: str):
        super().__init__(f"too many {what}; retry in {retry_after} s")
        self.retry_after = retry_after
        self.what = what


class Limiter(Protocol):
    async def hit(self, key: str, window: float) -> tuple[int, float]:
        """Count one event under ``key``; return (events in this window, seconds left in it)."""

    async def reset(self, key: str) -> None:
        """Forget ``key``."""

    async def attempt(self, key: str, free: int, base: float, cap: float, window: float) -> float:
        """One attempt under a growing-delay key.

        Returns 0 when the attempt may go ahead (and counts it), else the seconds still to
        wait (and counts nothing). After ``free`` counted attempts, each counted attempt sets
        the next allowed time ``base * 2**(n - free - 1)`` (at most ``cap``) seconds ahead.
        The key is forgotten ``window`` seconds after its last block ends.
        """


def _delay(count: int, free: int, base: float, cap: float) -> float:
    if count <= free:
        return 0.0
    return min(cap, base * (2.0 ** min(count - free - 1, 60)))


class MemoryLimiter:
    """Per-process counters, bounded: expired entries are swept when the table grows."""

    def __init__(self, max_keys: int = 100_000):
        self._windows: dict[str, tuple[int, float]] = {}  # key -> (count, window end)
        self._delays: dict[str, tuple[int, float, float]] = {}  # key -> (count, next allowed, forget at)
        self._max_keys = max_keys

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        count, ends = self._windows.get(key, (0, 0.0))
        if ends <= now:
            count, ends = 0, now + window
        count += 1
        self._windows[key] = (count, ends)
        if len(self._windows) > self._max_keys:
            self._windows = self._swept(self._windows, now, lambda v: v[1])
        return count, min(window, ends - now)  # (now + w) - now can exceed w by a rounding error

    async def attempt(self, key: str, free: int, base: float, cap: float, window: float) -> float:
        now = time.monotonic()
        count, allowed, forget = self._delays.get(key, (0, 0.0, 0.0))
        if forget <= now:
            count, allowed = 0, 0.0
        if allowed > now:
            return allowed - now
        count += 1
        allowed = now + _delay(count, free, base, cap)
        self._delays[key] = (count, allowed, max(allowed, now) + window)
        if len(self._delays) > self._max_keys:
            self._delays = self._swept(self._delays, now, lambda v: v[2])
        return 0.0

    async def reset(self, key: str) -> None:
        self._windows.pop(key, None)
        self._delays.pop(key, None)

    def _swept(self, table: dict, now: float, end) -> dict:
        live = {k: v for k, v in table.items() if end(v) > now}
        if len(live) > self._max_keys:  # still full of live entries: keep the newest half
            live = dict(sorted(live.items(), key=lambda kv: end(kv[1]))[len(live) // 2 :])
        return live


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

# KEYS[1] hash {n = counted attempts, t = next allowed time in ms (Redis clock)};
# ARGV: free, base ms, cap ms, window ms. Returns ms to wait (0 = go ahead, counted).
_ATTEMPT_SCRIPT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local allowed = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if allowed > now then return allowed - now end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[1])
local delay = 0
if n > free then
  local e = n - free - 1
  if e > 60 then e = 60 end
  delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * (2 ^ e))
end
redis.call('HSET', KEYS[1], 't', tostring(math.floor(now + delay)))
redis.call('PEXPIRE', KEYS[1], math.floor(delay + tonumber(ARGV[4])))
return 0
"""


class RedisLimiter:
    """Counters shared by every node through Redis; local ones while Redis is unreachable."""

    def __init__(self, redis: "Redis"):
        self._redis = redis
        self._hit = redis.register_script(_HIT_SCRIPT)
        self._attempt = redis.register_script(_ATTEMPT_SCRIPT)
        self._fallback = MemoryLimiter()

    async def hit(self, key: str, window: float) -> tuple[int, float]:
        try:
            count, ttl_ms = await self._hit(keys=[key], args=[max(1, int(window * 1000))])
            return int(count), int(ttl_ms) / 1000.0
        except Exception as exc:  # noqa: BLE001 - any Redis failure degrades to local limits
            log.warning("rate limiter: Redis unavailable (%s); using local counters", type(exc).__name__)
            return await self._fallback.hit(key, window)

    async def attempt(self, key: str, free: int, base: float, cap: float, window: float) -> float:
        try:
            wait_ms = await self._attempt(
                keys=[key],
                args=[free, max(1, int(base * 1000)), max(1, int(cap * 1000)), max(1, int(window * 1000))],
            )
            return int(wait_ms) / 1000.0
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limiter: Redis unavailable (%s); using local counters", type(exc).__name__)
            return await self._fallback.attempt(key, free, base, cap, window)

    async def reset(self, key: str) -> None:
        try:
            await self._redis.delete(key)
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limiter: Redis unavailable (%s)", type(exc).__name__)
        await self._fallback.reset(key)


def source_bucket(address: str) -> str:
    """What one source is: an IPv4 address, or an IPv6 /64."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class LoginThrottle:
    """Login attempts per account and source (growing delays), per source and per account.

    Emails are hashed before they become keys, so Redis never holds addresses.
    """

    def __init__(self, limiter: Limiter, settings: Settings):
        self.limiter = limiter
        self._prefix = f"{settings.redis_prefix}:ratelimit:login"
        self._per_account = settings.login_attempts_per_account
        self._per_ip = settings.login_attempts_per_ip
        self._window = settings.login_window
        self._free = max(0, settings.login_free_failures)
        self._base = max(0.001, settings.login_delay_base)
        self._cap = max(self._base, settings.login_delay_max)

    @staticmethod
    def _account(email: str) -> str:
        return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]

    def account_key(self, email: str) -> str:
        return f"{self._prefix}:account:{self._account(email)}"

    def pair_key(self, email: str, source: str) -> str:
        return f"{self._prefix}:pair:{self._account(email)}:{source_bucket(source)}"

    def ip_key(self, source: str) -> str:
        return f"{self._prefix}:ip:{source_bucket(source)}"

    async def attempt(self, email: str, source: str) -> None:
        """Let one login attempt go ahead (and count it), or raise :class:`RateLimited`."""
        ip_count, ip_left = await self.limiter.hit(self.ip_key(source), self._window)
        if ip_count > self._per_ip:
            raise RateLimited(max(1, math.ceil(ip_left)), "login attempts from this address")
        account_count, _ = await self.limiter.hit(self.account_key(email), self._window)
        free = self._free if account_count <= self._per_account else 0
        wait = await self.limiter.attempt(self.pair_key(email, source), free, self._base, self._cap, self._window)
        if wait > 0:
            raise RateLimited(max(1, math.ceil(wait)), "failed login attempts for this account from this address")

    async def register_attempt(self, source: str) -> None:
        """Count one registration from ``source`` (its own bucket, same per-address limit)."""
        count, left = await self.limiter.hit(f"{self._prefix}:register:{source_bucket(source)}", self._window)
        if count > self._per_ip:
            raise RateLimited(max(1, math.ceil(left)), "registrations from this address")

    async def succeeded(self, email: str, source: str) -> None:
        """The password was right: this source's earlier failures on the account are forgiven."""
        await self.limiter.reset(self.pair_key(email, source))


# Counters shared by the nodes through Redis when it is configured (codesync/backends.py).
LIMITERS: Backends[Limiter] = Backends("rate limiter", shared_or("memory"))


@LIMITERS.register("memory")
def _memory_limiter(settings: Settings, state: "AppState") -> Limiter:
    return MemoryLimiter()


@LIMITERS.register("redis")
def _redis_limiter(settings: Settings, state: "AppState") -> Limiter:
    if state.redis is None:
        raise RuntimeError("Redis is configured but not connected yet (the app's startup connects it)")
    return RedisLimiter(state.redis)


def login_throttle(state: "AppState") -> LoginThrottle:
    """The app's throttle, made on first use (Redis is connected by then when configured)."""
    throttle = state.extras.get("login_throttle")
    if throttle is None:
        throttle = LoginThrottle(LIMITERS.create(state.settings, state), state.settings)
        state.extras["login_throttle"] = throttle
    return throttle


class MailThrottle:
    """Requests that send a mail (password reset, verification re-send, email change).

    Per source address: ``CODESYNC_MAIL_PER_IP`` requests per ``CODESYNC_MAIL_WINDOW`` — past
    that, 429 (the same whatever address was asked about). Per *address asked about* (hashed;
    counted whether or not it has an account, so the count reveals nothing): at most
    ``CODESYNC_MAIL_PER_ACCOUNT`` mails per window — past that the request is answered as
    always but no mail goes out, so nobody can flood someone's mailbox, and the links already
    sent stay valid.
    """

    def __init__(self, limiter: Limiter, settings: Settings):
        self.limiter = limiter
        self._prefix = f"{settings.redis_prefix}:ratelimit:mail"
        self._per_account = max(0, settings.mail_per_account)
        self._per_ip = max(1, settings.mail_per_ip)
        self._window = max(1, settings.mail_window)

    async def request(self, source: str) -> None:
        """Count one mail-sending request from ``source`` or raise :class:`RateLimited`."""
        count, left = await self.limiter.hit(f"{self._prefix}:ip:{source_bucket(source)}", self._window)
        if count > self._per_ip:
            raise RateLimited(max(1, math.ceil(left)), "requests for emailed links from this address")

    async def may_mail(self, email: str, purpose: str) -> bool:
        """Whether another ``purpose`` mail may go to ``email`` in this window (and count it)."""
        key = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
        count, _ = await self.limiter.hit(f"{self._prefix}:to:{purpose}:{key}", self._window)
        return count <= self._per_account


def mail_throttle(state: "AppState") -> MailThrottle:
    throttle = state.extras.get("mail_throttle")
    if throttle is None:
        throttle = MailThrottle(LIMITERS.create(state.settings, state), state.settings)
        state.extras["mail_throttle"] = throttle
    return throttle
