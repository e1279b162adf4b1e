"""Server administration: the admin API refuses non-administrators; listing and searching
users; disabling an account ends its sessions and closes its open ``/signal`` sockets at once
on every node (two real signaling processes on Redis, the periodic re-check off); rooms and
their sizes; live numbers from the hubs and the runners' /metrics.
"""

from __future__ import annotations

import secrets

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge

from signaling import admin
from codesync.models import DocumentUpdate
from codesync.opsserver import OpsServer
from codesync.settings import Settings
from tests.helpers.api import Api, in_process_api
from tests.helpers.stack import SignalClient, signaling_stack
from tests.helpers.components import free_port
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def bearer(body: dict | str) -> dict[str, str]:
    token = body if isinstance(body, str) else body["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def login(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict:
    r = await http.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


async def register(http: httpx.AsyncClient, name: str) -> dict:
    r = await http.post("/api/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "name": name.title()})
    assert r.status_code == 201, r.text
    return r.json()


async def test_the_admin_api_refuses_everyone_else(api: Api):
    await admin.create_user(api.settings, "root@example.com", "Root", PASSWORD, is_admin=True)
    root = await login(api.client, "root@example.com")
    mallory = await register(api.client, "mallory")
    victim = await register(api.client, "victim")
    vid = victim["user"]["id"]
    attempts = [
        ("GET", "/api/admin/users", None), ("GET", "/api/admin/rooms", None), ("GET", "/api/admin/stats", None),
        ("PATCH", f"/api/admin/users/{vid}", {"disabled": True}), ("PATCH", f"/api/admin/users/{mallory['user']['id']}", {"is_admin": True}),
        ("POST", f"/api/admin/users/{vid}/delete", {"default": "delete"}), ("POST", "/api/admin/signup-invites", {}),
        ("GET", "/api/admin/signup-invites", None), ("GET", f"/api/admin/users/{vid}/deletion", None),
    ]
    for method, path, body in attempts:
        r = await api.client.request(method, path, json=body, headers=bearer(mallory))
        assert_error(r, 403, "forbidden")
        r = await api.client.request(method, path, json=body)
        assert r.status_code == 401, (path, r.text)
    # Nothing happened to the victim; Mallory is no administrator.
    assert (await api.client.get("/api/me", headers=bearer(victim))).status_code == 200
    assert (await api.client.get("/api/me", headers=bearer(mallory))).json()["is_admin"] is False
    # The administrator can, and search finds by name or address (wildcards are literal).
    r = await api.client.get("/api/admin/users", params={"q": "VICT"}, headers=bearer(root))
    assert r.status_code == 200 and [u["id"] for u in r.json()["users"]] == [vid]
    r = await api.client.get("/api/admin/users", params={"q": "%"}, headers=bearer(root))
    assert r.json()["users"] == []
    r = await api.client.get("/api/admin/users", headers=bearer(root))
    assert r.json()["total"] == 3


async def test_admin_emails_count_only_once_verified(make_settings, sqlite_url):
    """CODESYNC_ADMIN_EMAILS makes an account an administrator only once its address is
    verified — registering the admin's address first gives a squatter nothing."""
    async with in_process_api(make_settings(database_url=sqlite_url, admin_emails="boss@example.com", unverified_accounts="limited")) as api:
        squatter = await register(api.client, "boss")
        assert squatter["user"]["is_admin"] is False
        assert_error(await api.client.get("/api/admin/users", headers=bearer(squatter)), 403, "forbidden")
        from signaling.state import STATE

        state = api.server.app[STATE]
        async with state.sessions() as session:
            from codesync.models import User

            user = await session.get(User, squatter["user"]["id"])
            user.email_verified = True
            session.add(user)
            await session.commit()
        assert (await api.client.get("/api/admin/users", headers=bearer(squatter))).status_code == 200
        # A configured administrator cannot be demoted through the API (the setting says so).
        r = await api.client.patch(f"/api/admin/users/{squatter['user']['id']}", json={"is_admin": False}, headers=bearer(squatter))
        assert_error(r, 409, "self")


@pytest.mark.redis
async def test_disabling_an_account_closes_its_sockets_on_every_node(tmp_path, redis_url, redis_prefix):
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_SESSION_RECHECK="3600"
    ) as stack:
        n0, n1 = (node.url or "" for node in stack.nodes)
        await admin.create_user(Settings(database_url=stack.database_url, data_dir=tmp_path / "cli"), "root@example.com",
                                "Root", PASSWORD, is_admin=True)
        async with httpx.AsyncClient(base_url=n0, timeout=30) as http:
            root = await login(http, "root@example.com")
            eve, bob = await register(http, "eve"), await register(http, "bob")
            eve2 = await login(http, "eve@example.com")  # a second device
            room = (await http.post("/api/rooms", json={"name": "r"}, headers=bearer(bob))).json()["id"]
            inv = (await http.post(f"/api/rooms/{room}/invites", json={"role": "editor"}, headers=bearer(bob))).json()
            assert (await http.post("/api/invites/accept", json={"token": inv["token"]}, headers=bearer(eve))).status_code == 200
            async with SignalClient.connect(stack.ws_url(eve["access_token"], node=1)) as e1, \
                    SignalClient.connect(stack.ws_url(eve2["access_token"], node=0)) as e0, \
                    SignalClient.connect(stack.ws_url(bob["access_token"], node=1)) as b:
                for client in (e1, e0, b):
                    await client.subscribe(room)
                    await client.expect("presence")
                r = await http.patch(f"{n1}/api/admin/users/{eve['user']['id']}", json={"disabled": True}, headers=bearer(root))
                assert r.status_code == 200 and r.json()["disabled"] is True, r.text
                assert await e1.wait_closed(timeout=10) == 4003
                assert await e0.wait_closed(timeout=10) == 4003
                await b.send({"type": "ping"})
                await b.expect("pong", timeout=10)
                await b.expect("presence", lambda f: [p["name"] for p in f["peers"]] == ["Bob"], timeout=10)
            # Refused everywhere: API, /signal, sign-in, refresh — on both nodes.
            for base in (n0, n1):
                assert_error(await http.get(f"{base}/api/me", headers=bearer(eve)), 401, "account_disabled")
                assert_error(await http.post(f"{base}/api/auth/login", json={"email": "eve@example.com", "password": PASSWORD}),
                             403, "account_disabled")
                assert (await http.post(f"{base}/api/auth/refresh", json={"refresh_token": eve2["refresh_token"]})).status_code == 401
            async with SignalClient.connect(stack.ws_url(stack.access_token(eve["user"]["id"]))) as again:
                assert await again.wait_closed(timeout=10) == 4003  # even a fresh token of the account
            # Re-enabled: signs in again (the old sessions stay ended).
            r = await http.patch(f"/api/admin/users/{eve['user']['id']}", json={"disabled": False}, headers=bearer(root))
            assert r.status_code == 200 and r.json()["disabled"] is False
            back = await login(http, "eve@example.com")
            assert (await http.get("/api/me", headers=bearer(back))).status_code == 200
            assert_error(await http.get("/api/me", headers=bearer(eve2)), 401, "session_revoked")
            # An administrator cannot lock themself out.
            r = await http.patch(f"/api/admin/users/{root['user']['id']}", json={"disabled": True}, headers=bearer(root))
            assert_error(r, 409, "self")


@pytest.mark.redis
async def test_rooms_sizes_and_live_numbers(tmp_path, redis_url, redis_prefix):
    # A runner's /metrics (its real gauge names, in a registry of its own) and one that is down.
    registry = CollectorRegistry()
    Gauge("codesync_runner_sandboxes", "sandboxes running now", registry=registry).set(2)
    Gauge("codesync_runner_waiting", "runs in line", registry=registry).set(1)
    runner_port, dead_port = free_port(), free_port()
    ops = OpsServer("127.0.0.1", runner_port, "runner", registry=registry)
    await ops.start()
    try:
        urls = f"http://127.0.0.1:{runner_port}/metrics,http://127.0.0.1:{dead_port}/metrics"
        async with signaling_stack(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2,
                                   CODESYNC_ADMIN_METRICS_URLS=urls) as stack:
            n0, n1 = (node.url or "" for node in stack.nodes)
            settings = Settings(database_url=stack.database_url, data_dir=tmp_path / "cli")
            await admin.create_user(settings, "root@example.com", "Root", PASSWORD, is_admin=True)
            seeded = await stack.seed_room({"alice": "owner", "bob": "editor"}, name="Big room")
            # Stored document updates for the room (what the persistence peer writes).
            from codesync import db

            engine = db.create_engine(settings)
            try:
                async with db.session_factory(engine)() as session:
                    session.add_all([DocumentUpdate(room_id=seeded.id, data=b"x" * 1000) for _ in range(3)])
                    await session.commit()
            finally:
                await engine.dispose()
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(f"{n0}/api/auth/login", json={"email": "root@example.com", "password": PASSWORD})
                root = r.json()
                async with SignalClient.connect(stack.ws_url(seeded.token("alice"), node=0)) as a, \
                        SignalClient.connect(stack.ws_url(seeded.token("bob"), node=1)) as b:
                    for client in (a, b):
                        await client.subscribe(seeded.id)
                        await client.expect("presence")

                    async def both_nodes_counted():
                        s = (await http.get(f"{n0}/api/admin/stats", headers=bearer(root))).json()
                        return s if s["signaling"]["connected_users"] == 2 and s["signaling"]["nodes"] == 2 else None

                    stats = await wait_for(both_nodes_counted, timeout=20, interval=0.5, what="both nodes' snapshots")
                    assert stats["signaling"]["active_rooms"] == 1  # one room, users on two nodes: counted once
                    runner = stats["runner"]
                    assert runner["configured"] and runner["runs_in_progress"] == 2 and runner["runs_waiting"] == 1
                    assert runner["unreachable"] == 1
                    down = [s for s in runner["sources"] if not s["ok"]]
                    assert down and down[0]["url"].endswith(f":{dead_port}/metrics")  # shown as down, not as zero
                    rooms = (await http.get(f"{n1}/api/admin/rooms", params={"q": "big"}, headers=bearer(root))).json()["rooms"]
                    assert len(rooms) == 1
                    big = rooms[0]
                    assert big["members"] == 2 and big["stored_updates"] == 3 and big["stored_bytes"] == 3000
                    assert big["owner_name"] == "Alice"

                    async def connected_now():
                        rs = (await http.get(f"{n1}/api/admin/rooms", headers=bearer(root))).json()["rooms"]
                        return rs[0]["connected_now"] == 2

                    await wait_for(connected_now, timeout=20, interval=0.5, what="connected users per room")
    finally:
        await ops.stop()


async def test_without_runner_urls_the_page_says_runs_are_not_observed(api: Api):
    await admin.create_user(api.settings, "root@example.com", "Root", PASSWORD, is_admin=True)
    root = await login(api.client, "root@example.com")
    stats = (await api.client.get("/api/admin/stats", headers=bearer(root))).json()
    assert stats["runner"]["configured"] is False and stats["runner"]["runs_in_progress"] is None
    assert "CODESYNC_ADMIN_METRICS_URLS" in stats["runner"]["note"]
    assert stats["signaling"]["connected_users"] == 0 and stats["signaling"]["nodes"] == 1


def test_codesync_user_create_admin(tmp_path):
    """The command line makes an administrator whose address counts as verified."""
    import subprocess
    import sys

    from tests.helpers.components import ROOT
    from tests.helpers.processes import child_env

    env = child_env(CODESYNC_DATA_DIR=str(tmp_path / "d"), CODESYNC_PASSWORD="a long password",
                    CODESYNC_SECRET_KEY=secrets.token_urlsafe(48))
    done = subprocess.run([sys.executable, "-m", "codesync.cli", "user", "create", "op@example.com", "--admin"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import asyncio

    from codesync import db
    from codesync.models import User

    async def check() -> User:
        engine = db.create_engine(Settings(data_dir=tmp_path / "d"))
        try:
            async with db.session_factory(engine)() as session:
                from sqlmodel import select

                return (await session.exec(select(User))).one()
        finally:
            await engine.dispose()

    user = asyncio.run(check())
    assert user.email == "op@example.com" and user.is_admin and user.email_verified
