"""Process-wide objects of the signaling server, stored on the aiohttp app under one key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from codesync.settings import Settings
from .tokens import TokenService

if TYPE_CHECKING:  # pragma: no cover
    from redis.asyncio import Redis


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenService
    redis: "Redis | None" = None
    # Feature modules keep their own objects here (e.g. "hub" for the signaling hub).
    extras: dict[str, Any] = field(default_factory=dict)


STATE: web.AppKey[AppState] = web.AppKey("codesync_state", AppState)


def get_state(request_or_app: web.Request | web.Application) -> AppState:
    app = request_or_app.app if isinstance(request_or_app, web.Request) else request_or_app
    return app[STATE]
