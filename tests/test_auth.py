"""Email + password accounts: register, login, refresh rotation and reuse, logout, throttling.

Everything runs against the real app on a loopback port, on SQLite and PostgreSQL (``api``),
and the Redis-backed throttle against the real Redis.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

from signaling.models import RefreshToken, User, utcnow
from signaling.state import STATE
from signaling.tokens import hash_token
from tests.conftest import Api, _api
from tests.support import wait_for

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


async def test_registrations_are_limited_per_address(make_settings, sqlite_url):
    async with _api(make_settings(database_url=sqlite_url, login_attempts_per_ip=2)) as a:
        await a.register()
        await a.register()
        r = await a.client.post("/api/auth/register", json={"email": "third@example.com", "password": PASSWORD, "name": "T"})
        assert "address" in assert_error(r, 429, "rate_limited")["message"]
        assert int(r.headers["Retry-After"]) >= 1
        # Logins have their own bucket.
        assert (await _login(a.client, "third@example.com", PASSWORD)).status_code == 401


async def test_me_needs_a_token(api_sqlite):
    r = await api_sqlite.client.get("/api/me")
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


# ----------------------------------------------------------------------------- throttling
async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def _check_account_and_ip_limits(a: Api, b: Api | None = None) -> None:
    """Per-account limit 3, per-IP limit 7 (see the fixtures). ``b``: a second node."""
    b = b or a
    victim = await a.register()
    email = victim["user"]["email"]
    # A success clears the account's count: two typos, a success, two typos — still fine.
    for client, password in ((a, "typo-1111"), (b, "typo-2222"), (a, PASSWORD), (b, "typo-3333"), (a, "typo-4444")):
        r = await _login(client.client, email, password)
        assert r.status_code == (200 if password == PASSWORD else 401), r.text
    # Third failure in the window on the account (counted across nodes), then refused.
    assert (await _login(b.client, email, "typo-5555")).status_code == 401
    limited = await _login(a.client, email, PASSWORD)  # even the right password is refused now
    err = assert_error(limited, 429, "rate_limited")
    assert "account" in err["message"]
    retry = int(limited.headers["Retry-After"])
    assert 1 <= retry <= a.settings.login_window
    # Per IP: all 7 attempts in the window from 127.0.0.1 are used up above (the 7th was
    # refused for the account), so a different account from the same address is refused as well.
    other = await _login(b.client, "someone-else@example.com", "whatever-pass")
    assert "address" in assert_error(other, 429, "rate_limited")["message"]


@pytest.fixture
def throttled(make_settings, sqlite_url):
    def settings(**extra):
        return make_settings(
            database_url=sqlite_url, login_attempts_per_account=3, login_attempts_per_ip=7, login_window=120, **extra
        )

    return settings


async def test_login_throttle_in_memory(throttled):
    async with _api(throttled()) as a:
        await _check_account_and_ip_limits(a)


@pytest.mark.redis
async def test_login_throttle_in_redis_is_shared_by_nodes(throttled, redis_url, redis_prefix):
    """Two app instances (two "nodes") on one database and one Redis share the counters."""
    from redis.asyncio import Redis

    settings = throttled(redis_url=redis_url, redis_prefix=redis_prefix)
    redis = Redis.from_url(redis_url)
    try:
        async with _api(settings) as a, _api(settings) as b:
            await _check_account_and_ip_limits(a, b)
            keys = [k.decode() async for k in redis.scan_iter(f"{redis_prefix}:ratelimit:login:*")]
            assert any(":ip:" in k for k in keys) and any(":account:" in k for k in keys)
            assert not any("@" in k for k in keys)  # emails are hashed
            ttl = await redis.ttl(next(k for k in keys if ":ip:" in k))
            assert 0 < ttl <= settings.login_window
    finally:
        async for key in redis.scan_iter(f"{redis_prefix}:*"):
            await redis.delete(key)
        await redis.aclose()


@pytest.mark.redis
async def test_redis_limiter_counts_across_clients(make_settings, redis_url, redis_prefix):
    """Two limiters with their own Redis connections (two nodes) see one count, with expiry."""
    from redis.asyncio import Redis

    from signaling.ratelimit import LoginThrottle, RateLimited, RedisLimiter

    settings = make_settings(redis_prefix=redis_prefix, login_attempts_per_account=3, login_attempts_per_ip=100)
    r1, r2 = Redis.from_url(redis_url), Redis.from_url(redis_url)
    try:
        node1, node2 = LoginThrottle(RedisLimiter(r1), settings), LoginThrottle(RedisLimiter(r2), settings)
        for node in (node1, node2, node1):
            await node.attempt("shared@example.com", "10.1.1.1")
        with pytest.raises(RateLimited) as refused:
            await node2.attempt("shared@example.com", "10.1.1.2")
        assert 1 <= refused.value.retry_after <= settings.login_window
        key = node1.account_key("shared@example.com")
        assert key.startswith(f"{redis_prefix}:ratelimit:login:account:") and int(await r1.get(key)) == 4
        assert 0 < await r1.pttl(key) <= settings.login_window * 1000
        await node2.succeeded("shared@example.com")
        assert await r1.exists(key) == 0
        await node1.attempt("shared@example.com", "10.1.1.1")  # allowed again
        # A window that has run out starts over (a 50 ms window, waited for by polling Redis).
        count, _ = await node1.limiter.hit(f"{redis_prefix}:short", 0.05)
        assert count == 1
        await wait_for(_gone(r1, f"{redis_prefix}:short"), timeout=5, what="the 50 ms window to expire")
        assert (await node2.limiter.hit(f"{redis_prefix}:short", 0.05))[0] == 1
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
    """A configured Redis that is down degrades to local counters: limits still hold."""
    from redis.asyncio import Redis

    from signaling.ratelimit import LoginThrottle, RateLimited, RedisLimiter
    from tests.support import free_port

    settings = make_settings(redis_prefix=redis_prefix, login_attempts_per_account=2, login_attempts_per_ip=100)
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        throttle = LoginThrottle(RedisLimiter(redis), settings)
        await throttle.attempt("a@example.com", "10.0.0.1")
        await throttle.attempt("a@example.com", "10.0.0.1")
        with pytest.raises(RateLimited) as refused:
            await throttle.attempt("A@example.com ", "10.0.0.1")  # same account, normalised
        assert refused.value.retry_after >= 1
        await throttle.succeeded("a@example.com")
        await throttle.attempt("a@example.com", "10.0.0.1")
    finally:
        await redis.aclose()


async def test_memory_limiter_stays_bounded():
    from signaling.ratelimit import MemoryLimiter

    limiter = MemoryLimiter(max_keys=100)
    for i in range(1000):
        count, left = await limiter.hit(f"k{i}", 60)
        assert count == 1 and 0 < left <= 60
    assert len(limiter._windows) <= 100
    assert (await limiter.hit("k999", 60))[0] == 2  # the newest keys survive a sweep
