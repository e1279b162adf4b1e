"""Operations endpoints: ``/healthz``, ``/metrics`` and ``GET /api/ice-servers``.

Also the request-id middleware: every HTTP request (and so every ``/signal`` connection) gets
an id — the reverse proxy's ``X-Request-Id`` when it sent a sane one, else a fresh one — that
is put on every log line written while handling it (``codesync.logs.REQUEST_ID``), returned
in the ``X-Request-Id`` response header, and counted in the HTTP metrics.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from sqlalchemy import text

from ..errors import ApiError
from codesync.logs import REQUEST_ID
from ..principal import Principal, bearer_token, principal_from_token, require_user
from codesync.settings import Settings
from ..state import get_state
from ..tokens import TokenError

routes = web.RouteTableDef()

HEALTH_TIMEOUT = 3.0  # a dependency that hangs is a failed dependency: answer within the probe's timeout
REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "codesync_http_requests_total", "HTTP requests answered by signaling", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "codesync_http_request_seconds",
    "HTTP request duration (WebSocket sessions excluded)",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _route_label(request: web.Request) -> str:
    """The route pattern (bounded label set), never the raw path."""
    resource = request.match_info.route.resource if request.match_info.route else None
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def request_id_middleware(request: web.Request, handler) -> web.StreamResponse:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if _SANE_ID.match(offered) else secrets.token_hex(8)
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
        REQUEST_ID.reset(token)
        route = _route_label(request)
        method = request.method if request.method in _METHODS else "OTHER"  # clients pick methods: bound them
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        if status != 101:  # a WebSocket session's length says nothing about latency
            HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


async def _check(probe) -> str:
    try:
        await asyncio.wait_for(probe(), HEALTH_TIMEOUT)
        return "ok"
    except asyncio.TimeoutError:
        return "error: timeout"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"error: {type(exc).__name__}"


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 when the database (and Redis, when configured) answer; 503 naming what failed."""
    state = get_state(request)

    async def database() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    probes = {"database": database}
    if state.redis is not None:
        probes["redis"] = state.redis.ping
    names = list(probes)
    results = await asyncio.gather(*(_check(probes[name]) for name in names))
    checks = dict(zip(names, results))
    healthy = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if healthy else "degraded", "checks": checks}, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; on the public port only with ``CODESYNC_PUBLIC_METRICS`` (see ``setup``)."""
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def health_checks(state) -> dict:
    """The checks of ``/healthz``, for the ops port's server as well."""

    async def database() -> bool:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    checks = {"database": database}
    if state.redis is not None:
        checks["redis"] = state.redis.ping
    return checks


async def _ops_port(app: web.Application):
    """``/healthz`` and ``/metrics`` on ``CODESYNC_OPS_PORT``: for scrapers, never via the proxy."""
    from codesync.opsserver import OpsServer

    state = get_state(app)
    settings = state.settings
    if settings.ops_port is None:
        yield
        return
    server = OpsServer(settings.ops_host or settings.host, settings.ops_port, "signaling", health_checks(state))
    await server.start()
    try:
        yield
    finally:
        await server.stop()


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
    # /metrics tells anyone who reaches it how many people use which rooms how hard: it is
    # served on the ops port (CODESYNC_OPS_PORT); on the public port only when asked for.
    if get_state(app).settings.public_metrics:
        app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_ops_port)
    # Outermost, so it sees the final status (after the JSON error middleware) and every
    # log line of the request — including a /signal connection's — carries the id.
    app.middlewares.insert(0, request_id_middleware)
