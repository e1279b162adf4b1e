"""A tiny HTTP server with ``/healthz`` and ``/metrics`` for services that have no web app.

The persistence peer and the runner are not HTTP servers, but a deployment still needs to
ask them "are you alive and connected?" (Compose/Kubernetes healthchecks) and to scrape their
Prometheus metrics. Each of them starts one :class:`OpsServer` on ``CODESYNC_OPS_PORT``
(``CODESYNC_OPS_HOST``, default ``CODESYNC_HOST``); without that setting nothing listens.

Usage from a service::

    from codesync.opsserver import ops_server

    async with ops_server(settings, "persistence", checks={"database": db_ok, "signaling": connected}):
        ...  # run until stopped

A check is a callable (sync or async) returning ``True``/``"ok"`` when healthy, or ``False`` /
a short string saying what is wrong; one that raises counts as failed. ``/healthz`` answers
200 ``{"status": "ok", "service", "checks"}`` when every check passes and 503 otherwise —
the same shape as the signaling server's ``/healthz``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Union

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from .settings import Settings

log = logging.getLogger("codesync.ops")

CheckResult = Union[bool, str, None]
Check = Callable[[], Union[CheckResult, Awaitable[CheckResult]]]

CHECK_TIMEOUT = 3.0  # a healthcheck that hangs is a failed healthcheck


async def run_checks(checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT) -> dict[str, str]:
    """Run every check concurrently; each yields ``"ok"`` or ``"error: ..."``."""

    async def one(check: Check) -> str:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await asyncio.wait_for(value, timeout)
        except asyncio.TimeoutError:
            return "error: timeout"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return f"error: {type(exc).__name__}"
        if value is True or value == "ok":
            return "ok"
        if value is False or value is None:
            return "error: failed"
        return str(value) if str(value).startswith("error") else f"error: {value}"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[name]) for name in names))
    return dict(zip(names, results))


class OpsServer:
    """``/healthz`` + ``/metrics`` on one port; start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        service: str,
        checks: Mapping[str, Check] | None = None,
        registry: CollectorRegistry = REGISTRY,
    ):
        self.host = host
        self.port = port
        self.service = service
        self.checks: dict[str, Check] = dict(checks or {})
        self.registry = registry
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        checks = await run_checks(self.checks)
        healthy = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if healthy else "degraded", "service": self.service, "checks": checks}
        return web.json_response(body, status=200 if healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("%s ops endpoints on http://%s:%s (/healthz, /metrics)", self.service, self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def ops_server(
    settings: Settings, service: str, checks: Mapping[str, Check] | None = None
) -> AsyncIterator[OpsServer | None]:
    """Run an :class:`OpsServer` for the block when ``CODESYNC_OPS_PORT`` is set, else yield None."""
    if settings.ops_port is None:
        yield None
        return
    server = OpsServer(settings.ops_host or settings.host, settings.ops_port, service, checks)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
