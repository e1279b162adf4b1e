"""Operations endpoints: ``/healthz``, ``/metrics`` and ``GET /api/ice-servers``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from ..errors import ApiError
from ..principal import Principal, bearer_token, principal_from_token, require_user
from ..settings import Settings
from ..state import get_state
from ..tokens import TokenError

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    state = get_state(request)
    checks: dict[str, str] = {}
    try:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"error: {type(exc).__name__}"
    if state.redis is not None:
        try:
            await state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def ice_servers(settings: Settings, user_id: str, now: float | None = None) -> list[dict]:
    """RTCIceServer list: STUN as configured, TURN with TURN-REST-API credentials.

    username = "<expiry unix time>:<user id>", credential = base64(HMAC-SHA1(secret, username)),
    the scheme coturn checks with ``use-auth-secret`` / ``static-auth-secret``.
    """
    servers: list[dict] = []
    if settings.stun_url_list:
        servers.append({"urls": settings.stun_url_list})
    if settings.turn_url_list and settings.turn_secret:
        expiry = int((now or time.time()) + settings.turn_ttl)
        username = f"{expiry}:{user_id}"
        digest = hmac.new(settings.turn_secret.encode(), username.encode(), hashlib.sha1).digest()
        servers.append(
            {"urls": settings.turn_url_list, "username": username, "credential": base64.b64encode(digest).decode()}
        )
    return servers


@routes.get("/api/ice-servers")
async def get_ice_servers(request: web.Request) -> web.Response:
    state = get_state(request)
    principal = await _any_principal(request)
    ident = principal.user_id or f"service-{principal.service}"
    return web.json_response(ice_servers(state.settings, ident))


async def _any_principal(request: web.Request) -> Principal:
    """Users and service peers both need ICE servers."""
    token = bearer_token(request)
    if token is None:
        return await require_user(request)
    try:
        return await principal_from_token(get_state(request), token, allow_service=True)
    except TokenError as exc:
        raise ApiError(401, exc.code, exc.message) from None


def setup(app: web.Application) -> None:
    app.add_routes(routes)
