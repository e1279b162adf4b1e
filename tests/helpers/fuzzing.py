"""Shared plumbing for the fuzz tests (tests/test_fuzz_*.py).

Hypothesis drives *synchronous* test functions, while the services under test are async
(aiohttp WebSockets, aiortc peers). :class:`LiveLoop` runs one event loop in a thread for the
whole module, so the live stack (processes, connections, peers) is set up once and every
Hypothesis example just submits a coroutine to it.

Budget: ``FUZZ_EXAMPLES`` (env) scales the number of examples; the defaults keep each fuzz
test well under a minute for CI. A long run, e.g.::

    FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_signal.py -p no:timeout
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, settings

T = TypeVar("T")


def examples(default: int) -> int:
    """The number of Hypothesis examples for one fuzz test (FUZZ_EXAMPLES overrides)."""
    value = os.environ.get("FUZZ_EXAMPLES")
    return max(1, int(value)) if value else default


def fuzz_settings(default_examples: int) -> settings:
    """Shrinking against live services takes many minutes; it is on only with FUZZ_SHRINK=1
    (the failing example is printed either way)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("FUZZ_SHRINK") == "1":
        phases.append(Phase.shrink)
    return settings(
        phases=phases,
        report_multiple_bugs=False,
        max_examples=examples(default_examples),
        deadline=None,  # a live server: timing varies, hangs are caught by LiveLoop.run's timeout
        database=None,  # no .hypothesis/ directory in the work tree; failures print their example
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


class LiveLoop:
    """An asyncio loop in a daemon thread; ``run`` submits a coroutine and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the live loop; a hang beyond ``timeout`` fails the example."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"hang: no answer within {timeout}s") from None

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(drain(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
