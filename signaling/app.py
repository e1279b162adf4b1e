"""The signaling server's aiohttp application: REST API, ``/signal``, web client, ops."""

from __future__ import annotations

import logging

from aiohttp import web

from codesync import db

from . import livestats, mail, selfservice, sessions, webclient
from .api import account as account_api
from .api import admin as admin_api
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
    mail.check_config(settings)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_background_mail)
    for feature in (auth_api, oauth_api, account_api, admin_api, service_api, rooms_api, ops_api, signal_server,
                    sessions, livestats, webclient):
        feature.setup(app)
    return app


async def _background_mail(app: web.Application):
    """On the way down, let the account jobs and mails already queued finish (bounded)."""
    yield
    state = app[STATE]
    await selfservice.flush_jobs(state)
    await mail.flush(state)


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
