"""The signaling app in the test's own process, on a real loopback port, with an httpx client.

For the HTTP API tests (accounts, rooms, invites, OAuth): no child process to start, yet every
request goes over TCP through aiohttp like a browser's. Fixtures ``api`` / ``api_sqlite`` in
tests/conftest.py wrap :func:`in_process_api`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp.test_utils import TestServer

from codesync.models import User
from codesync.settings import Settings
from signaling.accounts import issue_tokens
from signaling.app import create_app
from signaling.state import STATE


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


@asynccontextmanager
async def in_process_api(settings: Settings, port: int | None = None) -> AsyncIterator[Api]:
    """The signaling app in this process on 127.0.0.1 (``port``: a fixed one, e.g. a registered redirect URI)."""
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=30) as client:
            yield Api(server, client, settings)
    finally:
        await server.close()


async def account(api: Api, name: str = "Someone") -> dict:
    """A signed-in user without the Argon2 cost of /register (tested in test_auth.py)."""
    state = api.server.app[STATE]
    async with state.sessions() as session:
        user = User(email=f"{secrets.token_hex(6)}@example.com", name=name)
        session.add(user)
        await session.commit()
        return await issue_tokens(state, session, user)
