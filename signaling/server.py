"""Run the signaling server until SIGINT/SIGTERM, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app
from codesync.settings import Settings

log = logging.getLogger("codesync.signaling")


async def run_signaling(settings: Settings) -> int:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=5.0)
    await site.start()
    log.info("signaling listening on http://%s:%s", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()  # on_shutdown closes WebSockets with 1001 going away
    return 0
