"""Shared fixtures. Services are real: SQLite files, PostgreSQL, Redis, child processes."""

from __future__ import annotations

import os

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer

from signaling.app import create_app
from codesync.settings import Settings
from tests.support import REDIS_URL, port_open, postgres_database, require
from tests.dockerd import docker_daemon, docker_image  # noqa: F401  (session fixtures: ONE private dockerd per session)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path: Path) -> AsyncIterator[str]:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'codesync.db'}"
    else:
        async with postgres_database() as url:
            yield url


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'codesync.db'}"


@pytest.fixture
def redis_url() -> str:
    require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A private key/channel namespace, so tests sharing the one Redis never collide."""
    return f"cstest-{secrets.token_hex(4)}"


@pytest.fixture
def make_settings(tmp_path: Path):
    def make(**overrides) -> Settings:
        # Tests register accounts and mint invites at once; the default (unverified accounts
        # mint no invites) is tested in tests/test_accounts_*.py, which pass it explicitly.
        values = dict(data_dir=tmp_path / "data", secret_key=secrets.token_urlsafe(48), unverified_accounts="full")
        values.update(overrides)
        return Settings(**values)

    return make


class Api:
    """An in-process signaling app on a real loopback port, with an httpx client."""

    def __init__(self, server: TestServer, client: httpx.AsyncClient, settings: Settings):
        self.server = server
        self.client = client
        self.settings = settings
        self.base_url = str(server.make_url("")).rstrip("/")

    async def register(self, email: str | None = None, password: str = "correct horse battery", name: str = "Test"):
        email = email or f"user-{secrets.token_hex(4)}@example.com"
        r = await self.client.post("/api/auth/register", json={"email": email, "password": password, "name": name})
        assert r.status_code == 201, r.text
        body = r.json()
        body["password"] = password
        return body

    @staticmethod
    def auth(body_or_token) -> dict[str, str]:
        token = body_or_token if isinstance(body_or_token, str) else body_or_token["access_token"]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(make_settings, database_url) -> AsyncIterator[Api]:
    async with _api(make_settings(database_url=database_url)) as a:
        yield a


@pytest.fixture
async def api_sqlite(make_settings, sqlite_url) -> AsyncIterator[Api]:
    async with _api(make_settings(database_url=sqlite_url)) as a:
        yield a


from contextlib import asynccontextmanager  # noqa: E402


@asynccontextmanager
async def _api(settings: Settings, port: int | None = None) -> AsyncIterator[Api]:
    """The signaling app in this process on 127.0.0.1 (``port``: a fixed one, e.g. a registered redirect URI)."""
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as client:
            yield Api(server, client, settings)
    finally:
        await server.close()


# Opt-in test groups: marker -> the variable that selects them (README, "Tests").
OPT_IN = {
    "images": "CODESYNC_TEST_IMAGES",  # deployment image builds, ~6 min
    "compose": "CODESYNC_TEST_COMPOSE",  # the whole compose.yaml stack started for real, ~10 min
}


def pytest_collection_modifyitems(config, items) -> None:
    """Opt-in groups (see ``OPT_IN``) run only when their variable is ``1``.

    They are deselected, not skipped: a skip means a missing component, which fails in CI.
    """
    off = {marker for marker, variable in OPT_IN.items() if os.environ.get(variable) != "1"}
    kept, deselected = [], []
    for item in items:
        (deselected if any(item.get_closest_marker(m) for m in off) else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
