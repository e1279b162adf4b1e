"""Fuzzing data-channel frames against a LIVE persistence peer (``codesync persist``).

Alice (an aiortc ``peer.Room``) sends Hypothesis-built batches straight down her data channel
to the persistence peer: y-protocols sync messages with random/truncated/foreign updates and
state vectors, truncated varints, absurd lengths, awareness garbage, chunking-extension frames
(bad counts/indexes, huge ids, shuffled/duplicated/missing parts of a real message, chunks in
chunks), app messages with bad JSON, unknown types. Valid updates from a side document are
mixed in (and also applied to alice's document), so the stored document must change exactly
as the peers' does. After every batch:

- the persistence process is alive and has logged no traceback;
- after a fresh edit by alice, the persistence peer reports it saved everything alice has
  (reconnecting first if it dropped alice's link for too many bad frames);
- the stored document (read from the database) equals alice's document.

At the end a fresh peer loads the document from the persistence peer alone.
Budget: ``FUZZ_EXAMPLES`` (see tests/helpers/fuzzing.py).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer import Room
from peer import protocol as p
from peer.chunking import split_message
from tests.helpers.fuzzing import LiveLoop, fuzz_settings
from tests.helpers.processes import Service
from tests.helpers.wait import wait_for
from tests.helpers.persistence import persist_stack, persistence_peers, saved_covers, source, stored_text

pytestmark = pytest.mark.timeout(170)

ICE_HOSTS = "127.0.0.1"  # loopback-only ICE

# ----------------------------------------------------------------------------- strategies
varuints = st.one_of(st.integers(0, 300), st.integers(0, 2**53), st.integers(2**53, 2**80))


def vu(n: int) -> bytes:
    return p.write_var_uint(n)


def side_update(seed: int, text: str) -> bytes:
    """A real update from another client: inserts ``text`` into ``source``.

    One client id per distinct content: two different updates claiming the same (client,
    clock) are Byzantine input no CRDT peer can settle alike (not what this test is about)."""
    doc = pycrdt.Doc(client_id=1_000_000 + zlib.crc32(f"{seed}:{text}".encode("utf-8", "surrogatepass")) % 2**30)
    doc["source"] = t = pycrdt.Text()
    t.insert(0, text)
    return doc.get_update()


real_updates = st.tuples(st.integers(0, 10_000), st.text(min_size=1, max_size=30).map(lambda s: s.encode("utf-8", "replace").decode())).map(
    lambda a: ("valid", side_update(*a))
)
payloads = st.one_of(
    st.binary(max_size=200),
    real_updates.map(lambda v: v[1]),
    st.tuples(real_updates, st.integers(1, 40)).map(lambda a: a[0][1][: -a[1]] if len(a[0][1]) > a[1] else a[0][1][:1]),
    st.just(p.EMPTY_UPDATE),
    st.just(b"\x00"),
)


def with_len(body: bytes, claimed: int | None) -> bytes:
    return (vu(len(body)) if claimed is None else vu(claimed)) + body


garbage_frames = st.one_of(
    # sync: random step, random or truncated payload, lying lengths
    st.tuples(varuints, payloads, st.none() | varuints).map(lambda a: vu(0) + vu(a[0] % 5 if a[0] < 2**53 else a[0]) + with_len(a[1], a[2])),
    st.tuples(st.sampled_from([0, 1, 2]), payloads).map(lambda a: vu(0) + vu(a[0]) + with_len(a[1], None)),
    # truncated varints / bare types
    st.sampled_from([b"", b"\x80", b"\x00\x80", b"\x00\x02\xff", b"\xff" * 12, b"\x64\x80", b"\x65\xff\xff\xff\xff\x0f", b"\x01", b"\x03", b"\x04"]),
    # awareness garbage
    st.binary(max_size=200).map(lambda b: vu(1) + with_len(b, None)),
    st.tuples(varuints, varuints, st.text(max_size=60)).map(
        lambda a: vu(1) + with_len(vu(1) + vu(a[0]) + vu(a[1]) + p.write_var_string(a[2]), None)
    ),
    # chunks: lying headers
    st.tuples(varuints, varuints, varuints, st.binary(max_size=100), st.none() | varuints).map(
        lambda a: vu(100) + vu(a[0]) + vu(a[1]) + vu(a[2]) + with_len(a[3], a[4])
    ),
    # app messages
    st.text(max_size=100).map(lambda s: vu(101) + p.write_var_string(s)),
    st.binary(max_size=60).map(lambda b: vu(101) + with_len(b, None)),
    st.sampled_from(['{"op":"run"}', '{"op":"stop","run_id":null}', "[1,2]", "null", '{"op":' * 50]).map(
        lambda s: vu(101) + p.write_var_string(s)
    ),
    # unknown types, random bytes
    st.tuples(varuints, st.binary(max_size=50)).map(lambda a: vu(a[0]) + a[1]),
    st.binary(max_size=300),
)


def chunked(frame: bytes, size: int, msg_id: int, rnd: random.Random, mode: str) -> list[bytes]:
    parts = split_message(frame, size, msg_id)
    if mode == "shuffle":
        rnd.shuffle(parts)
    elif mode == "duplicate":
        parts = parts + parts[: max(1, len(parts) // 2)]
    elif mode == "drop" and len(parts) > 1:
        parts.pop(rnd.randrange(len(parts)))
    elif mode == "nest":
        parts = [p.encode_chunk(msg_id + 1, 0, 1, part) for part in parts]
    return parts


chunk_batches = st.tuples(
    real_updates, st.integers(48, 200), st.integers(0, 2**40), st.randoms(use_true_random=False),
    st.sampled_from(["ok", "shuffle", "duplicate", "drop", "nest"]),
)
items = st.one_of(
    garbage_frames.map(lambda f: ("raw", f)),
    real_updates.map(lambda v: ("valid", v[1])),
    chunk_batches.map(lambda a: ("chunked", (p.encode_sync_update(a[0][1]), a[1], a[2], a[3], a[4]))),
)
batches = st.lists(items, min_size=1, max_size=12)


# ----------------------------------------------------------------------------- live stack
@dataclass
class Live:
    loop: LiveLoop
    stack: Any
    persister: Service
    seeded: Any
    alice: Room
    tmp: Path
    edits: int = 0


def persistence_link(room: Room):
    peers = persistence_peers(room)
    return room.links.get(peers[0]) if peers else None


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz-dc")
    loop = LiveLoop()
    cm = persist_stack(tmp)

    async def setup() -> Live:
        stack, persisters = await cm.__aenter__()
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        svc = persisters.start()
        alice = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
        await alice.start()
        await wait_for(lambda: persistence_peers(alice), 30, what="persistence peer joins")
        source(alice).insert(0, "start\n")
        await wait_for(lambda: saved_covers(alice), 20, what="first save")
        return Live(loop, stack, svc, seeded, alice, tmp)

    live = loop.run(setup(), 90)
    try:
        yield live
    finally:

        async def teardown() -> None:
            if live.edits != -1:
                await live.alice.stop()
            await cm.__aexit__(None, None, None)

        try:
            loop.run(teardown(), 60)
        finally:
            loop.close()


def mirror(doc: pycrdt.Doc, frame: bytes) -> None:
    """If ``frame`` is a sync update pycrdt might accept, give it to alice's document as well,
    so both sides hold the same content (pycrdt decides alike on both)."""
    try:
        msg = p.parse_message(frame)
    except p.ProtocolError:
        return
    if isinstance(msg, p.SyncMessage) and msg.step in (p.SYNC_STEP2, p.SYNC_UPDATE) and msg.payload != p.EMPTY_UPDATE:
        try:
            doc.apply_update(msg.payload)
        except BaseException as exc:  # pyo3 panics derive from BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise


async def send_batch(live: Live, batch: list[tuple[str, Any]]) -> None:
    alice = live.alice
    await wait_for(lambda: persistence_link(alice) is not None, 30, what="a link to the persistence peer")
    link = persistence_link(alice)
    for kind, value in batch:
        if kind == "raw":
            mirror(alice.doc, value)
            link.conn.send(value)
        elif kind == "valid":
            alice.doc.apply_update(value)  # alice has it too (and forwards it); re-sending is idempotent
            link.conn.send(p.encode_sync_update(value))
        else:
            frame, size, msg_id, rnd, mode = value
            # Alice applies it whatever happens to the parts: she forwards it herself, so the
            # persistence peer must end up with it exactly once either way.
            alice.doc.apply_update(p.parse_message(frame).payload)
            for part in chunked(frame, size, msg_id, rnd, mode):
                link.conn.send(part)


async def settle_and_compare(live: Live) -> None:
    alice = live.alice
    live.edits += 1
    text = source(alice)
    text.insert(len(text), f"edit {live.edits}\n")
    await wait_for(lambda: persistence_link(alice) is not None, 30, what="the persistence peer back after a drop")
    await wait_for(lambda: saved_covers(alice), 30, what="the persistence peer saved alice's document")
    stored = await stored_text(live.stack.database_url, live.seeded.id, live.tmp)
    assert stored == str(source(alice)), "stored document differs from the peer's"


def check_persister(live: Live) -> None:
    assert live.persister.proc.poll() is None, f"persistence peer died:\n{live.persister.log()[-3000:]}"
    log = live.persister.log()
    assert "Traceback" not in log, f"persistence peer logged a traceback:\n{log[-4000:]}"


@fuzz_settings(40)
@given(batch=batches)
def test_hostile_data_channel_frames_never_corrupt_the_stored_document(live: Live, batch) -> None:
    live.loop.run(send_batch(live, batch), 40)
    live.loop.run(settle_and_compare(live), 80)
    check_persister(live)


def test_zz_a_fresh_peer_loads_exactly_the_peers_document(live: Live) -> None:
    async def run() -> None:
        await wait_for(lambda: saved_covers(live.alice), 30, what="everything saved")
        expected = str(source(live.alice))
        await live.alice.stop()  # bob can only get it from the persistence peer now
        live.edits = -1
        bob = Room(live.stack.url, live.seeded.token("bob"), live.seeded.id, ice_hosts=ICE_HOSTS)
        await bob.start()
        try:
            await wait_for(lambda: str(source(bob)) == expected, 30, what="bob converges")
        finally:
            await bob.stop()

    live.loop.run(run(), 60)
    check_persister(live)
