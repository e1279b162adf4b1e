"""The library's one event emitter: pyee's ``AsyncIOEventEmitter`` (as aiortc uses it) with
the two rules the peer API promises (``peer/__init__.py``, "Callbacks"):

- ``subscribe(event, cb)`` returns an ``unsubscribe()`` callable, so ``room.on_update(cb)``
  and friends keep their shape;
- a failing callback is logged, never propagated: a bug in the persistence peer's store
  callback must not break the frame that carried the update. pyee turns every exception of
  a handler (and of the task a coroutine handler became) into an ``error`` event; this
  emitter always listens to it and logs. So ``error`` is reserved: name no event of yours so.

A coroutine callback runs as a task; ``cancel()`` (Room.stop) cancels the unfinished ones.
Each subscription is its own listener, even of the same function twice (pyee alone would
merge those), so ``unsubscribe()`` removes exactly the one it was made for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

__all__ = ["Emitter"]

log = logging.getLogger(__name__)


class Emitter(AsyncIOEventEmitter):
    def __init__(self, owner: str = "peer") -> None:
        super().__init__()
        self.owner = owner  # names the object in the log line of a failed callback
        self.on("error", self._callback_failed)

    def subscribe(self, event: str, cb: Callable[..., Any]) -> Callable[[], None]:
        """Call ``cb(*args)`` on every ``emit(event, *args)`` until the returned function is called."""
        if event == "error":
            raise ValueError("'error' is reserved for failed callbacks")
        listener = functools.partial(cb)  # a distinct key per subscription

        def unsubscribe() -> None:
            with contextlib.suppress(KeyError):
                self.remove_listener(event, listener)

        self.add_listener(event, listener)
        return unsubscribe

    def _callback_failed(self, exc: BaseException) -> None:
        log.error("%s: a callback failed", self.owner, exc_info=(type(exc), exc, exc.__traceback__))
