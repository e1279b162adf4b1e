"""Replay a real editing trace (josephg/editing-traces, rustcode) across two aiortc peers.

Every transaction of the trace is a real local pycrdt edit on peer A; the loop yields to
the event loop every ``BATCH`` transactions, so A's coalescing sends one merged update per
few milliseconds — exactly what happens when a person types faster than the network
round trip. Peer B must end with the trace's ``endContent``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path

import pycrdt
import pytest

from peer import Room
from peer import text as ptext
from signaling.settings import Settings
from tests.stack import signaling_stack
from tests.support import TRACES, require, wait_for

TRACE = TRACES / "rustcode.json.gz"
BATCH = 50


def load_trace(path: Path = TRACE) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def apply_txn(text: pycrdt.Text, current: str, patches: list) -> str:
    """Apply one trace transaction (code-point positions) as one pycrdt transaction."""
    with text.doc.transaction():
        for pos, delete, insert in patches:
            if delete:
                ptext.delete_codepoints(text, pos, delete, current)
                current = current[:pos] + current[pos + delete :]
            if insert:
                ptext.insert_codepoints(text, pos, insert, current)
                current = current[:pos] + insert + current[pos:]
    return current


@pytest.mark.timeout(180)
async def test_rustcode_trace_replayed_across_two_peers_converges(tmp_path) -> None:
    require("the editing traces", TRACE.exists(), f"{TRACE} (../shared/traces beside the checkout)")
    trace = load_trace()
    settings = Settings(ice_hosts="127.0.0.1")
    async with signaling_stack(tmp_path) as stack:
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        a = Room(stack.url, seeded.token("alice"), seeded.id, settings)
        b = Room(stack.url, seeded.token("bob"), seeded.id, settings)
        await a.start()
        await b.start()
        try:
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
            for i, txn in enumerate(trace["txns"], 1):
                current = apply_txn(text, current, txn["patches"])
                if i % BATCH == 0:
                    await asyncio.sleep(0)
            assert current == trace["endContent"] == str(text)
            b_text = b.doc.get("source", type=pycrdt.Text)
            await wait_for(lambda: str(b_text) == trace["endContent"], 60, what="bob reaches endContent")
            elapsed = time.monotonic() - t0
            print(f"\nreplayed {len(trace['txns'])} txns in {elapsed:.2f}s ({received} merged updates at bob)")
            assert received < len(trace["txns"])  # coalesced, not one message per keystroke
        finally:
            await b.stop()
            await a.stop()
