"""Room logic over in-memory links (tests/helpers/memory_peers.py): no signaling process, no aiortc.

Whole ``peer.Room``s talk through an in-memory hub that behaves as docs/protocol.md says the
server does (fan-out with the ``sender`` stamp, presence on every change, ``forbidden`` on
removal) and through in-memory transports. The trust rules are attacked as a modified client
would: frames straight down its links (``link.conn.send``), and signaling frames fed to a
room's signalling part. tests/test_peer_room.py and tests/test_trust_peers.py keep doing the
same with real processes and aiortc; this file is fast and deterministic.

Also here: the library's event emitter and token bucket, and its import rules (the peer
library imports nothing of the server; no two of its files import each other).
"""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import pycrdt
import pytest

from peer import Room
from peer import protocol as p
from peer.events import Emitter
from peer.ratelimit import TokenBucket
from tests.helpers.memory_peers import MemoryHub
from tests.helpers.rooms import drops, forged_update, source, started, turns
from tests.helpers.components import ROOT
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(30)


# ----------------------------------------------------------------------------- helpers




def runs(room: Room) -> pycrdt.Map:
    return room.docs["runs"].get("runs", type=pycrdt.Map)


async def linked(*rooms: Room) -> None:
    """Every room has an open link to every other one and has its SyncStep2."""
    for r in rooms:
        others = [o.peer_id for o in rooms if o is not r]
        await wait_for(lambda r=r, others=others: all(pid in r.connected_peers and r.peers[pid].synced for pid in others),
                       what=f"{r.peer_id[:6]} linked and synced")








# ----------------------------------------------------------------------------- sync
async def test_two_rooms_sync_both_ways_coalesce_and_report_only_remote_updates() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="bob")) as (a, b):
        await linked(a, b)
        assert a.principal(b.peer_id).user_id == "bob" and a.role_of(b.peer_id) == "editor"
        assert b.peers[a.peer_id].caps == frozenset(p.CAPS)
        seen_a: list[str] = []
        seen_b: list[tuple[bytes, str]] = []
        a.on_update(lambda update, origin: seen_a.append(origin))
        b.on_update(lambda update, origin: seen_b.append((update, origin)))
        wire = a.links[b.peer_id].conn
        before = len(wire.sent)
        for ch in "hello":  # five keystrokes in one loop turn ...
            source(a).insert(len(source(a)), ch)
        await wait_for(lambda: str(source(b)) == "hello", what="a's edits at b")
        assert len(wire.sent) - before == 1  # ... travel as one merged message
        assert {origin for _, origin in seen_b} == {a.peer_id} and seen_a == []  # local edits fire nothing
        source(b).insert(0, ">")
        await wait_for(lambda: str(source(a)) == ">hello", what="b's edit at a")
        assert seen_a == [b.peer_id]


async def test_a_late_joiner_gets_document_awareness_and_stamped_names() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    hub.names["alice"] = "Alice"
    async with started(hub.room(user="alice")) as (a,):
        source(a).insert(0, "print('hi')\n")
        a.awareness.set_local_state({"user": {"id": "alice", "name": "The Queen", "color": "#f00"}, "cursor": 3})
        async with started(hub.room(user="bob")) as (b,):
            await b.wait_synced(a.peer_id, timeout=5)
            assert str(source(b)) == "print('hi')\n"
            await wait_for(lambda: a.awareness.client_id in b.awareness.states, what="a's awareness at b")
            assert b.awareness.states[a.awareness.client_id]["user"] == {"id": "alice", "name": "Alice", "color": "#f00"}
        # b left: its link and its awareness are gone at a
        await wait_for(lambda: not a.connected_peers, what="b's link closed")


async def test_sync_answers_are_held_until_the_stored_documents_are_loaded() -> None:
    hub = MemoryHub(roles={"bob": "editor"})
    stored, stored_runs = pycrdt.Doc(), pycrdt.Doc()
    stored.get("source", type=pycrdt.Text).insert(0, "stored")
    stored_runs.get("runs", type=pycrdt.Map)["r1"] = pycrdt.Map({"status": "finished"})
    async with started(hub.room(service="persistence", hold_sync=True), hub.room(user="bob")) as (svc, b):
        await wait_for(lambda: svc.peer_id in b.connected_peers, what="linked")
        source(b).insert(0, "B:")
        await wait_for(lambda: str(source(svc)) == "B:", what="svc receives before loading")
        with pytest.raises(asyncio.TimeoutError):
            await b.wait_synced(svc.peer_id, timeout=0.2)  # held
        assert not svc.sync_released and len(runs(b)) == 0
        svc.load(stored.get_update())
        svc.load(stored_runs.get_update(), doc="runs")
        svc.release_sync()
        await b.wait_synced(svc.peer_id, timeout=5)
        await wait_for(lambda: "r1" in runs(b), what="the stored runs document")
        assert str(source(b)) in ("B:stored", "storedB:") and str(source(svc)) == str(source(b))


async def test_large_messages_travel_in_chunks_and_never_above_the_limit() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor", "carol": "editor"}, max_message_size=4096)
    big = "".join(f"line {i:05d}\n" for i in range(5000))  # ~55 KB
    async with started(hub.room(user="alice")) as (a,):
        source(a).insert(0, big)
        async with started(hub.room(user="bob")) as (b,):
            await b.wait_synced(a.peer_id, timeout=5)
            assert str(source(b)) == big and b.stats["chunks_in"] > 10
        # a stock peer (no "chunk" cap) gets it as a sequence of bounded updates (peer/segments.py),
        # the last one a SyncStep2; never a chunk, never a message above its limit
        async with started(hub.room(user="carol", caps=())) as (c,):
            await c.wait_synced(a.peer_id, timeout=5)
            assert str(source(c)) == big and c.stats["chunks_in"] == 0
            assert a.stats["oversize_split"] == 1 and a.links[c.peer_id].dropped_oversize == 0
            assert c.stats["updates_in"] > 10  # the segments before the last
            source(a).insert(0, "z")  # small messages flow as they are
            await wait_for(lambda: str(source(c)) == "z" + big, what="the next edit")
    assert hub.oversize == []


# ----------------------------------------------------------------------------- the trust model
async def test_a_viewer_write_is_dropped_counted_and_never_relayed() -> None:
    hub = MemoryHub(roles={"ed": "editor", "carol": "editor", "vic": "viewer"})
    ed = hub.room(user="ed")
    carol = hub.room(user="carol", max_conns=1)  # links to ed only: anything of vic's at carol was relayed
    vic = hub.room(user="vic")
    async with started(ed, carol):
        await linked(ed, carol)
        source(ed).insert(0, "shared\n")
        async with started(vic):
            await linked(ed, vic)
            assert vic.peer_id not in carol.links
            await wait_for(lambda: str(source(vic)) == "shared\n", what="the viewer reads")
            source(vic).insert(0, "VANDAL ")  # its own Room keeps it ...
            assert vic.stats["withheld_updates"] >= 1 and drops(ed, "update", "read_only") == 0
            link = vic.links[ed.peer_id]  # ... a modified client sends it anyway
            assert link.conn.send(p.encode_sync_update(forged_update(vic, "FORGED ")))
            assert link.conn.send(p.encode_sync_step2(vic.doc.get_update()))
            await wait_for(lambda: drops(ed, "update", "read_only") == 2, what="ed drops both")
            assert ed.stats["updates_dropped"] == 2 and ed.peers[vic.peer_id].synced  # the handshake completed
            source(ed).insert(len(source(ed)), "after\n")
            await wait_for(lambda: str(source(carol)) == "shared\nafter\n", what="carol gets ed's next edit")
            await wait_for(lambda: str(source(vic)) == "VANDAL shared\nafter\n", what="vic still reads")
            assert str(source(ed)) == "shared\nafter\n"


async def test_a_demotion_in_a_presence_frame_makes_the_link_read_only_at_once() -> None:
    hub = MemoryHub(roles={"alice": "owner", "ed": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="ed")) as (alice, ed):
        await linked(alice, ed)
        source(ed).insert(0, "ed\n")
        await wait_for(lambda: str(source(alice)) == "ed\n", what="ed writes")
        stamp_role = alice.peers[ed.peer_id].sender["role"]
        hub.set_role("ed", "viewer")  # the server's presence frame
        await wait_for(lambda: alice.role_of(ed.peer_id) == "viewer" and ed.own_principal.role == "viewer",
                       what="the demotion reaches both over presence")
        assert stamp_role == alice.peers[ed.peer_id].sender["role"] == "editor"  # the stamp is stale; presence wins
        assert ed.links[alice.peer_id].conn.send(p.encode_sync_update(forged_update(ed, "FORGED ")))
        source(ed).insert(0, "kept\n")
        assert ed.stats["withheld_updates"] >= 1
        await wait_for(lambda: drops(alice, "update", "read_only") == 1, what="alice drops it")
        source(alice).insert(len(source(alice)), "alice\n")
        await wait_for(lambda: str(source(ed)) == "kept\ned\nalice\n", what="ed still reads")
        assert str(source(alice)) == "ed\nalice\n"
        hub.set_role("ed", "editor")  # promoted: the kept edit goes out
        await wait_for(lambda: str(source(alice)) == "kept\ned\nalice\n", what="ed's kept edit after promotion")


async def test_a_removed_member_loses_every_link_and_is_ignored_until_listed_again() -> None:
    hub = MemoryHub(roles={"alice": "owner", "mal": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="mal")) as (alice, mal):
        await linked(alice, mal)
        mal_stamp = alice.peers[mal.peer_id].sender
        mal._mesh.removed_from_room = lambda: None  # a modified client: ignores its removal, keeps its links
        hub.remove("mal")
        await wait_for(lambda: not alice.connected_peers and not mal.connected_peers, what="alice closed the link")
        assert alice.principal(mal.peer_id).role is None and not mal.removed
        # an announce of mal's reaching alice (through another path) is ignored and counted
        alice_client = alice.signaling
        hub.send(alice_client, {"type": "publish", "topic": hub.topic, "sender": mal_stamp,
                                "data": {"type": "announce", "from": mal.peer_id, "caps": list(p.CAPS)}})
        await wait_for(lambda: drops(alice, "signal", "removed") == 1, what="the announce dropped")
        await turns()
        assert mal.peer_id not in alice.links


async def test_awareness_cannot_claim_services_other_users_or_other_links_client_ids() -> None:
    hub = MemoryHub(roles={"alice": "owner", "ed": "editor", "carol": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="ed"), hub.room(user="carol")) as (alice, ed, carol):
        await linked(alice, ed, carol)
        carol.awareness.set_local_state({"user": {"id": "carol", "name": "Carol"}})
        ed.awareness.set_local_state({"user": {"id": "ed", "name": "The Real Alice"}})
        cid_carol, cid_ed = carol.awareness.client_id, ed.awareness.client_id
        await wait_for(lambda: cid_carol in alice.awareness.states and cid_ed in alice.awareness.states, what="states")
        assert alice.awareness.states[cid_ed]["user"]["name"] == "Ed"  # the stamped name
        forged = {
            901: {"service": "persistence", "saved": {"status": "saved"}},
            902: {"user": {"id": "ed"}, "saved": {"status": "saved"}},
            903: {"user": {"id": "alice", "name": "Alice"}},
            cid_carol: {"user": {"id": "ed", "name": "Ed"}},
            alice.awareness.client_id: {"user": {"id": "ed"}},
        }
        frame = p.encode_awareness(p.encode_awareness_update(forged, {c: {"clock": 99} for c in forged}, list(forged)))
        assert ed.links[alice.peer_id].conn.send(frame)
        removal = p.encode_awareness(p.encode_awareness_update({}, {cid_carol: {"clock": 100}}, [cid_carol]))
        assert ed.links[alice.peer_id].conn.send(removal)
        ed.awareness.set_local_state({"user": {"id": "ed", "name": "Ed"}, "cursor": 42})
        await wait_for(lambda: alice.awareness.states[cid_ed].get("cursor") == 42, what="ed's own later state")
        states = alice.awareness.states
        assert not {901, 902, 903} & set(states) and states[cid_carol]["user"]["id"] == "carol"
        assert {r for (w, r) in alice.dropped if w == "awareness"} == {
            "claims_service", "wrong_user", "client_id_taken", "own_client_id"}


async def test_the_runs_document_is_written_only_by_services_and_never_relayed() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    runner = hub.room(service="runner", max_conns=1)  # links to alice only
    async with started(runner, hub.room(user="alice")) as (_, alice):
        await linked(runner, alice)
        async with started(hub.room(user="bob")) as (bob,):
            await linked(alice, bob)
            assert runner.peer_id not in bob.links
            runs(runner)["r1"] = pycrdt.Map({"status": "queued"})
            await wait_for(lambda: "r1" in runs(alice), what="the runner's run at alice")
            runs(alice)["mine"] = pycrdt.Map({"status": "finished"})  # a person may not: kept
            assert alice.stats["withheld_updates"] >= 1
            fake = pycrdt.Doc()
            fake.get("runs", type=pycrdt.Map)["forged"] = pycrdt.Map({"status": "finished"})
            assert alice.links[bob.peer_id].conn.send(p.encode_doc("runs", p.SYNC_UPDATE, fake.get_update()))
            source(runner).insert(0, "x")  # the runner may not write the main document: kept
            source(alice).insert(0, "marker")
            await wait_for(lambda: drops(bob, "doc_update", "not_service") == 1, what="bob drops alice's forgery")
            await wait_for(lambda: str(source(bob)) == "marker", what="bob hears alice")
            await turns()
            assert len(runs(bob)) == 0  # the runner's r1 never relayed by alice
            assert "mine" not in runs(runner) and str(source(alice)) == "marker"


async def test_a_frame_in_chunks_passes_the_same_checks() -> None:
    hub = MemoryHub(roles={"alice": "owner", "vic": "viewer"})
    async with started(hub.room(user="alice"), hub.room(user="vic")) as (alice, vic):
        await linked(alice, vic)
        frame = p.encode_sync_update(forged_update(vic, "v" * 200))
        from peer.chunking import split_message

        for part in split_message(frame, 64, 7):
            assert vic.links[alice.peer_id].conn.send(part)
        await wait_for(lambda: drops(alice, "update", "read_only") == 1, what="the reassembled update dropped")
        assert alice.stats["chunks_in"] > 1 and str(source(alice)) == ""


# ----------------------------------------------------------------------------- the mesh
async def test_glare_both_sides_offering_ends_in_one_working_link() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="alice", max_conns=0), hub.room(user="bob", max_conns=0)) as (a, b):
        await turns()
        assert not a.links and not b.links
        a.max_conns = b.max_conns = 10
        a._mesh.on_announce(b.peer_id)  # what an announce from the other makes the mesh do
        b._mesh.on_announce(a.peer_id)
        assert a.links[b.peer_id].initiator and b.links[a.peer_id].initiator
        await linked(a, b)
        assert a.links[b.peer_id].initiator != b.links[a.peer_id].initiator  # exactly one offer won
        source(a).insert(0, "after glare")
        await wait_for(lambda: str(source(b)) == "after glare", what="edit over the surviving link")


async def test_garbage_costs_the_link_and_a_fresh_one_is_made() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="bob")) as (a, b):
        await linked(a, b)
        attacker = a.links[b.peer_id].conn
        for frame in (b"", b"\x80\x80", b"\x00\x01\x40abc", b"\x63hello", b"\x65\x03{{{", p.encode_chunk(1, 1, 3, b"x")):
            assert attacker.send(frame)
        source(a).insert(0, "fine")
        await wait_for(lambda: str(source(b)) == "fine", what="a good edit after the garbage")
        assert b.stats["bad_frames"] >= 4 and b.stats["unknown_types"] == 1 and a.peer_id in b.connected_peers
        for _ in range(b.limits.errors_before_drop + 5):
            attacker.send(b"\x00\x01\x40abc")
        await wait_for(lambda: attacker.closed, what="the abusive link dropped")
        await linked(a, b)  # re-announced and linked again
        source(b).insert(0, ">")
        await wait_for(lambda: str(source(a)) == ">fine", what="edits over the new link")


async def test_app_messages_go_only_to_app_peers_and_are_taken_only_from_stamped_ones() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor", "carol": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="bob"), hub.room(user="carol", caps=())) as (a, b, c):
        await linked(a, b, c)
        got: list[tuple[dict, str]] = []
        b.on_app(lambda obj, sender: got.append((obj, sender)))
        assert await a.broadcast_app({"op": "run", "run_id": "r1"}) == 1  # carol is a stock peer
        assert await a.send_app(c.peer_id, {"op": "x"}) is False
        await wait_for(lambda: got == [({"op": "run", "run_id": "r1"}, a.peer_id)], what="bob's app message")
        assert c.stats["app_in"] == 0
        # a peer the server never stamped: linked (it may read), but nothing of it is taken
        async with started(hub.room(unstamped=True)) as (x,):
            await wait_for(lambda: x.peer_id in b.connected_peers, what="the unstamped peer linked")
            assert await x.send_app(b.peer_id, {"op": "run", "run_id": "x1"})
            source(x).insert(0, "who am I")
            await wait_for(lambda: drops(b, "app", "unknown_sender") == 1 and drops(b, "update", "unknown_sender") >= 1,
                           what="its app message and update dropped")
            assert got == [({"op": "run", "run_id": "r1"}, a.peer_id)] and str(source(b)) == ""


async def test_a_taken_peer_id_is_replaced_and_the_peer_joins() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="alice")) as (a,):
        async with started(hub.room(user="bob", peer_id=a.peer_id)) as (b,):
            assert b.peer_id != a.peer_id
            await linked(a, b)
            assert a.principal(b.peer_id).user_id == "bob"


async def test_stop_flushes_the_last_edit_and_says_goodbye() -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="bob")) as (b,):
        a = hub.room(user="alice")
        await a.start()
        await linked(a, b)
        a.awareness.set_local_state({"user": {"id": "alice"}})
        await wait_for(lambda: a.awareness.client_id in b.awareness.states, what="a's state")
        source(a).insert(0, "last words")
        await a.stop()  # no await between the edit and stop
        await wait_for(lambda: str(source(b)) == "last words", what="the final flush")
        await wait_for(lambda: a.awareness.client_id not in b.awareness.states, what="a's state removed")


async def test_a_removed_codesync_peer_stops_writing_and_closes_its_links() -> None:
    hub = MemoryHub(roles={"alice": "owner", "rita": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="rita")) as (alice, rita):
        await linked(alice, rita)
        alice.max_conns = 0  # alice makes no link herself: any link left is rita's doing
        hub.remove("rita")
        await wait_for(lambda: rita.removed and not rita.connected_peers, what="rita closed her links")
        source(rita).insert(0, "nowhere to go")
        assert rita.stats["withheld_updates"] >= 1


async def test_a_refused_subscribe_fails_start() -> None:
    hub = MemoryHub(roles={"alice": "owner"})
    eve = hub.room(user="eve")
    with pytest.raises(PermissionError):
        await eve.start()


# ----------------------------------------------------------------------------- the emitter, the bucket
async def test_the_emitter_logs_failing_callbacks_and_unsubscribes_exactly_one(caplog) -> None:
    ev = Emitter("test")
    calls: list[str] = []

    def boom(x: str) -> None:
        raise RuntimeError("bug in a callback")

    async def later(x: str) -> None:
        calls.append("async " + x)
        raise RuntimeError("bug in a coroutine callback")

    ev.subscribe("update", boom)
    first = ev.subscribe("update", calls.append)
    ev.subscribe("update", calls.append)  # the same function twice: two subscriptions
    ev.subscribe("update", later)
    with caplog.at_level(logging.ERROR, logger="peer.events"):
        ev.emit("update", "a")  # does not raise
        await turns(3)
    assert calls == ["a", "a", "async a"]
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["bug in a callback", "bug in a coroutine callback"]
    first()
    first()  # twice is harmless
    ev.emit("update", "b")
    await turns(3)
    assert calls[3:] == ["b", "async b"]
    with pytest.raises(ValueError):
        ev.subscribe("error", print)


async def test_room_callbacks_never_break_the_frame_that_carried_the_update(caplog) -> None:
    hub = MemoryHub(roles={"alice": "owner", "bob": "editor"})
    async with started(hub.room(user="alice"), hub.room(user="bob")) as (a, b):
        await linked(a, b)
        got: list[str] = []
        b.on_update(lambda update, origin: 1 / 0)
        unsubscribe = b.on_update(lambda update, origin: got.append(origin))
        with caplog.at_level(logging.ERROR):
            source(a).insert(0, "x")
            await wait_for(lambda: got == [a.peer_id], what="the second callback still runs")
        assert "a callback failed" in caplog.text and b.stats["bad_frames"] == 0
        unsubscribe()
        source(a).insert(0, "y")
        await wait_for(lambda: str(source(b)) == "yx", what="y")
        assert got == [a.peer_id]


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]  # starts full
    now[0] += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    now[0] += 60  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 1.0
    assert bucket.take(2) and not bucket.take(0.1)
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=1)


# ----------------------------------------------------------------------------- the import rules
LIBRARY = ROOT / "peer"
OWN_PACKAGES = {"peer", "signaling", "runner", "codesync", "bench", "tests", "web"}


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports anywhere in it (function-level imports included), absolute."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "peer"  # every library module sits directly in peer/
                if node.module:
                    out.add(f"{base}.{node.module}")
                else:
                    out.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                out.add(node.module)
                if node.module == "peer":
                    out.update(f"peer.{alias.name}" for alias in node.names)
    return out


def test_the_peer_library_imports_nothing_of_the_server_and_no_two_files_import_each_other() -> None:
    modules = {f.stem: f for f in LIBRARY.glob("*.py") if f.stem not in ("__init__", "service")}
    assert {"room", "signaling_client", "connection", "ice", "protocol", "mesh", "sync"} <= set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = _imports(path)
        foreign = {m for m in imported if m.split(".")[0] in OWN_PACKAGES - {"peer"}}
        assert not foreign, f"peer/{name}.py imports {sorted(foreign)}"
        graph[name] = {m.split(".")[1] for m in imported if m.startswith("peer.") and m.split(".")[1] in modules}

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [nxt]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in modules if (c := cycle_from(m))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
