"""The one token bucket (peer/ratelimit.py): its arithmetic on an injected clock, and that no
other module grows a copy of it."""

from __future__ import annotations

import ast

import pytest

from peer.ratelimit import TokenBucket
from tests.helpers.components import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_starts_full_and_refuses_past_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_refills_at_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=4.0, burst=2, clock=clock)
    assert bucket.take(2) and not bucket.take()
    clock.now += 0.25  # one token back
    assert bucket.take() and not bucket.take()
    clock.now += 3600  # a long idle time saves up only ``burst``
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def test_a_refused_take_spends_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert not bucket.take(5)
    assert bucket.take(3)


def test_per_minute_rates_as_the_runner_uses_them() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20 / 60.0, burst=1, clock=clock)  # 20 runs a minute, no saving up
    assert bucket.take() and not bucket.take()
    clock.now += 2.9
    assert not bucket.take()
    clock.now += 0.2
    assert bucket.take()


def test_a_clock_going_backwards_adds_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    assert bucket.take()
    clock.now -= 10
    assert not bucket.take()


def test_negative_rate_or_burst_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=-1)


def test_there_is_one_token_bucket() -> None:
    """No module but peer/ratelimit.py defines a bucket class (they drifted apart before)."""
    found = []
    for package in ("codesync", "peer", "signaling", "runner"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and "bucket" in node.name.lower():
                    found.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert found == ["peer/ratelimit.py:TokenBucket"]
