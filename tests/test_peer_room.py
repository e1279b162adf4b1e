"""peer.Room with real aiortc peers on loopback and a real ``codesync signaling`` process."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pycrdt
import pytest
import pytest_asyncio

from peer import PeerInfo, Room, SignalingClient
from peer import protocol as p
from peer import text as ptext
from tests.helpers.stack import Stack, signaling_stack
from tests.helpers.components import ROOT
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

ICE_HOSTS = "127.0.0.1"  # loopback-only ICE (the network rule of every test)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory) -> AsyncIterator[Stack]:
    async with signaling_stack(tmp_path_factory.mktemp("peer-room")) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def seeded(stack: Stack):
    return await stack.seed_room({"alice": "owner", "bob": "editor", "carol": "editor", "dave": "viewer"})


@asynccontextmanager
async def joined(stack: Stack, seeded, *labels: str, **kw) -> AsyncIterator[list[Room]]:
    async with AsyncExitStack() as es:
        rooms = []
        for label in labels:
            room = Room(stack.url, seeded.token(label), seeded.id, ice_hosts=ICE_HOSTS, **kw)
            await room.start()
            es.push_async_callback(room.stop)
            rooms.append(room)
        yield rooms


def source(room: Room) -> pycrdt.Text:
    return room.doc.get("source", type=pycrdt.Text)


async def all_connected(rooms: list[Room], timeout: float = 15.0) -> None:
    n = len(rooms) - 1
    await wait_for(lambda: all(len(r.connected_peers) == n for r in rooms), timeout, what="full mesh")


async def converged(rooms: list[Room], timeout: float = 15.0) -> str:
    await wait_for(lambda: len({str(source(r)) for r in rooms}) == 1, timeout, what="documents equal")
    return str(source(rooms[0]))


# ------------------------------------------------------------------ convergence and identity


async def test_peers_converge_on_concurrent_edits_and_know_each_other(stack, seeded) -> None:
    async with joined(stack, seeded, "alice", "bob", "carol") as rooms:
        await all_connected(rooms)
        a, b, c = rooms
        info = a.peers[b.peer_id]
        assert isinstance(info, PeerInfo) and info.connected
        assert info.user_id == seeded.user("bob").id and info.name == "Bob" and info.sender["role"] == "editor"
        assert info.caps == {"chunk", "app", "docs", "roles", "mesh", "relayed"}
        rng = random.Random(7)
        for i in range(60):  # interleaved concurrent edits at random UTF-16 positions
            for r in rooms:
                t = source(r)
                s = str(t)
                cut = rng.choice([0] + [k + 1 for k, ch in enumerate(s) if ch == ">"])  # between tokens
                pos = ptext.codepoint_to_utf16(s, cut)
                ptext.insert_utf16(t, pos, f"<{r.peer_id[:2]}{i}é>")
            if i % 10 == 0:
                await asyncio.sleep(0)
        final = await converged(rooms)
        for r in rooms:
            for i in range(60):
                assert f"<{r.peer_id[:2]}{i}é>" in final
        remote_updates: list[tuple[bytes, str]] = []
        a.on_update(lambda u, origin: remote_updates.append((u, origin)))
        del source(c)[0:3]
        await converged(rooms)
        await wait_for(lambda: remote_updates, what="on_update for c's delete")
        assert {origin for _, origin in remote_updates} == {c.peer_id}


async def test_a_late_joiner_gets_the_document_and_awareness(stack, seeded) -> None:
    async with joined(stack, seeded, "alice") as (a,):
        source(a).insert(0, "print('hi')\n")
        alice = seeded.user("alice")
        a.awareness.set_local_state({"user": {"id": alice.id, "name": "Alice Ünïcode", "color": "#f00"},
                                     "status": "ünïcode ✓", "cursor": 3})
        t0 = time.monotonic()
        async with joined(stack, seeded, "bob") as (b,):
            await b.wait_synced(a.peer_id, timeout=10)
            assert time.monotonic() - t0 < 5
            assert str(source(b)) == "print('hi')\n"
            await wait_for(lambda: a.awareness.client_id in b.awareness.states, what="awareness")
            state = b.awareness.states[a.awareness.client_id]
            assert state["status"] == "ünïcode ✓"  # non-ASCII survives the encoder
            assert state["user"] == {"id": alice.id, "name": "Alice", "color": "#f00"}  # the stamped name
        # bob left: his awareness state goes from alice's view
        await wait_for(lambda: len(a.connected_peers) == 0, what="bob's link dropped")


async def test_sync_answers_are_held_until_the_store_is_loaded(stack, seeded) -> None:
    stored = pycrdt.Doc()
    stored.get("source", type=pycrdt.Text).insert(0, "stored text")
    ready = asyncio.Event()
    async with joined(stack, seeded, "alice", ready=ready) as (svc,):
        async with joined(stack, seeded, "bob") as (b,):
            await all_connected([svc, b])
            source(b).insert(0, "B:")
            await wait_for(lambda: "B:" in str(source(svc)), what="svc receives bob's edit before loading")
            with pytest.raises(asyncio.TimeoutError):
                await b.wait_synced(svc.peer_id, timeout=0.5)  # not answered yet
            assert not svc.sync_released
            svc.load(stored.get_update())
            ready.set()
            await b.wait_synced(svc.peer_id, timeout=5)
            assert await converged([svc, b]) in ("B:stored text", "stored textB:")


# ------------------------------------------------------------------ extensions and caps


async def test_app_messages_go_only_to_peers_advertising_app(stack, seeded) -> None:
    async with joined(stack, seeded, "alice", "bob") as (a, b), joined(stack, seeded, "carol", caps=()) as (c,):
        await all_connected([a, b, c])
        got_b: list[tuple[dict, str]] = []
        got_c: list[tuple[dict, str]] = []
        b.on_app(lambda obj, sender: got_b.append((obj, sender)))
        c.on_app(lambda obj, sender: got_c.append((obj, sender)))
        assert a.peers[c.peer_id].caps == frozenset()
        assert await a.broadcast_app({"op": "run", "run_id": "r1"}) == 1
        assert await a.send_app(c.peer_id, {"op": "stop"}) is False
        assert await a.send_app(b.peer_id, {"op": "stop", "run_id": "r1"}) is True
        await wait_for(lambda: len(got_b) == 2, what="app messages at bob")
        assert got_b == [({"op": "run", "run_id": "r1"}, a.peer_id), ({"op": "stop", "run_id": "r1"}, a.peer_id)]
        assert got_c == [] and c.stats["app_in"] == 0


async def test_a_5mb_document_syncs_through_chunks(stack, seeded) -> None:
    big = "".join(f"line {i:07d} {'x' * 40}\n" for i in range(100_000))  # ~5.3 MB
    assert len(big) > 5_000_000
    async with joined(stack, seeded, "alice") as (a,):
        source(a).insert(0, big)
        t0 = time.monotonic()
        async with joined(stack, seeded, "bob") as (b,):
            await b.wait_synced(a.peer_id, timeout=30)
            elapsed = time.monotonic() - t0
            assert str(source(b)) == big
            assert b.stats["chunks_in"] > 1
            print(f"5 MB join-to-synced: {elapsed * 1000:.0f} ms")


async def test_no_chunks_to_a_peer_without_the_chunk_cap(stack, seeded) -> None:
    """A peer without ``chunk`` (a stock y-webrtc client) gets a large document as bounded
    updates (peer/segments.py), never a chunk nor a message above its limit; a single value
    too big for it cannot be split: dropped, counted."""
    big = "y" * 600_000  # above aiortc's 64 KiB max-message-size and Chromium's 256 KiB
    async with joined(stack, seeded, "alice") as (a,):
        source(a).insert(0, big)
        async with joined(stack, seeded, "bob", caps=()) as (b,):
            await all_connected([a, b])
            await b.wait_synced(a.peer_id, timeout=20)
            assert str(source(b)) == big and b.stats["chunks_in"] == 0 and b.stats["bad_frames"] == 0
            link = a.links[b.peer_id]
            assert a.stats["oversize_split"] == 1 and link.dropped_oversize == 0
            source(a).insert(0, "z")  # small messages flow as they are
            await wait_for(lambda: str(source(b)) == "z" + big, what="b gets the small update")
            a.doc.get("blobs", type=pycrdt.Map)["one"] = b"\x01" * 300_000  # one value: no bounded split
            await wait_for(lambda: link.dropped_oversize >= 1, what="the unsplittable update dropped")
            assert a.stats["oversize_unsplittable"] == 1 and b.stats["bad_frames"] == 0


# ------------------------------------------------------------------ bad input


async def test_malformed_frames_unknown_types_and_rejected_updates_are_survived(stack, seeded) -> None:
    async with joined(stack, seeded, "alice", "bob") as (a, b):
        await all_connected([a, b])
        attacker = a.links[b.peer_id].conn
        garbage = [
            b"",
            b"\x80\x80",
            b"\x00\x01\x40abc",  # truncated SyncStep2
            b"\x00\x02\x05\x01\x02\x03\x04\x05",  # Update pycrdt rejects
            b"\x00\x00\x03\xff\xff\xff",  # SyncStep1 with a broken state vector
            b"\x63hello",  # unknown type 99
            b"\x96\x01xx",  # unknown type 150
            b"\x04\x01x",  # BroadcastChannel peer id: ignored
            b"\x65\x03{{{",  # app, not JSON
            p.encode_chunk(1, 1, 3, b"x"),  # chunk without its start
            p.encode_awareness(b"\x01\x01\x01\x05{bad"),
        ]
        for frame in garbage:
            assert attacker.send(frame)
        source(a).insert(0, "still fine")
        await wait_for(lambda: str(source(b)) == "still fine", what="a good edit after the garbage")
        assert b.stats["bad_frames"] >= 7 and b.stats["rejected_updates"] >= 1 and b.stats["unknown_types"] == 2
        assert a.peer_id in b.connected_peers
        # a peer that keeps sending garbage loses its link ... and a fresh one is made
        for _ in range(b.limits.errors_before_drop + 5):
            attacker.send(b"\x00\x01\x40abc")
        await wait_for(lambda: attacker.closed, what="b drops the abusive link")
        await all_connected([a, b], timeout=20)
        source(b).insert(0, ">")
        await wait_for(lambda: str(source(a)) == ">still fine", what="edits flow on the new link")


async def test_an_awareness_flood_is_bounded_and_query_awareness_answered(stack, seeded) -> None:
    async with joined(stack, seeded, "alice", "bob") as (a, b):
        await all_connected([a, b])
        b.awareness.set_local_state({"user": {"id": seeded.user("bob").id, "name": "Bob"}})
        attacker = a.links[b.peer_id].conn
        for i in range(1000):
            ids = range(i * 50 + 1000, i * 50 + 1050)
            update = p.encode_awareness_update(
                {cid: {"user": {"name": "x" * 50}} for cid in ids}, {cid: {"clock": 1} for cid in ids}, list(ids)
            )
            attacker.send(p.encode_awareness(update))
        await wait_for(lambda: b.stats["awareness_dropped"] > 0, what="flood throttled")
        source(a).insert(0, "after flood")
        await wait_for(lambda: str(source(b)) == "after flood", timeout=30, what="edits after the flood")
        assert len(b.awareness.states) <= b.limits.awareness_clients
        before = a.stats["awareness_in"]
        attacker.send(p.encode_query_awareness())
        await wait_for(lambda: a.stats["awareness_in"] > before, what="answer to query awareness")
        await wait_for(lambda: b.awareness.client_id in a.awareness.states, what="bob's state at alice")


_CHILD = """
import asyncio, sys
sys.path.insert(0, {root!r})
from peer import Room
async def main():
    room = Room({url!r}, {token!r}, {room!r}, ice_hosts="127.0.0.1")
    await room.start()
    print("joined", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_a_peer_vanishing_mid_sync_is_dropped_and_others_carry_on(stack, seeded, tmp_path: Path) -> None:
    big = "v" * 3_000_000
    async with joined(stack, seeded, "alice") as (a,):
        source(a).insert(0, big)
        opened: list[str] = []
        a.on_peer(lambda pid, info, event: opened.append(pid) if event == "connected" else None)
        code = _CHILD.format(root=str(ROOT), url=stack.url, token=seeded.token("carol"), room=seeded.id)
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            await wait_for(lambda: opened, timeout=20, what="the child's link opens")
            os.kill(child.pid, signal.SIGKILL)  # in the middle of receiving ~3 MB of chunks
        finally:
            child.kill()
            child.wait(10)
        await wait_for(lambda: opened[0] not in a.links, timeout=40, what="the dead link dropped")
        async with joined(stack, seeded, "bob") as (b,):
            await b.wait_synced(a.peer_id, timeout=20)
            assert str(source(b)) == big


# ------------------------------------------------------------------ service peers


async def test_a_service_client_joins_many_rooms_over_one_connection(stack, seeded) -> None:
    other = await stack.seed_room({"erin": "owner"})
    token = await stack.service_token("persistence")
    client = SignalingClient(stack.url, token)
    active: list[str] = []
    idle: list[str] = []
    rooms: dict[str, Room] = {}

    async def activate(topic: str) -> None:
        active.append(topic)
        if topic in (seeded.id, other.id) and topic not in rooms:
            room = rooms[topic] = Room.over(client, topic, ice_hosts=ICE_HOSTS, hold_sync=True)
            await room.start()
            stored = pycrdt.Doc()
            stored.get("source", type=pycrdt.Text).insert(0, f"stored {topic}")
            room.load(stored.get_update())
            room.release_sync()

    client.on_room_active(activate)
    client.on_room_idle(idle.append)
    await client.start()
    try:
        async with joined(stack, seeded, "alice") as (a,), joined(stack, other, "erin") as (e,):
            await wait_for(lambda: seeded.id in rooms and other.id in rooms, what="service joined both rooms")
            svc_a = rooms[seeded.id]
            await a.wait_synced(svc_a.peer_id, timeout=10)
            await e.wait_synced(rooms[other.id].peer_id, timeout=10)
            assert str(source(a)) == f"stored {seeded.id}" and str(source(e)) == f"stored {other.id}"
            assert a.peers[svc_a.peer_id].service == "persistence"
            assert client.connects == 1
        await wait_for(lambda: {seeded.id, other.id} <= set(idle), what="room-idle for both")
    finally:
        for room in rooms.values():
            await room.stop()
        await client.stop()


async def test_named_documents_are_held_chunked_and_never_relayed(stack, seeded) -> None:
    """Type 102: a service's ``runs`` document reaches the peers linked to it (SyncStep1 held
    until release, chunked when large, live updates), is never relayed by anyone, and a
    person's own writes to it are kept to themselves."""
    client = SignalingClient(stack.url, await stack.service_token("persistence"))
    await client.start()
    svc = Room.over(client, seeded.id, ice_hosts=ICE_HOSTS, hold_sync=True, max_conns=1)  # links to alice only
    await svc.start()
    try:
        async with joined(stack, seeded, "alice") as (a,):
            await wait_for(lambda: svc.peer_id in a.connected_peers, 20, what="alice and the service linked")
            a_runs = a.docs["runs"].get("runs", type=pycrdt.Map)
            with pytest.raises(AssertionError):  # held: nothing before release_sync
                await wait_for(lambda: len(a_runs), 0.5, what="runs before release")
            stored = pycrdt.Doc()
            stored.get("runs", type=pycrdt.Map)["r1"] = pycrdt.Map(
                {"status": "finished", "output": pycrdt.Text("o" * 300_000)})
            svc.load(stored.get_update(), doc="runs")
            svc.release_sync()
            await wait_for(lambda: "r1" in a_runs, 20, what="the stored runs in the named SyncStep2")
            assert len(str(a_runs["r1"]["output"])) == 300_000 and a.stats["chunks_in"] > 1
            async with joined(stack, seeded, "bob") as (b,):
                await wait_for(lambda: a.peer_id in b.connected_peers, 20, what="bob linked to alice")
                assert svc.peer_id not in b.links  # the service is at max_conns: bob only hears alice
                svc.docs["runs"].get("runs", type=pycrdt.Map)["r2"] = pycrdt.Map({"status": "queued"})
                await wait_for(lambda: "r2" in a_runs, what="a live update of the runs document")
                a_runs["mine"] = pycrdt.Map({"status": "finished"})  # alice may not write runs: kept
                assert a.stats["withheld_updates"] >= 1
                source(svc).insert(0, "marker")  # the main document is relayed by alice
                await wait_for(lambda: str(source(b)) == "marker", what="bob gets the main document via alice")
                assert len(b.docs["runs"].get("runs", type=pycrdt.Map)) == 0  # but no runs: never relayed
                assert "mine" not in svc.docs["runs"].get("runs", type=pycrdt.Map)
    finally:
        await svc.stop()
        await client.stop()


# ------------------------------------------------------------------ y-webrtc signalling details


async def test_glare_both_sides_offering_ends_in_one_working_link(stack, seeded) -> None:
    # max_conns=0: nobody initiates on announce; then both initiate in the same loop turn
    async with joined(stack, seeded, "alice", "bob", max_conns=0) as (a, b):
        a.max_conns = b.max_conns = 10
        a._mesh.on_announce(b.peer_id)  # what an announce from the other makes the mesh do
        b._mesh.on_announce(a.peer_id)
        assert a.links[b.peer_id].initiator and b.links[a.peer_id].initiator
        await all_connected([a, b])
        link_a, link_b = a.links[b.peer_id], b.links[a.peer_id]
        assert link_a.initiator != link_b.initiator  # exactly one offer won
        source(a).insert(0, "after glare")
        await wait_for(lambda: str(source(b)) == "after glare", what="edit over the surviving link")


async def test_trickled_candidates_are_accepted_and_foreign_ones_dropped(stack, seeded) -> None:
    """Peer B behaves like a browser: SDP without candidates, then one signal per candidate."""
    async with joined(stack, seeded, "alice") as (a,):
        b = Room(stack.url, seeded.token("bob"), seeded.id, ice_hosts=ICE_HOSTS)
        original = b._mesh.publish_signal
        trickled: list[str] = []

        async def trickling(to: str, signal: dict, token) -> None:
            if signal.get("type") not in ("offer", "answer"):
                return await original(to, signal, token)
            lines = signal["sdp"].split("\r\n")
            cands = [line[2:] for line in lines if line.startswith("a=candidate:")]
            mid = next(line[6:] for line in lines if line.startswith("a=mid:"))
            sdp = "\r\n".join(line for line in lines if not line.startswith("a=candidate:") and line != "a=end-of-candidates")
            await original(to, {"type": signal["type"], "sdp": sdp}, token)
            foreign = [
                "candidate:9 1 udp 2122260223 192.0.2.7 50000 typ host",  # outside the allowed networks
                "candidate:8 1 udp 2122260223 4f0e9e3c-1d7a-4c55-9d1e-5b2b7d1c0a11.local 50001 typ host",
            ]
            for cand in foreign + cands:
                trickled.append(cand)
                await original(to, {"type": "candidate", "candidate": {"candidate": cand, "sdpMid": mid, "sdpMLineIndex": 0}}, token)
            await original(to, {"type": "candidate", "candidate": {"candidate": "", "sdpMid": mid, "sdpMLineIndex": 0}}, token)

        b._mesh.publish_signal = trickling  # type: ignore[method-assign]
        await b.start()
        try:
            await all_connected([a, b])
            assert len(trickled) >= 3
            source(b).insert(0, "trickled")
            await wait_for(lambda: str(source(a)) == "trickled", what="edit over the trickled link")
            remote_hosts = {c.host for c in a.links[b.peer_id].conn._pc.sctp.transport.transport._connection.remote_candidates}
            assert "192.0.2.7" not in remote_hosts and "127.0.0.1" in remote_hosts
        finally:
            await b.stop()


async def test_peers_survive_a_signaling_restart_and_rejoin(tmp_path) -> None:
    from tests.helpers.processes import start_service
    from tests.helpers.wait import wait_http_ok

    async with signaling_stack(tmp_path) as st:
        seeded = await st.seed_room({"alice": "owner", "bob": "editor", "carol": "editor"})
        a = Room(st.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
        b = Room(st.url, seeded.token("bob"), seeded.id, ice_hosts=ICE_HOSTS)
        refreshed: list[str] = []

        async def fresh_token() -> str:  # a user peer's access token may have expired meanwhile
            refreshed.append(st.access_token(seeded.user("alice").id))
            return refreshed[-1]

        a.signaling.token_provider = fresh_token
        for r in (a, b):
            r.signaling.backoff_max = 0.5
            await r.start()
        try:
            await all_connected([a, b])
            node = st.nodes[0]
            node.kill()
            await wait_for(lambda: not a.signaling.connected and not b.signaling.connected, what="signaling gone")
            source(a).insert(0, "p2p ")  # the data channels do not need signaling
            await wait_for(lambda: str(source(b)) == "p2p ", what="edit without signaling")
            st.nodes[0] = start_service(["signaling"], node.env, tmp_path / "signaling-restarted.log")
            st.nodes[0].url = node.url
            await wait_http_ok(f"{node.url}/healthz", st.nodes[0])
            await wait_for(lambda: a.signaling.connects == 2 and b.signaling.connects == 2, 20, what="reconnected")
            assert refreshed and a.signaling.token == refreshed[-1]
            async with joined(st, seeded, "carol") as (c,):  # re-subscribed: a newcomer meets both
                await all_connected([a, b, c], timeout=20)
                assert str(source(c)) == "p2p " or await converged([a, b, c])
        finally:
            await b.stop()
            await a.stop()


# ------------------------------------------------------------------ roles


async def test_a_non_member_is_refused_and_a_viewer_cannot_edit(stack, seeded) -> None:
    other = await stack.seed_room({"erin": "owner", "eve": None})
    outsider = Room(stack.url, other.token("eve"), other.id, ice_hosts=ICE_HOSTS)
    with pytest.raises(PermissionError):
        await outsider.start()
    async with joined(stack, seeded, "alice", "dave") as (a, viewer):
        await all_connected([a, viewer])
        assert a.peers[viewer.peer_id].sender["role"] == "viewer" and a.role_of(viewer.peer_id) == "viewer"
        source(viewer).insert(0, "vandalism")  # a CodeSync peer that may not write keeps it to itself
        assert viewer.stats["withheld_updates"] >= 1
        source(a).insert(0, "hello viewer")
        await wait_for(lambda: "hello viewer" in str(source(viewer)), what="viewer receives edits")
        # ... and a viewer that sends anyway (straight down its data channel) is dropped
        forged = pycrdt.Doc()
        forged.get("source", type=pycrdt.Text).insert(0, "forced vandalism")
        viewer.links[a.peer_id].conn.send(p.encode_sync_update(forged.get_update()))
        await wait_for(lambda: a.dropped.get(("update", "read_only"), 0) >= 1, what="viewer's update dropped")
        assert str(source(a)) == "hello viewer" and a.stats["updates_dropped"] >= 1
