"""Replay a real editing trace (josephg/editing-traces, rustcode) across two aiortc peers.

Every transaction of the trace is a real local pycrdt edit on peer A; the loop yields to
the event loop every ``BATCH`` transactions, so A's coalescing sends one merged update per
few milliseconds — exactly what happens when a person types faster than the network
round trip. Peer B must end with the trace's ``endContent``.
"""

from __future__ import annotations

import asyncio
import time

import pycrdt
import pytest

from tests.helpers.traces import load_trace, replay, trace_path
from tests.helpers.stack import joined, signaling_stack
from tests.helpers.components import require
from tests.helpers.wait import wait_for

TRACE = "rustcode"
BATCH = 50


@pytest.mark.timeout(180)
async def test_rustcode_trace_replayed_across_two_peers_converges(tmp_path) -> None:
    require("the editing traces", trace_path(TRACE).exists(), f"{trace_path(TRACE)} (tests/data/traces in the repository)")
    trace = load_trace(TRACE)
    async with signaling_stack(tmp_path) as stack:
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with joined(stack, seeded, "alice", "bob") as (a, b):
            await wait_for(lambda: a.connected_peers and b.connected_peers, 15, what="link")
            await b.wait_synced(a.peer_id)
            received = 0

            def count(update: bytes, origin: str) -> None:
                nonlocal received
                received += 1

            b.on_update(count)
            text = a.doc.get("source", type=pycrdt.Text)
            current = trace["startContent"]
            t0 = time.monotonic()
            for i, current in enumerate(replay(text, trace), 1):
                if i % BATCH == 0:
                    await asyncio.sleep(0)
            assert current == trace["endContent"] == str(text)
            b_text = b.doc.get("source", type=pycrdt.Text)
            await wait_for(lambda: str(b_text) == trace["endContent"], 60, what="bob reaches endContent")
            elapsed = time.monotonic() - t0
            print(f"\nreplayed {len(trace['txns'])} txns in {elapsed:.2f}s ({received} merged updates at bob)")
            assert received < len(trace["txns"])  # coalesced, not one message per keystroke
