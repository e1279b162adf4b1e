"""Shared fixtures. Services are real: SQLite files, PostgreSQL, Redis, child processes."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from codesync.settings import Settings
from tests.helpers.components import REDIS_URL, port_open, postgres_database, require
from tests.helpers.api import Api, in_process_api
from tests.helpers.dockerd import docker_daemon, docker_image  # noqa: F401  (session fixtures: ONE private dockerd per session)
from tests.helpers.oauth import oauth_env, oidc_provider  # noqa: F401  (fixtures: the local OpenID provider)
from tests.helpers.sandbox import sandbox  # noqa: F401  (fixture: each sandbox backend)


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


@pytest.fixture
async def api(make_settings, database_url) -> AsyncIterator[Api]:
    async with in_process_api(make_settings(database_url=database_url)) as a:
        yield a


@pytest.fixture
async def api_sqlite(make_settings, sqlite_url) -> AsyncIterator[Api]:
    async with in_process_api(make_settings(database_url=sqlite_url)) as a:
        yield a


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
