"""A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

CodeSync's one token bucket. It lives in the lowest layer every user may import (the peer
library; tests/test_layers.py) and uses the standard library only, so importing it pulls in
nothing else (``peer/__init__`` is lazy). Its users: the peer library (awareness and app
messages per link), the persistence peer's history server (requests per link), the runner
(runs, refusals and console input per user) and the signaling server (frames per connection).
tests/test_ratelimit.py checks no second one appears.

The clock is injectable so a caller with a clock of its own (a test, the runner's) decides
what "now" is; by default it is ``time.monotonic`` — never wall time, which can jump.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Starts full. ``take()`` spends tokens when there are enough, else spends nothing."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "_clock")

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self.stamp = clock()

    def take(self, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if the bucket holds them now; True when spent."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g}, tokens={self.tokens:.2f})"
