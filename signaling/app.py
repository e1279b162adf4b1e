"""The signaling server's aiohttp application: REST API, ``/signal``, web client, ops."""

from __future__ import annotations

import logging

from aiohttp import web

from codesync import db

from . import sessions, webclient
from .api import auth as auth_api
from .api import oauth as oauth_api
from .api import ops as ops_api
from .api import rooms as rooms_api
from .api import service as service_api
from .errors import error_middleware
from codesync.settings import Settings
from .ws import server as signal_server
from .state import STATE, AppState
from .tokens import TokenService

log = logging.getLogger("codesync.app")

MAX_BODY = 1024 * 1024  # REST bodies are small; the document never goes through here.


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY)
    engine = db.create_engine(settings)
    app[STATE] = AppState(
        settings=settings,
        engine=engine,
        sessions=db.session_factory(engine),
        tokens=TokenService(
            settings.effective_secret_key,
            access_ttl=settings.access_token_ttl,
            invite_ttl=settings.invite_ttl,
            service_ttl=settings.service_token_ttl,
        ),
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    for feature in (auth_api, oauth_api, service_api, rooms_api, ops_api, signal_server, sessions, webclient):
        feature.setup(app)
    return app


async def _database(app: web.Application):
    state = app[STATE]
    await db.migrate(state.engine)
    yield
    await state.engine.dispose()


async def _redis(app: web.Application):
    state = app[STATE]
    if state.settings.redis_url:
        from redis.asyncio import Redis

        state.redis = Redis.from_url(state.settings.redis_url)
    yield
    if state.redis is not None:
        await state.redis.aclose()
