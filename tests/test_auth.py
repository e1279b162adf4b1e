"""Email + password accounts: register, login, refresh rotation and reuse, logout, throttling.

Everything runs against the real app on a loopback port, on SQLite and PostgreSQL (``api``),
and the Redis-backed throttle against the real Redis.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

from codesync.models import RefreshToken, User, utcnow
from signaling.state import STATE
from signaling.tokens import hash_token
from tests.helpers.api import Api, in_process_api
from tests.helpers.wait import wait_for

PASSWORD = "correct horse battery"


def state_of(api: Api):
    return api.server.app[STATE]


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


async def test_register_login_me(api):
    email = f"Ada-{secrets.token_hex(3)}@Example.COM"
    reg = await api.register(email=email, name="  Ada Lovelace ")
    assert set(reg) >= {"user", "access_token", "refresh_token", "token_type", "expires_in"}
    assert reg["user"]["email"] == email.lower() and reg["user"]["name"] == "Ada Lovelace"
    assert reg["token_type"] == "Bearer" and reg["expires_in"] == api.settings.access_token_ttl
    assert "password_hash" not in reg["user"]

    me = await api.client.get("/api/me", headers=api.auth(reg))
    assert me.status_code == 200 and me.json() == reg["user"]

    # Login is case-insensitive on the email and answers the same shape.
    login = await api.client.post("/api/auth/login", json={"email": email.upper(), "password": PASSWORD})
    assert login.status_code == 200, login.text
    body = login.json()
    assert body["user"] == reg["user"] and body["refresh_token"] != reg["refresh_token"]
    assert (await api.client.get("/api/me", headers=api.auth(body))).json()["id"] == reg["user"]["id"]

    # The password is stored as an Argon2id hash, never in clear.
    async with state_of(api).sessions() as session:
        user = await session.get(User, reg["user"]["id"])
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash


async def test_wrong_password_and_unknown_email_look_the_same(api):
    reg = await api.register()
    wrong = await api.client.post("/api/auth/login", json={"email": reg["user"]["email"], "password": "not the password"})
    unknown = await api.client.post("/api/auth/login", json={"email": "nobody@example.com", "password": PASSWORD})
    assert assert_error(wrong, 401, "invalid_credentials") == assert_error(unknown, 401, "invalid_credentials")


async def test_account_without_password_cannot_password_login(api):
    """OAuth-only accounts have no password hash; a login attempt must fail, not crash."""
    async with state_of(api).sessions() as session:
        session.add(User(email="oauth-only@example.com", name="O", password_hash=None))
        await session.commit()
    r = await api.client.post("/api/auth/login", json={"email": "oauth-only@example.com", "password": PASSWORD})
    assert_error(r, 401, "invalid_credentials")


async def test_register_refusals(api):
    reg = await api.register()
    taken = await api.client.post(
        "/api/auth/register", json={"email": reg["user"]["email"].upper(), "password": PASSWORD, "name": "Again"}
    )
    assert_error(taken, 409, "email_taken")
    ok = {"email": "new@example.com", "password": PASSWORD, "name": "New"}
    for change, code in (
        ({"password": "short"}, "invalid"),  # < 8 characters
        ({"password": "x" * 257}, "invalid"),  # > 256
        ({"password": None}, "invalid"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"email": "a@b"}, "invalid_email"),
        ({"email": "two@@example.com"}, "invalid_email"),
        ({"email": "x" * 321 + "@example.com"}, "invalid"),
        ({"name": ""}, "invalid"),
        ({"name": "   "}, "invalid"),
        ({"name": "n" * 201}, "invalid"),
        ({"name": "bell\x07"}, "invalid"),
        ({"name": 42}, "invalid"),
    ):
        r = await api.client.post("/api/auth/register", json={**ok, **change})
        assert_error(r, 422, code)
    missing = await api.client.post("/api/auth/register", json={"email": "x@example.com"})
    assert_error(missing, 422, "invalid")
    # None of the refused attempts created an account.
    async with state_of(api).sessions() as session:
        assert len((await session.exec(select(User))).all()) == 1


async def test_refresh_rotates_and_reuse_revokes_the_family(api):
    first = await api.register()
    second_login = (
        await api.client.post("/api/auth/login", json={"email": first["user"]["email"], "password": PASSWORD})
    ).json()

    r1 = await api.client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r1.status_code == 200, r1.text
    rotated = r1.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["user"]["id"] == first["user"]["id"]
    assert (await api.client.get("/api/me", headers=api.auth(rotated))).status_code == 200

    r2 = await api.client.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert r2.status_code == 200
    newest = r2.json()

    # An attacker replays the first token: the whole family dies, the newest token included.
    replay = await api.client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_error(replay, 401, "refresh_token_reused")
    dead = await api.client.post("/api/auth/refresh", json={"refresh_token": newest["refresh_token"]})
    assert_error(dead, 401, "invalid_refresh_token")

    # Another sign-in (another family) of the same user is untouched.
    other = await api.client.post("/api/auth/refresh", json={"refresh_token": second_login["refresh_token"]})
    assert other.status_code == 200, other.text

    # The database holds hashes only.
    async with state_of(api).sessions() as session:
        rows = (await session.exec(select(RefreshToken))).all()
    stored = {row.token_hash for row in rows}
    assert first["refresh_token"] not in stored and hash_token(first["refresh_token"]) in stored


async def test_concurrent_refresh_with_one_token_has_one_winner(api):
    reg = await api.register()
    results = await asyncio.gather(
        *(api.client.post("/api/auth/refresh", json={"refresh_token": reg["refresh_token"]}) for _ in range(4))
    )
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 1 and codes.count(401) == 3, [r.text for r in results]
    winner = next(r.json() for r in results if r.status_code == 200)
    # Two parties held the token, so the winner's new token is revoked too.
    r = await api.client.post("/api/auth/refresh", json={"refresh_token": winner["refresh_token"]})
    assert_error(r, 401, "invalid_refresh_token")


async def test_refresh_refuses_expired_revoked_and_unknown(api):
    reg = await api.register()
    async with state_of(api).sessions() as session:
        row = (
            await session.exec(select(RefreshToken).where(RefreshToken.token_hash == hash_token(reg["refresh_token"])))
        ).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        await session.commit()
    expired = await api.client.post("/api/auth/refresh", json={"refresh_token": reg["refresh_token"]})
    assert_error(expired, 401, "invalid_refresh_token")
    assert "expired" in expired.json()["error"]["message"]

    unknown = await api.client.post("/api/auth/refresh", json={"refresh_token": secrets.token_urlsafe(32)})
    assert_error(unknown, 401, "invalid_refresh_token")
    # An access token is not a refresh token.
    wrong_kind = await api.client.post("/api/auth/refresh", json={"refresh_token": reg["access_token"]})
    assert_error(wrong_kind, 401, "invalid_refresh_token")
    for bad in ({}, {"refresh_token": ""}, {"refresh_token": 5}, {"refresh_token": "x" * 513}):
        assert_error(await api.client.post("/api/auth/refresh", json=bad), 422, "invalid")


async def test_logout_revokes_the_family_and_is_idempotent(api):
    reg = await api.register()
    rotated = (await api.client.post("/api/auth/refresh", json={"refresh_token": reg["refresh_token"]})).json()
    other = (
        await api.client.post("/api/auth/login", json={"email": reg["user"]["email"], "password": PASSWORD})
    ).json()

    out = await api.client.post("/api/auth/logout", json={"refresh_token": rotated["refresh_token"]})
    assert out.status_code == 204
    assert_error(
        await api.client.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]}),
        401,
        "invalid_refresh_token",
    )
    again = await api.client.post("/api/auth/logout", json={"refresh_token": rotated["refresh_token"]})
    assert again.status_code == 204
    unknown = await api.client.post("/api/auth/logout", json={"refresh_token": "never-issued"})
    assert unknown.status_code == 204
    # The other sign-in still works.
    assert (await api.client.post("/api/auth/refresh", json={"refresh_token": other["refresh_token"]})).status_code == 200


async def test_logout_everywhere_needs_the_bearer_token(api):
    reg = await api.register()
    other = (
        await api.client.post("/api/auth/login", json={"email": reg["user"]["email"], "password": PASSWORD})
    ).json()
    assert_error(await api.client.post("/api/auth/logout", json={"all": True}), 401, "unauthorized")
    assert_error(
        await api.client.post("/api/auth/logout", json={"all": True}, headers=api.auth("forged.token.here")),
        401,
        "invalid_token",
    )
    assert_error(await api.client.post("/api/auth/logout", json={}), 422, "invalid")
    r = await api.client.post("/api/auth/logout", json={"all": True}, headers=api.auth(reg))
    assert r.status_code == 204
    for token in (reg["refresh_token"], other["refresh_token"]):
        assert_error(
            await api.client.post("/api/auth/refresh", json={"refresh_token": token}), 401, "invalid_refresh_token"
        )


async def test_logout_with_a_stale_bearer_still_revokes(api):
    reg = await api.register()
    expired = api.server.app[STATE].tokens.issue_access(reg["user"]["id"], ttl=-60)[0]
    r = await api.client.post("/api/auth/logout", json={"refresh_token": reg["refresh_token"]}, headers=api.auth(expired))
    assert r.status_code == 204
    assert_error(
        await api.client.post("/api/auth/refresh", json={"refresh_token": reg["refresh_token"]}),
        401,
        "invalid_refresh_token",
    )


async def test_me_needs_a_token(api_sqlite):
    r = await api_sqlite.client.get("/api/me")
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


# ----------------------------------------------------------------------------- throttling
async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


@asynccontextmanager
async def from_address(base_url: str, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z works on loopback)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=30) as client:
        yield client


FREE = 3  # CODESYNC_LOGIN_FREE_FAILURES in these tests
BASE = 1.0  # CODESYNC_LOGIN_DELAY_BASE


@pytest.fixture
def throttled(make_settings, sqlite_url):
    def settings(**extra):
        values = dict(
            database_url=sqlite_url,
            login_free_failures=FREE,
            login_delay_base=BASE,
            login_delay_max=4.0,
            login_attempts_per_account=1000,
            login_attempts_per_ip=1000,  # refused attempts count here too: the polling below adds up
            login_window=120,
        )
        values.update(extra)
        return make_settings(**values)

    return settings


async def _attacker_cannot_lock_out_the_owner(nodes: list[Api]) -> None:
    """An attacker at 127.0.0.2 hammers the owner's account (over every node) and slows down
    exponentially (1 s, 2 s, 4 s, capped at 4 s) — hammering while held back buys nothing;
    meanwhile the owner at 127.0.0.3 signs in, and even mistypes, without being held back."""
    owner = await nodes[0].register()
    email = owner["user"]["email"]
    async with AsyncExitStack() as stack:
        attackers = [await stack.enter_async_context(from_address(n.base_url, "127.0.0.2")) for n in nodes]
        owners = [await stack.enter_async_context(from_address(n.base_url, "127.0.0.3")) for n in nodes]

        def attacker(i: int) -> httpx.AsyncClient:
            return attackers[i % len(attackers)]

        for i in range(FREE):  # the free failures
            assert_error(await _login(attacker(i), email, f"guess-{i}"), 401, "invalid_credentials")

        # From here each guess that gets through starts a delay twice the last (capped). A delay
        # runs from the moment the server counts an attempt — before it checks the password —
        # so the gaps are measured between the *sending* of the guesses that got through;
        # the attacker polls all the time in between (refused guesses are not counted).
        async def let_through(n: int) -> tuple[float, int | None]:
            """Poll until a guess gets through: (when it was sent, the first Retry-After seen)."""
            sent, first_retry = 0.0, None

            async def allowed() -> httpx.Response | None:
                nonlocal sent, first_retry
                sent = time.monotonic()
                r = await _login(attacker(n), email, f"next-guess-{n}")
                if r.status_code == 429:
                    first_retry = first_retry or int(r.headers["Retry-After"])
                    return None
                return r

            assert_error(await wait_for(allowed, timeout=20, interval=0.05, what=f"guess {n}"), 401, "invalid_credentials")
            return sent, first_retry

        delays = (BASE, 2 * BASE, 4 * BASE, 4 * BASE)
        last, _ = await let_through(0)
        gaps: list[float] = []
        for n, delay in enumerate(delays, start=1):
            now, retry_after = await let_through(n)
            gaps.append(now - last)
            last = now
            # The first refusal announced the wait (a loaded machine may answer short ones late).
            assert retry_after is not None or delay < 4, (n, delay)
            assert retry_after is None or 1 <= retry_after <= delay, (n, retry_after, delay)
        for gap, delay in zip(gaps, delays):
            assert delay - 0.3 <= gap <= delay + 5, gaps  # held back exactly as long as announced
        assert gaps[2] > 2 * gaps[0] and gaps[1] > gaps[0]  # it grows ...
        assert gaps[3] < 1.5 * gaps[2]  # ... up to the cap

        # Held back now (4 s), even with the right password: it is not even checked.
        refused = await _login(attacker(0), email, PASSWORD)
        err = assert_error(refused, 429, "rate_limited")
        assert "this address" in err["message"] and 1 <= int(refused.headers["Retry-After"]) <= 4

        # The owner, from another address, is not held back at all — on any node.
        for i, client in enumerate(owners):
            r = await _login(client, email, PASSWORD)
            assert r.status_code == 200, r.text
            assert_error(await _login(client, email, f"typo-{i}"), 401, "invalid_credentials")
            assert (await _login(client, email, PASSWORD)).status_code == 200

        # Once the delay is over the right password works there too, and clears the address.
        await wait_for(lambda: _status(_login(attacker(0), email, PASSWORD), 200), timeout=15, interval=0.1,
                       what="the right password to be accepted once the delay is over")
        assert (await _login(attacker(0), email, "one-typo")).status_code == 401


async def _status(request, status: int) -> bool:
    return (await request).status_code == status


async def test_login_throttle_in_memory_never_locks_out_the_owner(throttled):
    async with in_process_api(throttled()) as a:
        await _attacker_cannot_lock_out_the_owner([a])


@pytest.mark.redis
async def test_login_throttle_in_redis_is_shared_and_never_locks_out_the_owner(throttled, redis_url, redis_prefix):
    """Two app instances (two "nodes") on one database and one Redis share the delays."""
    from redis.asyncio import Redis

    settings = throttled(redis_url=redis_url, redis_prefix=redis_prefix)
    redis = Redis.from_url(redis_url)
    try:
        async with in_process_api(settings) as a, in_process_api(settings) as b:
            await _attacker_cannot_lock_out_the_owner([a, b])
            keys = [k.decode() async for k in redis.scan_iter(f"{redis_prefix}:ratelimit:login:*")]
            assert any(":pair:" in k for k in keys) and any(":ip:" in k for k in keys), keys
            assert not any("@" in k for k in keys)  # emails are hashed
            for key in keys:
                assert 0 < await redis.pttl(key) <= (settings.login_window + settings.login_delay_max) * 1000
    finally:
        async for key in redis.scan_iter(f"{redis_prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_per_source_cap_holds_a_sprayer_but_not_others(throttled):
    """One address trying many accounts hits the per-address cap; other addresses do not."""
    async with in_process_api(throttled(login_attempts_per_ip=6)) as a:
        async with from_address(a.base_url, "127.0.0.4") as sprayer, from_address(a.base_url, "127.0.0.5") as other:
            victim = await a.register()
            for i in range(6):
                assert (await _login(sprayer, f"user{i}@example.com", "guess-guess")).status_code == 401
            err = assert_error(await _login(sprayer, "user9@example.com", "guess-guess"), 429, "rate_limited")
            assert "from this address" in err["message"]
            assert (await _login(other, victim["user"]["email"], PASSWORD)).status_code == 200


async def test_many_sources_on_one_account_lose_their_free_failures(throttled):
    """Past CODESYNC_LOGIN_ATTEMPTS_PER_ACCOUNT attempts on an account, a failing address is
    delayed from its first failure — an address that has not failed still gets in."""
    async with in_process_api(throttled(login_attempts_per_account=4, login_delay_base=60, login_delay_max=60)) as a:
        owner = await a.register()
        email = owner["user"]["email"]
        for n in range(4):  # four addresses, one miss each: within everyone's free failures
            async with from_address(a.base_url, f"127.0.1.{n + 1}") as c:
                assert (await _login(c, email, "guess-guess")).status_code == 401
        async with from_address(a.base_url, "127.0.1.9") as fifth:
            assert (await _login(fifth, email, "guess-guess")).status_code == 401
            assert_error(await _login(fifth, email, "guess-again"), 429, "rate_limited")
        async with from_address(a.base_url, "127.0.1.10") as clean:
            assert (await _login(clean, email, PASSWORD)).status_code == 200


async def test_registrations_are_limited_per_address(make_settings, sqlite_url):
    async with in_process_api(make_settings(database_url=sqlite_url, login_attempts_per_ip=2)) as a:
        await a.register()
        await a.register()
        r = await a.client.post("/api/auth/register", json={"email": "third@example.com", "password": PASSWORD, "name": "T"})
        assert "address" in assert_error(r, 429, "rate_limited")["message"]
        assert int(r.headers["Retry-After"]) >= 1
        # Logins have their own bucket.
        assert (await _login(a.client, "third@example.com", PASSWORD)).status_code == 401


# ----------------------------------------------------------------------------- trusted proxies
async def test_forwarded_for_counts_only_from_a_trusted_proxy(throttled):
    """127.0.0.1 is the "proxy": its X-Forwarded-For names the client. 127.0.0.7 is a client
    talking to the server directly: whatever X-Forwarded-For it sends is ignored."""
    async with in_process_api(throttled(trusted_proxies="127.0.0.1, 10.9.0.0/16", login_delay_base=60, login_delay_max=60)) as a:
        owner = await a.register()
        email = owner["user"]["email"]
        async with from_address(a.base_url, "127.0.0.1") as proxy, from_address(a.base_url, "127.0.0.7") as direct:
            # Through the proxy, attacker and owner are told apart by the header.
            for i in range(FREE + 1):
                r = await proxy.post("/api/auth/login", json={"email": email, "password": f"g{i}-guess"},
                                     headers={"X-Forwarded-For": "198.51.100.66"})
                assert r.status_code == 401
            r = await proxy.post("/api/auth/login", json={"email": email, "password": "g-guess"},
                                 headers={"X-Forwarded-For": "198.51.100.66"})
            assert_error(r, 429, "rate_limited")
            # The attacker's own X-Forwarded-For, left of the proxy's entry, changes nothing.
            r = await proxy.post("/api/auth/login", json={"email": email, "password": "g-guess"},
                                 headers={"X-Forwarded-For": "203.0.113.1, 198.51.100.66"})
            assert_error(r, 429, "rate_limited")
            # A chain of trusted proxies: the rightmost untrusted address is the client.
            r = await proxy.post("/api/auth/login", json={"email": email, "password": "g-guess"},
                                 headers={"X-Forwarded-For": "198.51.100.66, 10.9.3.4"})
            assert_error(r, 429, "rate_limited")
            r = await proxy.post("/api/auth/login", json={"email": email, "password": PASSWORD},
                                 headers={"X-Forwarded-For": "198.51.100.77"})
            assert r.status_code == 200, r.text

            # A direct client spoofing the header is one address, whatever it claims.
            for i in range(FREE + 1):
                r = await direct.post("/api/auth/login", json={"email": email, "password": f"s{i}-guess"},
                                      headers={"X-Forwarded-For": f"192.0.2.{i + 1}"})
                assert r.status_code == 401
            r = await direct.post("/api/auth/login", json={"email": email, "password": PASSWORD},
                                  headers={"X-Forwarded-For": "192.0.2.200"})
            assert_error(r, 429, "rate_limited")


def test_client_address_resolution():
    from signaling.clientaddr import parse_networks, resolve

    trusted = parse_networks(("127.0.0.1", "10.0.0.0/8", "::1", "not-a-cidr"))
    assert resolve("192.0.2.9", ["203.0.113.5"], trusted) == "192.0.2.9"  # untrusted peer: header ignored
    assert resolve("127.0.0.1", [], trusted) == "127.0.0.1"
    assert resolve("127.0.0.1", ["203.0.113.5"], trusted) == "203.0.113.5"
    assert resolve("127.0.0.1", ["1.1.1.1, 203.0.113.5"], trusted) == "203.0.113.5"  # rightmost untrusted
    assert resolve("127.0.0.1", ["203.0.113.5, 10.1.2.3"], trusted) == "203.0.113.5"  # through two proxies
    assert resolve("127.0.0.1", ["203.0.113.5", "10.1.2.3"], trusted) == "203.0.113.5"  # repeated headers
    assert resolve("127.0.0.1", ["junk, 10.1.2.3"], trusted) == "10.1.2.3"  # junk: stop at the last proxy
    assert resolve("127.0.0.1", ["[2001:db8::1]:443"], trusted) == "2001:db8::1"
    assert resolve("::1", ["::ffff:192.0.2.4"], trusted) == "192.0.2.4"
    assert resolve("127.0.0.1", ["203.0.113.5"], ()) == "127.0.0.1"  # no trusted proxies configured
    from signaling.ratelimit import source_bucket

    assert source_bucket("2001:db8:1:2:aaaa::1") == source_bucket("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_bucket("192.0.2.1") == "192.0.2.1"


# ----------------------------------------------------------------------------- limiter internals
@pytest.mark.redis
async def test_redis_limiter_counts_across_clients(make_settings, redis_url, redis_prefix):
    """Two limiters with their own Redis connections (two nodes) see one state, with expiry."""
    from redis.asyncio import Redis

    from signaling.ratelimit import RedisLimiter

    r1, r2 = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        node1, node2 = RedisLimiter(r1), RedisLimiter(r2)
        key = f"{redis_prefix}:pair"
        assert await node1.attempt(key, 2, 5, 10, 60) == 0
        assert await node2.attempt(key, 2, 5, 10, 60) == 0
        assert await node1.attempt(key, 2, 5, 10, 60) == 0  # third: allowed, starts a 5 s delay
        wait = await node2.attempt(key, 2, 5, 10, 60)  # the other node sees it
        assert 0 < wait <= 5
        assert 0 < await node1.attempt(key, 2, 5, 10, 60) <= wait  # refused: not counted, not extended
        assert 60_000 < await r1.pttl(key) <= 65_000  # forgotten a window after the delay ends
        await node2.reset(key)
        assert await r1.exists(key) == 0 and await node1.attempt(key, 2, 5, 10, 60) == 0
        # A window that has run out starts over (a 50 ms window, waited for by polling Redis).
        count, _ = await node1.hit(f"{redis_prefix}:short", 0.05)
        assert count == 1
        await wait_for(_gone(r1, f"{redis_prefix}:short"), timeout=5, what="the 50 ms window to expire")
        assert (await node2.hit(f"{redis_prefix}:short", 0.05))[0] == 1
    finally:
        async for key in r1.scan_iter(f"{redis_prefix}:*"):
            await r1.delete(key)
        await r1.aclose()
        await r2.aclose()


def _gone(redis, key: str):
    async def check() -> bool:
        return await redis.exists(key) == 0

    return check


async def test_login_throttle_survives_redis_outage(make_settings, redis_prefix):
    """A configured Redis that is down degrades to local state: delays still hold."""
    from redis.asyncio import Redis

    from signaling.ratelimit import LoginThrottle, RateLimited, RedisLimiter
    from tests.helpers.components import free_port

    settings = make_settings(redis_prefix=redis_prefix, login_free_failures=2, login_delay_base=30)
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        throttle = LoginThrottle(RedisLimiter(redis), settings)
        for _ in range(3):
            await throttle.attempt("a@example.com", "10.0.0.1")
        with pytest.raises(RateLimited) as refused:
            await throttle.attempt("A@example.com ", "10.0.0.1")  # same account, normalised
        assert refused.value.retry_after == 30
        await throttle.attempt("a@example.com", "10.0.0.2")  # another source is not held back
        await throttle.succeeded("a@example.com", "10.0.0.1")
        await throttle.attempt("a@example.com", "10.0.0.1")
    finally:
        await redis.aclose()


async def test_memory_limiter_stays_bounded():
    from signaling.ratelimit import MemoryLimiter

    limiter = MemoryLimiter(max_keys=100)
    for i in range(1000):
        count, left = await limiter.hit(f"k{i}", 60)
        assert count == 1 and 0 < left <= 60
        assert await limiter.attempt(f"p{i}", 0, 60, 60, 60) == 0
    assert len(limiter._windows) <= 100 and len(limiter._delays) <= 100
    assert (await limiter.hit("k999", 60))[0] == 2  # the newest keys survive a sweep
    assert await limiter.attempt("p999", 0, 60, 60, 60) > 0
