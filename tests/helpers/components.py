"""What the tests need from the machine, and the rule for when it is missing.

Rule (docs/testing.md): a test may skip for a missing component only outside CI; under
``CI=true`` a missing component is a failure.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("CODESYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CODESYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require(component: str, available: bool, how: str = "") -> None:
    """Skip (locally) or fail (in CI) when a required component is missing."""
    if available:
        return
    message = f"{component} is not available" + (f": {how}" if how else "")
    if IN_CI:
        pytest.fail(f"CI requires {message}")
    pytest.skip(message)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the browser tests pass their namespace's address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    require("PostgreSQL", port_open("127.0.0.1", 5432), "start it on 127.0.0.1:5432")
    name = f"codesync_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
