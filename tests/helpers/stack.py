"""A real signaling process with users, a room, memberships and tokens — for any test.

Usage (any test file)::

    from tests.helpers.stack import signaling_stack, SignalClient

    async def test_something(tmp_path):
        async with signaling_stack(tmp_path) as stack:          # one `codesync signaling` process
            room = await stack.seed_room({"alice": "owner", "bob": "viewer", "eve": None})
            async with SignalClient.connect(stack.ws_url(room.token("alice"))) as alice:
                await alice.subscribe(room.id)
                await alice.expect("presence")

- ``signaling_stack(tmp_path, redis_url=..., redis_prefix=..., nodes=2, **env)`` starts one or
  more nodes on one database (SQLite file under tmp_path unless ``database_url`` is given);
  ``env`` are extra ``CODESYNC_*`` variables (e.g. ``CODESYNC_PRESENCE_TTL="2"``).
- ``seed_room(database_url, secret, roles)`` writes users/room/memberships straight into the
  database with sqlmodel (no REST API needed) and returns a :class:`SeededRoom` with access
  tokens per label; a role of ``None`` makes a user who is *not* a member.
- ``service_token(database_url, secret, scope)`` makes a ``persistence``/``runner`` token.
- :class:`SignalClient` is a small aiohttp WebSocket client for ``/signal`` that keeps every
  frame it receives and lets a test wait for the next frame matching a predicate.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from codesync import db
from codesync.models import Membership, Role, Room, ServiceToken, User
from codesync.settings import Settings
from signaling.tokens import TokenService
from tests.helpers.components import free_port
from tests.helpers.processes import Service, child_env, start_service, start_signaling


# ----------------------------------------------------------------------------- seeding
@dataclass
class SeededUser:
    label: str
    id: str
    name: str
    role: str | None
    token: str


@dataclass
class SeededRoom:
    id: str
    users: dict[str, SeededUser]
    secret: str

    def token(self, label: str) -> str:
        return self.users[label].token

    def user(self, label: str) -> SeededUser:
        return self.users[label]


def _settings(database_url: str, secret: str, data_dir: Path | None = None) -> Settings:
    return Settings(database_url=database_url, secret_key=secret, data_dir=data_dir or Path("./data"))


async def seed_room(
    database_url: str,
    secret: str,
    roles: dict[str, str | None],
    name: str = "test room",
    language: str = "python",
    token_ttl: int | None = None,
) -> SeededRoom:
    """One room; a user per label in ``roles`` (role ``None`` = not a member); access tokens.

    The first label with role ``owner`` owns the room (one is created if none is given).
    """
    settings = _settings(database_url, secret)
    engine = db.create_engine(settings)
    tokens = TokenService(secret)
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            users: dict[str, User] = {}
            for label in roles:
                user = User(email=f"{label}-{secrets.token_hex(4)}@example.com", name=label.capitalize())
                session.add(user)
                users[label] = user
            owner_label = next((label for label, role in roles.items() if role == "owner"), None)
            if owner_label is None:
                owner = User(email=f"owner-{secrets.token_hex(4)}@example.com", name="Owner")
                session.add(owner)
            else:
                owner = users[owner_label]
            await session.flush()
            room = Room(name=name, language=language, owner_id=owner.id)
            session.add(room)
            await session.flush()
            for label, role in roles.items():
                if role is not None:
                    session.add(Membership(room_id=room.id, user_id=users[label].id, role=Role(role).value))
            await session.commit()
            seeded = {
                label: SeededUser(label, u.id, u.name, roles[label], tokens.issue_access(u.id, ttl=token_ttl)[0])
                for label, u in users.items()
            }
            return SeededRoom(room.id, seeded, secret)
    finally:
        await engine.dispose()


async def seed_rooms(
    database_url: str, secret: str, rooms: int, users_per_room: int, token_ttl: int | None = 3600
) -> list[SeededRoom]:
    """Many rooms at once (benchmarks): ``users_per_room`` fresh users each, labels ``u0..``;
    the first user of each room is its owner, the others editors."""
    settings = _settings(database_url, secret)
    engine = db.create_engine(settings)
    tokens = TokenService(secret)
    out: list[SeededRoom] = []
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            plan = []
            for r in range(rooms):
                users = [
                    User(email=f"r{r}u{i}-{secrets.token_hex(4)}@example.com", name=f"R{r}U{i}")
                    for i in range(users_per_room)
                ]
                session.add_all(users)
                plan.append(users)
            await session.flush()
            for users in plan:
                room = Room(name="bench", language="python", owner_id=users[0].id)
                session.add(room)
                await session.flush()
                seeded = {}
                for i, u in enumerate(users):
                    role = "owner" if i == 0 else "editor"
                    session.add(Membership(room_id=room.id, user_id=u.id, role=role))
                    seeded[f"u{i}"] = SeededUser(f"u{i}", u.id, u.name, role, tokens.issue_access(u.id, ttl=token_ttl)[0])
                out.append(SeededRoom(room.id, seeded, secret))
            await session.commit()
        return out
    finally:
        await engine.dispose()


async def add_member(database_url: str, secret: str, room_id: str, user_id: str, role: str) -> None:
    engine = db.create_engine(_settings(database_url, secret))
    try:
        async with db.session_factory(engine)() as session:
            session.add(Membership(room_id=room_id, user_id=user_id, role=Role(role).value))
            await session.commit()
    finally:
        await engine.dispose()


async def service_token(database_url: str, secret: str, scope: str = "persistence") -> str:
    engine = db.create_engine(_settings(database_url, secret))
    try:
        await db.migrate(engine)
        async with db.session_factory(engine)() as session:
            row = ServiceToken(scope=scope, name=f"test {scope}")
            session.add(row)
            await session.commit()
            return TokenService(secret).issue_service(row.id, scope)
    finally:
        await engine.dispose()


def access_token(secret: str, user_id: str, ttl: int | None = None) -> str:
    return TokenService(secret).issue_access(user_id, ttl=ttl)[0]


# ----------------------------------------------------------------------------- processes
@dataclass
class Stack:
    """CodeSync under test as real child processes: signaling node(s) on one database (and one
    Redis, when configured) and the service peers (``persist``, ``runner``) that join its rooms.

    The same class serves the loopback tests (:func:`signaling_stack`) and the browser tests
    inside their network namespace (``Stack(workdir, host=NS_ADDR)``, tests/helpers/netns.py).
    Nothing is started until asked; :meth:`stop` stops what was, newest first.
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0  # the first node's; 0 picks a free one (kept across a restart of that node)
    access_ttl: int | None = None  # seconds; short values exercise silent refresh and 4001 reconnects
    extra_env: dict[str, str] = field(default_factory=dict)
    database_url: str = ""  # default: a SQLite file in workdir
    secret: str = ""  # default: a fresh signing key
    env: dict[str, str] = field(default_factory=dict)  # the CODESYNC_* every process here gets
    nodes: list[Service] = field(default_factory=list)  # signaling nodes, in start order
    procs: dict[str, Service] = field(default_factory=dict)  # every process by name ("signaling", "persist")

    def base_env(self) -> dict[str, str]:
        """The shared settings, made once (work dir, port, secret and database are fixed here)."""
        if not self.env:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port(self.host)
            self.secret = self.secret or secrets.token_urlsafe(48)
            self.database_url = self.database_url or f"sqlite+aiosqlite:///{self.workdir / 'codesync.db'}"
            env = {
                "CODESYNC_DATABASE_URL": self.database_url,
                "CODESYNC_SECRET_KEY": self.secret,
                "CODESYNC_DATA_DIR": str(self.workdir / "data"),
                "CODESYNC_PUBLIC_METRICS": "true",  # tests read a node's /metrics on its one port
            }
            if self.access_ttl is not None:
                env["CODESYNC_ACCESS_TOKEN_TTL"] = str(self.access_ttl)
            env.update(self.extra_env)
            self.env = env
        return self.env

    def settings(self, **overrides: Any) -> Settings:
        """A :class:`Settings` for in-process helpers (admin commands, the document store) on this stack's data."""
        env = self.base_env()
        values: dict[str, Any] = dict(
            database_url=env["CODESYNC_DATABASE_URL"], secret_key=env["CODESYNC_SECRET_KEY"],
            data_dir=Path(env["CODESYNC_DATA_DIR"]), host=self.host, port=self.port,
        )
        return Settings(**{**values, **overrides})

    @property
    def url(self) -> str:
        return (self.nodes[0].url or "") if self.nodes else f"http://{self.host}:{self.port}"

    def ws_url(self, token: str | None, node: int = 0) -> str:
        base = (self.nodes[node].url or "").replace("http://", "ws://") + "/signal"
        return base if token is None else f"{base}?token={token}"

    async def start_signaling(self, **env: str) -> Service:
        """One more signaling node — or, when the first node has died, that node again on its port."""
        base = self.base_env()
        first = self.procs.get("signaling")
        if first is None or not first.alive():
            name, port = "signaling", self.port
        else:
            name, port = f"signaling-{len(self.nodes) + 1}", 0
        node = await start_signaling(self.workdir, child_env(**base, **env), host=self.host, port=port, name=name)
        if name == "signaling" and first is not None:
            self.nodes[self.nodes.index(first)] = node
        else:
            self.nodes.append(node)
        self.procs[name] = node
        return node

    async def start_service(self, command: str, scope: str, name: str | None = None, **env: str) -> Service:
        """``codesync persist`` / ``codesync runner`` with a fresh service token, on this stack's
        first node, gathering ICE candidates on the stack's host only."""
        name = name or command
        svc = start_service(
            [command],
            child_env(**{
                **self.base_env(),
                "CODESYNC_SIGNALING_URL": self.ws_url(None),
                "CODESYNC_SERVICE_TOKEN": await self.service_token(scope),
                "CODESYNC_ICE_HOSTS": self.host,
                **env,
            }),
            self.workdir / f"{name}.log",
            name=name,
        )
        self.procs[name] = svc
        return svc

    def stop(self) -> None:
        """Stop every process of the stack, newest first — a node a test put into ``nodes``
        itself (a restarted one) included."""
        every = {id(svc): svc for svc in [*self.nodes, *self.procs.values()]}
        for svc in reversed(list(every.values())):
            svc.stop()

    async def seed_room(self, roles: dict[str, str | None], **kw: Any) -> SeededRoom:
        return await seed_room(self.database_url, self.secret, roles, **kw)

    async def seed_rooms(self, rooms: int, users_per_room: int) -> list[SeededRoom]:
        return await seed_rooms(self.database_url, self.secret, rooms, users_per_room)

    async def service_token(self, scope: str = "persistence") -> str:
        self.base_env()
        return await service_token(self.database_url, self.secret, scope)

    def access_token(self, user_id: str, ttl: int | None = None) -> str:
        return access_token(self.secret, user_id, ttl)


@asynccontextmanager
async def signaling_stack(
    tmp_path: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
    nodes: int = 1,
    **env: str,
) -> AsyncIterator[Stack]:
    """Start ``nodes`` real ``codesync signaling`` processes on loopback; stop everything afterwards."""
    extra = dict(env)
    if redis_url:
        extra["CODESYNC_REDIS_URL"] = redis_url
    if redis_prefix:
        extra["CODESYNC_REDIS_PREFIX"] = redis_prefix
    stack = Stack(tmp_path, database_url=database_url or "", extra_env=extra)
    try:
        for _ in range(nodes):
            await stack.start_signaling()
        yield stack
    finally:
        stack.stop()


@asynccontextmanager
async def joined(
    stack: Stack, seeded: SeededRoom, *labels: str, ice_hosts: str = "127.0.0.1"
) -> AsyncIterator[list[Any]]:
    """Headless peers (``peer.Room``) of these seeded users in the room, stopped in reverse order.

    ``ice_hosts`` defaults to loopback-only ICE (the network rule of every test).
    """
    from peer import Room as PeerRoom  # aiortc is heavy; signaling-only tests never load it

    async with AsyncExitStack() as es:
        rooms = []
        for label in labels:
            room = PeerRoom(stack.url, seeded.token(label), seeded.id, ice_hosts=ice_hosts)
            await room.start()
            es.push_async_callback(room.stop)
            rooms.append(room)
        yield rooms


# ----------------------------------------------------------------------------- client
class SignalClient:
    """A ``/signal`` WebSocket client that records every frame for ``expect``."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session = session
        self.ws = ws
        self.frames: list[dict[str, Any]] = []  # everything received, in order
        self.pending: list[dict[str, Any]] = []  # received and not yet returned by expect()
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, **kw: Any) -> AsyncIterator["SignalClient"]:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(url, autoping=True, **kw)
            client = cls(session, ws)
            try:
                yield client
            finally:
                await client.close()
        finally:
            await session.close()

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    async with self._cond:
                        self.frames.append(frame)
                        self.pending.append(frame)
                        self._cond.notify_all()
        finally:
            async with self._cond:
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        elif isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_str(json.dumps(frame))

    async def subscribe(self, *topics: str) -> None:
        await self.send({"type": "subscribe", "topics": list(topics)})

    async def publish(self, topic: str, data: Any) -> None:
        await self.send({"type": "publish", "topic": topic, "data": data})

    async def expect(
        self, type_: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The oldest not-yet-returned frame of ``type_`` matching ``where`` (others stay pending)."""

        def match(f: dict[str, Any]) -> bool:
            return (type_ is None or f.get("type") == type_) and (where is None or where(f))

        async def find() -> dict[str, Any]:
            async with self._cond:
                while True:
                    for i, frame in enumerate(self.pending):
                        if match(frame):
                            return self.pending.pop(i)
                    if self._reader.done():
                        raise AssertionError(f"socket closed ({self.close_code}) before a {type_} frame; got {_short(self.pending)}")
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {type_} frame within {timeout}s; got {_short(self.pending)}") from None

    def forget(self, type_: str | None = None) -> None:
        """Drop pending frames (of ``type_``), so the next ``expect`` sees only newer ones."""
        self.pending[:] = [f for f in self.pending if type_ is not None and f.get("type") != type_]

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass


def _short(frames: list[dict[str, Any]], limit: int = 1500) -> str:
    text = repr(frames)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
