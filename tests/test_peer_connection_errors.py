"""aiortc's own fire-and-forget tasks fail with ConnectionError when a link is closed while
they run (``RTCPeerConnection.__connect`` starting SCTP on a pending link that timed out);
aiortc never retrieves those errors, so asyncio would print a traceback into a service's log
for a link we closed on purpose. peer.connection logs them as one line and passes anything
else on to the loop's previous handler."""

from __future__ import annotations

import asyncio
import logging

import aioice

from peer.connection import quiet_closed_link_errors


async def test_a_closed_links_task_error_is_one_line_and_anything_else_goes_on(caplog) -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        quiet_closed_link_errors(loop)
        quiet_closed_link_errors(loop)  # idempotent: still one wrapper around our handler
        ice = aioice.Connection(ice_controlling=True)
        task = loop.create_task(ice.sendto(b"x", 1))  # aioice's own coroutine: not connected
        try:
            await task
        except ConnectionError as exc:
            error = exc
        with caplog.at_level(logging.INFO, logger="peer.connection"):
            loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": error, "future": task})
        assert seen == []
        assert any("a task of a link that was closed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)

        async def ours() -> None:
            raise ConnectionError("not aiortc's")

        other = loop.create_task(ours())
        try:
            await other
        except ConnectionError as exc:
            error = exc
        loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": error, "future": other})
        assert len(seen) == 1 and seen[0]["future"] is other
    finally:
        loop.set_exception_handler(None)
