"""Sessions end at once: an access token carries its sign-in (``sid``); signing out (one
session or everywhere), a reused refresh token and a password change refuse its access tokens
immediately in the HTTP API and at ``/signal``, and close its open ``/signal`` sockets within
seconds on every node — through the revocation notice on Redis, and through the periodic
re-check when a notice was missed.
"""

from __future__ import annotations

import secrets

import httpx
import jwt
import pytest
from sqlalchemy import update

from signaling import accounts
from codesync.models import AuthSession, utcnow
from signaling.state import STATE
from tests.helpers.stack import SignalClient, signaling_stack

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


async def _login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict:
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def _bearer(tokens: dict | str) -> dict[str, str]:
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------- HTTP API
async def test_access_tokens_carry_their_session_and_die_with_it(api):
    first = await api.register()
    email = first["user"]["email"]
    second = await _login(api.client, email)
    sid1 = jwt.decode(first["access_token"], options={"verify_signature": False})["sid"]
    sid2 = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
    assert sid1 != sid2  # one sign-in, one session
    rotated = (await api.client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert jwt.decode(rotated["access_token"], options={"verify_signature": False})["sid"] == sid1  # same session

    # Logout of the first session: both of its access tokens are refused at once ...
    assert (await api.client.post("/api/auth/logout", json={"refresh_token": rotated["refresh_token"]})).status_code == 204
    for token in (first["access_token"], rotated["access_token"]):
        assert_error(await api.client.get("/api/me", headers=_bearer(token)), 401, "session_revoked")
        assert_error(await api.client.get("/api/rooms", headers=_bearer(token)), 401, "session_revoked")
    # ... the other session is untouched.
    assert (await api.client.get("/api/me", headers=_bearer(second))).status_code == 200

    # A reused refresh token revokes its session: the thief's and the owner's access tokens die.
    stolen = second["refresh_token"]
    owner = (await api.client.post("/api/auth/refresh", json={"refresh_token": stolen})).json()
    assert_error(await api.client.post("/api/auth/refresh", json={"refresh_token": stolen}), 401, "refresh_token_reused")
    assert_error(await api.client.get("/api/me", headers=_bearer(owner)), 401, "session_revoked")


async def test_logout_everywhere_and_password_change_end_every_session(api):
    reg = await api.register()
    uid, email = reg["user"]["id"], reg["user"]["email"]
    state = api.server.app[STATE]
    other = await _login(api.client, email)
    outside = state.tokens.issue_access(uid)[0]  # made outside a sign-in (no sid): ended too
    for token in (reg["access_token"], other["access_token"], outside):
        assert (await api.client.get("/api/me", headers=_bearer(token))).status_code == 200
    assert (await api.client.post("/api/auth/logout", json={"all": True}, headers=_bearer(reg))).status_code == 204
    for token in (reg["access_token"], other["access_token"], outside):
        assert_error(await api.client.get("/api/me", headers=_bearer(token)), 401, "session_revoked")

    # Signing in again works; a password change (accounts.change_password) ends that session.
    fresh = await _login(api.client, email)
    assert (await api.client.get("/api/me", headers=_bearer(fresh))).status_code == 200
    async with state.sessions() as session:
        await accounts.change_password(state, session, uid, "a brand new password")
    assert_error(await api.client.get("/api/me", headers=_bearer(fresh)), 401, "session_revoked")
    assert_error(
        await api.client.post("/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]}),
        401,
        "invalid_refresh_token",
    )
    r = await api.client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert_error(r, 401, "invalid_credentials")
    assert (await _login(api.client, email, "a brand new password"))["user"]["id"] == uid


async def test_a_forged_or_foreign_session_id_is_refused(api):
    alice, bob = await api.register(), await api.register()
    state = api.server.app[STATE]
    bob_sid = jwt.decode(bob["access_token"], options={"verify_signature": False})["sid"]
    # Even a correctly signed token naming someone else's session, or none that exists, fails.
    for sid in (bob_sid, secrets.token_hex(16)):
        token = state.tokens.issue_access(alice["user"]["id"], session_id=sid)[0]
        assert_error(await api.client.get("/api/me", headers=_bearer(token)), 401, "session_revoked")


# ----------------------------------------------------------------------------- /signal
async def _register(http: httpx.AsyncClient, name: str) -> dict:
    r = await http.post(
        "/api/auth/register",
        json={"email": f"{name}-{secrets.token_hex(3)}@example.com", "password": PASSWORD, "name": name.title()},
    )
    assert r.status_code == 201, r.text
    return r.json()


async def _room_with(http: httpx.AsyncClient, owner: dict, *members: dict) -> str:
    room = (await http.post("/api/rooms", json={"name": "sessions"}, headers=_bearer(owner))).json()
    for member in members:
        invite = (await http.post(f"/api/rooms/{room['id']}/invites", json={"role": "editor"}, headers=_bearer(owner))).json()
        r = await http.post("/api/invites/accept", json={"token": invite["token"]}, headers=_bearer(member))
        assert r.status_code == 200, r.text
    return room["id"]


async def _joined(client: SignalClient, room_id: str) -> SignalClient:
    await client.subscribe(room_id)
    await client.expect("presence")
    return client


async def _alive(client: SignalClient) -> None:
    await client.send({"type": "ping"})
    await client.expect("pong", timeout=10)
    assert not client.closed


@pytest.mark.redis
async def test_signing_out_closes_signal_sockets_on_every_node_within_seconds(tmp_path, redis_url, redis_prefix):
    """Two nodes on Redis; the periodic re-check is off (an hour): only the notice can do it."""
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_SESSION_RECHECK="3600"
    ) as stack:
        n0, n1 = (node.url or "" for node in stack.nodes)
        async with httpx.AsyncClient(base_url=n0, timeout=30) as http:
            alice = await _register(http, "alice")
            bob = await _register(http, "bob")
            alice2 = await _login(http, alice["user"]["email"])  # a second sign-in (another device)
            room_id = await _room_with(http, alice, bob)

            def ws(node: int, tokens: dict) -> str:
                return stack.ws_url(tokens["access_token"], node=node)

            async with SignalClient.connect(ws(1, alice)) as a1, SignalClient.connect(ws(0, alice2)) as a2, \
                    SignalClient.connect(ws(1, bob)) as b:
                for client in (a1, a2, b):
                    await _joined(client, room_id)

                # Logout of one session (on node 0): its socket on node 1 closes; nothing else does.
                r = await http.post("/api/auth/logout", json={"refresh_token": alice["refresh_token"]})
                assert r.status_code == 204
                assert await a1.wait_closed(timeout=10) == 4003
                assert any(f.get("type") == "error" and f.get("code") == "unauthorized" for f in a1.frames)
                await _alive(a2)
                await _alive(b)

                # Sign out everywhere (on node 1 this time): alice's other socket on node 0 closes.
                r = await http.post(f"{n1}/api/auth/logout", json={"all": True}, headers=_bearer(alice2))
                assert r.status_code == 204
                assert await a2.wait_closed(timeout=10) == 4003
                await _alive(b)
                await b.expect("presence", lambda f: [p["name"] for p in f["peers"]] == ["Bob"], timeout=10)

            # The old access tokens are refused at connect and by the API, on both nodes.
            for node in (0, 1):
                for tokens in (alice, alice2):
                    async with SignalClient.connect(ws(node, tokens)) as again:
                        assert await again.wait_closed(timeout=10) == 4003
                    base = stack.nodes[node].url
                    r = await http.get(f"{base}/api/me", headers=_bearer(tokens))
                    assert_error(r, 401, "session_revoked")
            assert (await http.get("/api/me", headers=_bearer(bob))).status_code == 200


async def test_the_periodic_recheck_closes_what_a_lost_notice_missed(tmp_path):
    """No Redis, one node, re-check every second: a session revoked behind the node's back
    (straight in the database — as if its notice had been lost) is closed anyway."""
    async with signaling_stack(tmp_path, CODESYNC_SESSION_RECHECK="1") as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            alice = await _register(http, "alice")
            bob = await _register(http, "bob")
            room_id = await _room_with(http, alice, bob)
            async with SignalClient.connect(stack.ws_url(alice["access_token"])) as a, \
                    SignalClient.connect(stack.ws_url(bob["access_token"])) as b:
                await _joined(a, room_id)
                await _joined(b, room_id)
                sid = jwt.decode(alice["access_token"], options={"verify_signature": False})["sid"]
                from codesync import db
                from codesync.settings import Settings

                engine = db.create_engine(Settings(database_url=stack.database_url, data_dir=tmp_path / "x"))
                try:
                    async with db.session_factory(engine)() as session:
                        await session.exec(update(AuthSession).where(AuthSession.id == sid).values(revoked_at=utcnow()))
                        await session.commit()
                finally:
                    await engine.dispose()
                assert await a.wait_closed(timeout=10) == 4003
                await _alive(b)


async def test_a_token_made_outside_a_sign_in_is_closed_by_logout_everywhere(tmp_path):
    """Access tokens without ``sid`` (tools, tests) still end with "sign out everywhere"."""
    async with signaling_stack(tmp_path, CODESYNC_SESSION_RECHECK="3600") as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http, \
                SignalClient.connect(stack.ws_url(room.token("alice"))) as a, \
                SignalClient.connect(stack.ws_url(room.token("bob"))) as b:
            await _joined(a, room.id)
            await _joined(b, room.id)
            r = await http.post("/api/auth/logout", json={"all": True}, headers=_bearer(room.token("alice")))
            assert r.status_code == 204
            assert await a.wait_closed(timeout=10) == 4003
            await _alive(b)
            assert_error(await http.get("/api/me", headers=_bearer(room.token("alice"))), 401, "session_revoked")


# ----------------------------------------------------------------------------- migration
async def test_migration_turns_existing_sign_ins_into_sessions(database_url, tmp_path):
    """A database at 0001 with users and refresh-token families (one live, one signed out)
    upgrades to head: every family is a session (revoked where all its tokens were), nothing
    that references users is lost (the new column is a plain ADD COLUMN, no table rebuild)."""
    from alembic import command
    from sqlalchemy import text

    from codesync import db
    from codesync.settings import Settings

    engine = db.create_engine(Settings(database_url=database_url, data_dir=tmp_path / "data"))

    def upgrade_to(revision: str):
        def run(connection) -> None:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

        return run

    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("0001"))
            await conn.execute(text(
                "INSERT INTO users (id, email, name, email_verified, created_at) "
                "VALUES ('u1', 'a@example.com', 'A', false, '2026-11-01 10:00:00')"))
            await conn.execute(text(
                "INSERT INTO rooms (id, name, language, owner_id, created_at) VALUES ('r1', 'R', 'python', 'u1', '2026-11-01 10:00:00')"))
            await conn.execute(text(
                "INSERT INTO memberships (room_id, user_id, role, created_at) VALUES ('r1', 'u1', 'owner', '2026-11-01 10:00:00')"))
            rows = [  # (id, family, used, revoked)
                ("t1", "live", "'2026-11-02 10:00:00'", "NULL"), ("t2", "live", "NULL", "NULL"),
                ("t3", "gone", "NULL", "'2026-11-03 10:00:00'"), ("t4", "gone", "'2026-11-02 10:00:00'", "'2026-11-03 10:00:00'"),
            ]
            for tid, family, used, revoked in rows:
                await conn.execute(text(
                    "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at, used_at, revoked_at) "
                    f"VALUES ('{tid}', 'u1', '{family}', 'h{tid}', '2026-11-01 10:00:00', '2027-01-01 10:00:00', {used}, {revoked})"))
        await db.migrate(engine)  # to head
        async with engine.connect() as conn:
            sessions = {r[0]: r[1] for r in (await conn.execute(text("SELECT id, revoked_at FROM auth_sessions"))).all()}
            assert set(sessions) == {"live", "gone"}
            assert sessions["live"] is None and sessions["gone"] is not None
            assert (await conn.execute(text("SELECT count(*) FROM memberships"))).scalar() == 1
            assert (await conn.execute(text("SELECT count(*) FROM refresh_tokens"))).scalar() == 4
            assert (await conn.execute(text("SELECT sessions_revoked_at FROM users WHERE id = 'u1'"))).scalar() is None
    finally:
        await engine.dispose()
