"""Room topology (docs/protocol.md "Room topology"): the forward rule, links messages,
anti-entropy, pending-link timeouts, refusals and re-announcing — over in-memory links.

The rule itself is a pure function (peer/topology.py) tested case by case; the rest runs
whole ``peer.Room``s through tests/memory_peers.py. The same behaviours with real signaling
and aiortc are in tests/test_peer_topology_real.py.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from typing import Any

import pytest

from peer import Room
from peer import mesh as mesh_module
from peer import protocol as p
from peer import sync as sync_module
from peer.topology import should_forward
from tests.helpers.memory_peers import MemoryHub
from tests.helpers.rooms import RELAYED_PREFIX, forged_update, lose_first, source, started, turns
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- the rule
def test_a_peer_that_is_not_mesh_or_has_not_told_its_links_gets_everything() -> None:
    assert should_forward("p", "a", "b", frozenset({"b"}), None)
    assert should_forward("p", "a", "b", None, None)


def test_nobody_forwards_to_a_peer_linked_to_the_origin_nor_back_to_the_origin() -> None:
    assert not should_forward("p", "a", "b", frozenset({"b", "p"}), frozenset({"a", "p"}))
    assert not should_forward("p", "a", "a", None, None)
    # full mesh of five: nobody forwards anything anywhere
    ids = ["a", "b", "c", "d", "e"]
    links = {x: frozenset(ids) - {x} for x in ids}
    assert not any(should_forward(me, o, t, links[o], links[t]) for me in ids for o in ids for t in ids
                   if len({me, o, t}) == 3)


def test_exactly_the_smallest_common_neighbour_forwards() -> None:
    # a and b are not linked; c, m and p are linked to both
    links = {"a": frozenset({"c", "m", "p"}), "b": frozenset({"c", "m", "p"})}
    deciders = [me for me in ("c", "m", "p") if should_forward(me, "a", "b", links["a"], links["b"])]
    assert deciders == ["c"]
    # only we are known to be linked to both (a path): we forward
    assert should_forward("p", "a", "b", frozenset({"p"}), frozenset({"p"}))
    # the origin's links unknown (a stock peer): the intersection is just us
    assert should_forward("p", "a", "b", None, frozenset({"c", "p"}))


def test_members_come_before_service_peers_as_forwarders() -> None:
    """The persistence peer is linked to everyone: were it elected by id it would forward
    most keystrokes of a big room (its cost per keystroke growing with the room)."""
    links = {"a": frozenset({"0-svc", "m", "z"}), "b": frozenset({"0-svc", "m", "z"})}
    svc = {"0-svc"}.__contains__
    deciders = [me for me in ("0-svc", "m", "z") if should_forward(me, "a", "b", links["a"], links["b"], service=svc)]
    assert deciders == ["m"]
    # no member linked to both: the service peer forwards (the smallest of them, if several)
    links = {"a": frozenset({"0-svc", "1-svc"}), "b": frozenset({"0-svc", "1-svc"})}
    svcs = {"0-svc", "1-svc"}.__contains__
    assert [me for me in ("0-svc", "1-svc") if should_forward(me, "a", "b", links["a"], links["b"], service=svcs)] == ["0-svc"]


def test_peers_that_may_not_write_do_not_count_as_forwarders() -> None:
    links = {"a": frozenset({"0-viewer", "p"}), "b": frozenset({"0-viewer", "p"})}
    assert not should_forward("p", "a", "b", links["a"], links["b"])
    assert should_forward("p", "a", "b", links["a"], links["b"], passive=lambda pid: pid == "0-viewer")


def test_links_messages_round_trip_and_bad_ones_never_raise() -> None:
    frame = p.encode_links(["b", "a"])
    assert p.parse_message(frame) == p.LinksMessage(frozenset({"a", "b"}))
    assert frame == p.encode_links({"a", "b"})  # sorted: equal sets, equal bytes
    for body in ('{"links": "a"}', "[1]", "not json", '{"links": [1, 2]}', '{"links": [""]}',
                 '{"links": ["%s"]}' % ("x" * 200), '{"other": []}'):
        assert p.parse_message(bytes([p.MSG_LINKS]) + p.write_var_string(body)) == p.LinksMessage(None)
    too_many = p.encode_links([f"peer-{i}" for i in range(p.MAX_LINKS_IDS + 1)])
    assert p.parse_message(too_many) == p.LinksMessage(None)
    with pytest.raises(p.ProtocolError):
        p.parse_message(bytes([p.MSG_LINKS, 50]) + b"short")  # the framing itself is still checked


# ----------------------------------------------------------------------------- helpers
class LossyHub(MemoryHub):
    """A hub that loses the signaling frames ``lose(data)`` says (a dropped offer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lambda data: False
        self.lost: list[dict[str, Any]] = []

    def publish(self, client, data):  # type: ignore[override]
        if isinstance(data, dict) and self.lose(data):
            self.lost.append(data)
            return True
        return super().publish(client, data)


@pytest.fixture
def fast_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mesh's slow timers shortened (a test cannot wait 10 s per repair)."""
    monkeypatch.setattr(mesh_module, "MISSING_REANNOUNCE", 0.3)
    monkeypatch.setattr(mesh_module, "REFUSAL_BACKOFF", 1.0)


def others_linked(rooms: list[Room]) -> bool:
    """Full mesh, and every room knows every neighbour's complete set of links."""
    ids = {r.peer_id for r in rooms}
    for r in rooms:
        want = ids - {r.peer_id}
        if set(r.connected_peers) != want or not all(r.peers[x].synced for x in want):
            return False
        if any(r.remote_links(x) != ids - {x} for x in want):
            return False
    return True


def texts(rooms: list[Room]) -> set[str]:
    return {str(source(r)) for r in rooms}


def member_links(room: Room) -> int:
    return sum(1 for link in room.links.values() if not link.service)


# ----------------------------------------------------------------------------- one copy per keystroke
async def test_in_a_full_mesh_every_member_receives_each_keystroke_exactly_once() -> None:
    users = [f"u{i}" for i in range(6)]
    hub = MemoryHub(roles={u: "editor" for u in users})
    rooms = [hub.room(user=u) for u in users]
    rooms.append(hub.room(service="persistence"))  # a service peer that forwards by the rule too
    runner = hub.room(service="runner", relay=False)
    async with started(*rooms, runner):
        everyone = rooms + [runner]
        await wait_for(lambda: others_linked(everyone), timeout=10, what="a full mesh that knows its links")
        writer, members = rooms[0], everyone[1:]
        before = {r.peer_id: (r.stats["updates_in"], r.stats["duplicates"]) for r in members}
        forwarded = sum(r.stats["forwarded"] for r in everyone)
        for i in range(30):  # one keystroke per message
            source(writer).insert(len(source(writer)), chr(97 + i % 26))
            writer.flush()
            await wait_for(lambda n=i + 1: all(len(source(r)) == n for r in members), what=f"keystroke {i}")
        await asyncio.sleep(0.05)  # late copies would arrive within a few loop turns
        for r in members:
            copies = r.stats["updates_in"] - before[r.peer_id][0]
            assert copies == 30, f"{r.peer_id}: {copies} copies of 30 keystrokes"
            assert r.stats["duplicates"] == before[r.peer_id][1]
        assert sum(r.stats["forwarded"] for r in everyone) == forwarded == 0


def views_settled(rooms: list[Room]) -> bool:
    """Every link open and synced, and every room knows each neighbour's actual links."""
    by_id = {r.peer_id: r for r in rooms}
    for r in rooms:
        for x in r.connected_peers:
            if x not in by_id or not r.peers[x].synced or r.remote_links(x) != set(by_id[x].connected_peers):
                return False
    return r.pending_links == 0


async def test_in_a_partial_mesh_each_keystroke_arrives_once_and_the_service_peer_forwards_only_what_no_member_can() -> None:
    """A chain u0 - u1 - u2 - u3 plus the persistence peer linked to all (its peer id the
    smallest in the room). u0 types: u1 gets it from u0; u2 from u1 (a member linked to
    both comes before the service peer); u3 from the persistence peer (no member is linked to
    u0 and u3) — and not from u2 too: what u2 got was forwarded (type 104), never forwarded
    again. One copy each; the persistence peer forwards only to u3."""
    users = ["u0", "u1", "u2", "u3"]
    hub = MemoryHub(roles={u: "editor" for u in users})
    persistence = hub.room(service="persistence", max_conns=1000, peer_id="0-persistence")
    rooms = {u: hub.room(user=u, peer_id=f"1-{u}", max_conns=1 if u in ("u0", "u3") else 2) for u in users}
    async with AsyncExitStack() as es:
        for room in [persistence, *rooms.values()]:  # one by one: each links to those with a free slot
            await room.start()
            es.push_async_callback(room.stop)
            await wait_for(lambda r=room: r is persistence or persistence.peer_id in r.connected_peers, what="joined")
            await wait_for(lambda: views_settled([persistence, *rooms.values()]), what="links settled")
        everyone = [persistence, *rooms.values()]
        chain = {u: {x for x in r.connected_peers if x != persistence.peer_id} for u, r in rooms.items()}
        assert chain == {"u0": {"1-u1"}, "u1": {"1-u0", "1-u2"}, "u2": {"1-u1", "1-u3"}, "u3": {"1-u2"}}, chain
        writer = rooms["u0"]
        before = {r.peer_id: (r.stats["updates_in"], r.stats["duplicates"], r.stats["forwarded"]) for r in everyone}
        keys = 20
        for i in range(keys):  # one keystroke per message
            source(writer).insert(len(source(writer)), chr(97 + i % 26))
            writer.flush()
            await wait_for(lambda n=i + 1: all(len(source(r)) == n for r in everyone), what=f"keystroke {i}")
        await asyncio.sleep(0.05)  # late copies would arrive within a few loop turns
        assert views_settled(everyone), "the topology changed while typing: the counts below would not hold"
        for r in everyone:
            if r is writer:
                continue
            copies = r.stats["updates_in"] - before[r.peer_id][0]
            assert copies == keys, f"{r.peer_id}: {copies} copies of {keys} keystrokes"
            assert r.stats["duplicates"] == before[r.peer_id][1]
        forwarded = {r.peer_id: r.stats["forwarded"] - before[r.peer_id][2] for r in everyone}
        assert forwarded == {"0-persistence": keys, "1-u0": 0, "1-u1": keys, "1-u2": 0, "1-u3": 0}, forwarded


async def test_without_the_mesh_capability_every_peer_relays_as_y_webrtc_does() -> None:
    """The contrast that makes the test above meaningful: stock-like peers relay everything."""
    legacy = ("chunk", "app", "docs", "roles")
    users = [f"u{i}" for i in range(4)]
    hub = MemoryHub(roles={u: "editor" for u in users})
    rooms = [hub.room(user=u, caps=legacy) for u in users]
    async with started(*rooms):
        await wait_for(lambda: all(len(r.connected_peers) == 3 and all(i.synced for i in r.peers.values()
                                                                       if i.connected) for r in rooms), what="mesh")
        before = [r.stats["updates_in"] for r in rooms]
        source(rooms[0]).insert(0, "x")
        await wait_for(lambda: all(str(source(r)) == "x" for r in rooms), what="x everywhere")
        await wait_for(lambda: all(r.stats["updates_in"] - b >= 3 for r, b in zip(rooms[1:], before[1:])),
                       what="three copies each (one direct, two relayed)")


# ----------------------------------------------------------------------------- rooms beyond the link limit
async def test_a_room_larger_than_the_link_limit_converges_and_stays_converged_through_churn(fast_mesh) -> None:
    users = [f"u{i}" for i in range(11)]
    hub = MemoryHub(roles={u: "editor" for u in users})
    opts = dict(max_conns=3, anti_entropy_interval=0.3, pending_timeout=1.0)
    persistence = hub.room(service="persistence", max_conns=1000, anti_entropy_interval=0.3)
    async with AsyncExitStack() as es:
        await persistence.start()
        es.push_async_callback(persistence.stop)
        members: dict[str, Room] = {}

        async def join(user: str) -> Room:
            room = hub.room(user=user, **opts)
            await room.start()
            members[user] = room
            source(room).insert(0, f"{user}\n")
            return room

        for u in users[:8]:
            await join(u)

        def converged(expect: set[str]) -> bool:
            rooms = [persistence, *members.values()]
            want = {line for line in expect}
            docs = texts(rooms)
            return len(docs) == 1 and set(docs.pop().split()) == want

        await wait_for(lambda: converged(set(users[:8])), timeout=15, what="8 members, max 3 links each, converged")
        for room in members.values():
            assert member_links(room) <= 3 and persistence.peer_id in room.connected_peers
        assert persistence.stats["forwarded"] >= 1  # the service peer carried some members' edits

        # churn: three leave, three join, everyone keeps typing
        for u in users[:3]:
            await members.pop(u).stop()
        for u in users[8:]:
            await join(u)
        for i, room in enumerate(members.values()):
            source(room).insert(0, f"edit{i}\n")
        expect = set(users) | {f"edit{i}" for i in range(len(members))}
        await wait_for(lambda: converged(expect), timeout=20, what="converged again after churn")
        for room in members.values():
            assert member_links(room) <= 3 and room.pending_links <= 3
        # stays converged: a writer's next keystrokes reach everyone
        writer = members[users[-1]]
        source(writer).insert(0, "last\n")
        await wait_for(lambda: converged(expect | {"last"}), timeout=10, what="the last edit everywhere")


# ----------------------------------------------------------------------------- repairs
async def test_a_full_peer_refuses_a_mesh_offer_and_the_offerer_backs_off(fast_mesh) -> None:
    hub = MemoryHub(roles={"alice": "editor", "bob": "editor", "carol": "editor"})
    alice = hub.room(user="alice", max_conns=1)
    bob, carol = hub.room(user="bob"), hub.room(user="carol")
    async with started(alice, bob):
        await wait_for(lambda: bob.peer_id in alice.connected_peers, what="alice full with bob")
        async with started(carol):
            await wait_for(lambda: bob.peer_id in carol.connected_peers, what="carol links to bob")
            await alice._mesh.announce()  # carol offers to alice, who is full
            await wait_for(lambda: carol.stats["refusals_received"] == 1, what="alice refuses carol")
            assert alice.stats["refusals_sent"] == 1
            refusals = [f["data"] for f in carol.signaling.received
                        if f.get("type") == "publish" and f["data"].get("signal", {}).get("type") == "refuse"]
            assert refusals == [{"type": "signal", "from": alice.peer_id, "to": carol.peer_id, "caps": list(p.CAPS),
                                 "signal": {"type": "refuse", "reason": "full"}}]  # the wire format, exactly
            await wait_for(lambda: alice.peer_id not in carol.links and carol.pending_links == 0,
                           what="carol closed the pending link at once")
            assert carol._mesh.backing_off(alice.peer_id)
            await alice._mesh.announce()  # backing off: no new offer
            await asyncio.sleep(0.05)
            assert alice.peer_id not in carol.links and alice.stats["refusals_sent"] == 1
            # the document still reaches everyone through bob
            source(alice).insert(0, "a")
            await wait_for(lambda: str(source(carol)) == "a", what="alice's edit at carol through bob")


async def test_a_stock_offerer_gets_silence_and_its_pending_link_times_out() -> None:
    hub = MemoryHub(roles={"alice": "editor", "bob": "editor", "dave": "editor"})
    alice = hub.room(user="alice", max_conns=1)
    bob = hub.room(user="bob")
    dave = hub.room(user="dave", caps=(), pending_timeout=0.3)  # announces like a stock y-webrtc peer
    async with started(alice, bob):
        await wait_for(lambda: bob.peer_id in alice.connected_peers, what="alice full")
        async with started(dave):
            await alice._mesh.announce()
            await wait_for(lambda: dave.stats["pending_timeouts"] >= 1, what="dave's offer to alice timed out")
            assert alice.stats["refusals_sent"] == 0 and dave.stats["refusals_received"] == 0
            assert alice.peer_id not in dave.links or not dave.links[alice.peer_id].open


async def test_a_dropped_offer_is_repaired_by_the_pending_timeout_and_re_announcing(fast_mesh) -> None:
    hub = LossyHub(roles={"alice": "editor", "bob": "editor"})
    alice = hub.room(user="alice", pending_timeout=0.3)
    bob = hub.room(user="bob", pending_timeout=0.3)
    hub.lose = lambda data: data.get("type") == "signal" and data["signal"].get("type") == "offer" and not hub.lost
    async with started(alice, bob):
        source(alice).insert(0, "hello")
        await wait_for(lambda: str(source(bob)) == "hello", timeout=10, what="linked after the lost offer")
        assert len(hub.lost) == 1
        assert alice.stats["pending_timeouts"] + bob.stats["pending_timeouts"] == 1
        assert alice.pending_links == bob.pending_links == 0


async def test_a_lost_update_is_repaired_by_anti_entropy() -> None:
    users = ["alice", "bob", "carol"]
    hub = MemoryHub(roles={u: "editor" for u in users})
    rooms = [hub.room(user=u, anti_entropy_interval=0.2) for u in users]
    async with started(*rooms):
        alice, bob, carol = rooms
        await wait_for(lambda: others_linked(rooms), what="full mesh")
        lost = lose_first(alice, bob.peer_id)
        source(alice).insert(0, "lost?")
        await wait_for(lambda: str(source(carol)) == "lost?", what="carol has it")
        assert lost and str(source(bob)) == ""  # carol does not forward: bob is linked to alice
        await wait_for(lambda: str(source(bob)) == "lost?", timeout=5, what="anti-entropy repaired bob")
        assert bob.stats["repairs"] >= 1


async def test_a_quiet_room_is_quiet_on_the_wire() -> None:
    """Anti-entropy rounds run only after a change (and a catch-all every QUIET_ROUNDS + 1):
    an idle room of N peers does not cost every link four messages every 5 s."""
    users = ["alice", "bob", "carol"]
    hub = MemoryHub(roles={u: "editor" for u in users})
    rooms = [hub.room(user=u, anti_entropy_interval=0.05) for u in users]
    async with started(*rooms):
        await wait_for(lambda: others_linked(rooms), what="full mesh")
        source(rooms[0]).insert(0, "typed once")
        await wait_for(lambda: all(str(source(r)) == "typed once" for r in rooms), what="everyone has it")
        await wait_for(lambda: all(r.stats["anti_entropy_skipped"] >= 1 for r in rooms), what="quiet")
        rounds0 = [r.stats["anti_entropy_rounds"] for r in rooms]
        skipped0 = [r.stats["anti_entropy_skipped"] for r in rooms]
        await wait_for(lambda: all(r.stats["anti_entropy_skipped"] - s >= 3 * sync_module.QUIET_ROUNDS
                                   for r, s in zip(rooms, skipped0)), timeout=20, what="many quiet rounds")
        for r, n0, s0 in zip(rooms, rounds0, skipped0):
            rounds, skipped = r.stats["anti_entropy_rounds"] - n0, r.stats["anti_entropy_skipped"] - s0
            assert 1 <= rounds <= skipped // sync_module.QUIET_ROUNDS + 1  # only the catch-all rounds


async def test_a_peer_that_missed_an_update_is_repaired_by_the_round_of_one_that_changed() -> None:
    """Bob runs no rounds of his own (and his document does not change when he misses an
    update): alice's round after her change makes him ask her back, which repairs him."""
    hub = MemoryHub(roles={"alice": "editor", "bob": "editor"})
    alice = hub.room(user="alice", anti_entropy_interval=0.1)
    bob = hub.room(user="bob", anti_entropy_interval=3600)
    async with started(alice, bob):
        await wait_for(lambda: others_linked([alice, bob]), what="linked")
        lost = lose_first(alice, bob.peer_id)
        source(alice).insert(0, "missed")
        await wait_for(lambda: str(source(bob)) == "missed", timeout=10, what="bob repaired")
        assert lost and bob.stats["repairs"] >= 1 and bob.stats["anti_entropy_rounds"] == 0


async def test_a_service_peer_asks_only_the_links_that_changed_it() -> None:
    """Every member that changed asks the persistence peer each round; were it to ask every
    link back, its anti-entropy cost per keystroke would grow with the room. Outside the
    catch-all round it asks only the links whose updates it applied since its last round."""
    users = ["u1", "u2", "u3"]
    hub = MemoryHub(roles={u: "editor" for u in users})
    persistence = hub.room(service="persistence", max_conns=1000, anti_entropy_interval=0.1)
    rooms = [hub.room(user=u, anti_entropy_interval=3600) for u in users]
    async with started(persistence, *rooms):
        await wait_for(lambda: others_linked([persistence, *rooms]), what="full mesh")
        rounds0, asked0 = persistence.stats["anti_entropy_rounds"], persistence.stats["anti_entropy_asked"]
        typed = 0
        while persistence.stats["anti_entropy_rounds"] - rounds0 < 4 * (sync_module.QUIET_ROUNDS + 1):
            source(rooms[0]).insert(typed, "x")  # only u1 types
            typed += 1
            await wait_for(lambda n=typed: len(source(persistence)) == n, what=f"keystroke {typed}")
        rounds = persistence.stats["anti_entropy_rounds"] - rounds0
        asked = persistence.stats["anti_entropy_asked"] - asked0
        # one link a round (u1's), all three in the catch-all rounds — not three every round
        assert asked <= rounds + 2 * (rounds // (sync_module.QUIET_ROUNDS + 1) + 1), (asked, rounds)
        assert texts([persistence, *rooms]) == {"x" * typed}


async def test_a_member_served_only_by_the_hub_is_repaired_by_its_round() -> None:
    """Alice and Bob hold no member links: the persistence peer forwards Alice's typing to Bob.
    One forwarded copy is lost and Bob runs no rounds of his own: the persistence peer's round
    asks the links it forwarded to (not only those that changed it), so Bob asks back."""
    hub = MemoryHub(roles={"alice": "editor", "bob": "editor"})
    persistence = hub.room(service="persistence", max_conns=1000, anti_entropy_interval=0.1)
    alice = hub.room(user="alice", max_conns=0, anti_entropy_interval=3600)
    bob = hub.room(user="bob", max_conns=0, anti_entropy_interval=3600)
    async with started(persistence, alice, bob):
        await wait_for(lambda: views_settled([persistence, alice, bob]) and bob.peer_id in persistence.connected_peers
                       and alice.peer_id in persistence.connected_peers, what="both linked to the persistence peer only")
        assert bob.peer_id not in alice.links
        lost = lose_first(persistence, bob.peer_id, RELAYED_PREFIX)
        source(alice).insert(0, "via the hub")
        await wait_for(lambda: str(source(persistence)) == "via the hub", what="the persistence peer has it")
        # alice keeps typing (so the persistence peer never has a quiet, catch-all round): what
        # follows the lost copy cannot apply at bob until the lost one is repaired
        typed, skipped = 0, persistence.stats["anti_entropy_skipped"]
        while "via the hub" not in str(source(bob)) and typed < 100:
            source(alice).insert(len(source(alice)), ".")
            typed += 1
            await wait_for(lambda n=typed: len(source(persistence)) == len("via the hub") + n, what="a keystroke stored")
            await asyncio.sleep(0.03)  # the pace of typing, not a wait for an event
        assert "via the hub" in str(source(bob)), f"bob not repaired after {typed} more keystrokes"
        assert lost and bob.stats["repairs"] >= 1 and bob.stats["anti_entropy_rounds"] == 0
        assert persistence.stats["anti_entropy_skipped"] == skipped  # no quiet round, so no catch-all did it


# ----------------------------------------------------------------------------- as an attacker would
async def test_a_viewer_cannot_use_links_messages_to_get_its_writes_forwarded_or_to_crash_anyone() -> None:
    hub = MemoryHub(roles={"ed": "editor", "ann": "editor", "vic": "viewer"})
    ed = hub.room(user="ed")
    ann = hub.room(user="ann", max_conns=1)  # linked to ed only: whatever of vic's reaches ann was forwarded
    vic = hub.room(user="vic", peer_id="0-vic")  # the smallest id in the room
    async with started(ed, ann):
        await wait_for(lambda: ann.peer_id in ed.connected_peers, what="ed-ann")
        async with started(vic):
            await wait_for(lambda: vic.peer_id in ed.connected_peers and ed.peers[vic.peer_id].synced, what="ed-vic")
            assert vic.peer_id not in ann.links
            wire = vic.links[ed.peer_id].conn
            # claims: linked to nobody (so ed would forward everything to it: harmless) ...
            wire.send(p.encode_links([]))
            # ... junk of every kind, and a huge one
            wire.send(bytes([p.MSG_LINKS]) + p.write_var_string("{nope"))
            wire.send(p.encode_links([f"x{i}" for i in range(5000)]))
            wire.send(bytes([p.MSG_LINKS]) + b"\xff\xff")  # broken framing: a bad frame, no exception
            await wait_for(lambda: ed.stats["links_malformed"] == 2, what="malformed links counted")
            assert ed.stats["bad_frames"] == 1 and vic.peer_id in ed.connected_peers
            flooded = ed.links[vic.peer_id]
            for i in range(100):  # a flood: above the rate bound the link counts bad frames, then is dropped
                wire.send(p.encode_links([f"flood{i}"]))
            await wait_for(lambda: flooded.closed, what="the flooding link dropped")
            assert ed.stats["bad_frames"] > 20 and ed.stats["links_in"] < 100
            await wait_for(lambda: vic.peer_id in ed.connected_peers and ed.peers[vic.peer_id].synced, what="re-made")
            wire = vic.links[ed.peer_id].conn
            wire.send(p.encode_sync_update(forged_update(vic, "FORGED ")))
            await wait_for(lambda: ed.dropped.get(("update", "read_only"), 0) == 1, what="the forgery dropped")
            # ... and as a "forwarded" update (type 104): the same writer check on the link's
            # stamped principal, whatever the message claims about where it came from
            wire.send(p.encode_relayed_update(forged_update(vic, "RELAYED ")))
            await wait_for(lambda: ed.dropped.get(("update", "read_only"), 0) == 2, what="the relayed forgery dropped")
            source(ed).insert(0, "ed\n")
            await wait_for(lambda: str(source(ann)) == "ed\n" and str(source(vic)) == "ed\n", what="ed's edit")
            assert "FORGED" not in str(source(ann)) and "RELAYED" not in str(source(ed)) and ann.stats["updates_dropped"] == 0
            # the viewer is the smallest common neighbour of nobody: it is never counted as a forwarder
            assert ed._mesh._passive(vic.peer_id) and not ed._mesh._passive(ann.peer_id)


async def test_a_viewer_with_the_smallest_id_does_not_swallow_forwards() -> None:
    """Two writers a and b not linked to each other, both linked to a viewer (smallest id)
    and to p: p must forward, since whatever the viewer forwarded would be dropped."""
    hub = MemoryHub(roles={"ann": "editor", "bea": "editor", "pat": "editor", "vic": "viewer"})
    vic = hub.room(user="vic", peer_id="0-vic")
    pat = hub.room(user="pat", peer_id="5-pat")
    ann = hub.room(user="ann", peer_id="7-ann", max_conns=2)
    bea = hub.room(user="bea", peer_id="8-bea", max_conns=2)
    async with started(vic, pat):
        await wait_for(lambda: vic.peer_id in pat.connected_peers, what="vic-pat")
        async with started(ann):
            await wait_for(lambda: len(ann.connected_peers) == 2, what="ann linked to vic and pat")
            async with started(bea):
                await wait_for(lambda: set(bea.connected_peers) == {vic.peer_id, pat.peer_id}, what="bea")
                await wait_for(lambda: pat.remote_links(bea.peer_id) == {vic.peer_id, pat.peer_id}
                               and pat.remote_links(ann.peer_id) == {vic.peer_id, pat.peer_id}, what="links known")
                before = pat.stats["forwarded"]
                source(ann).insert(0, "from ann")
                await wait_for(lambda: str(source(bea)) == "from ann", timeout=2, what="ann's edit at bea via pat")
                assert pat.stats["forwarded"] == before + 1 and bea.stats["repairs"] == 0


async def test_a_member_links_to_the_service_peers_even_when_full() -> None:
    hub = MemoryHub(roles={"alice": "editor", "bob": "editor"})
    alice = hub.room(user="alice", max_conns=1)
    bob = hub.room(user="bob")
    svc = hub.room(service="persistence", max_conns=1000)
    async with started(alice, bob):
        await wait_for(lambda: bob.peer_id in alice.connected_peers, what="alice full")
        async with started(svc):
            await wait_for(lambda: svc.peer_id in alice.connected_peers, what="the service linked anyway")
            assert alice.links[svc.peer_id].service and member_links(alice) == 1
            assert alice.stats["refusals_sent"] == 0


async def test_random_lossy_churn_always_ends_converged(fast_mesh) -> None:
    """Random joins, leaves and lost signaling frames; after each burst the room converges."""
    rnd = random.Random(15)
    users = [f"u{i}" for i in range(8)]
    hub = LossyHub(roles={u: "editor" for u in users})
    hub.lose = lambda data: data.get("type") == "signal" and rnd.random() < 0.2
    persistence = hub.room(service="persistence", max_conns=1000, anti_entropy_interval=0.3, pending_timeout=0.5)
    live: dict[str, Room] = {}
    written: dict[str, list[str]] = {}  # user -> edits made by its current room
    async with started(persistence):
        try:
            for step in range(12):
                u = rnd.choice(users)
                if u in live and len(live) > 2:
                    await live.pop(u).stop()
                elif u not in live:
                    live[u] = hub.room(user=u, max_conns=2, anti_entropy_interval=0.3, pending_timeout=0.5)
                    written[u] = []
                    await live[u].start()
                w = rnd.choice(list(live))
                source(live[w]).insert(0, f"s{step}\n")
                written[w].append(f"s{step}")
            await wait_for(lambda: len(texts([persistence, *live.values()])) == 1, timeout=20, what="converged")
            words = str(source(persistence)).split()
            assert all(edit in words for u in live for edit in written[u])  # a leaver's unlinked edits may be gone
        finally:
            for room in live.values():
                await room.stop()


# ----------------------------------------------------------------------------- viewers cost little
def refusals_to(room: Room) -> list[dict[str, Any]]:
    return [f["data"] for f in room.signaling.received
            if f.get("type") == "publish" and f["data"].get("to") == room.peer_id
            and f["data"].get("signal", {}).get("type") == "refuse"]


async def test_two_viewers_do_not_link_yet_both_get_the_edits_and_a_role_change_links_or_unlinks_them() -> None:
    """Two mesh viewers neither link nor count each other as missing; both link to the editor
    and get its edits; a promotion links them (re-announce), demoting both closes the link."""
    hub = MemoryHub(roles={"ed": "editor", "vic": "viewer", "val": "viewer"})
    ed, vic, val = hub.room(user="ed"), hub.room(user="vic"), hub.room(user="val")
    async with started(ed, vic, val):
        await wait_for(lambda: set(ed.connected_peers) == {vic.peer_id, val.peer_id}, what="ed linked to both viewers")
        await wait_for(lambda: all(ed.peer_id in r.connected_peers for r in (vic, val)), what="viewers linked to ed")
        vic.awareness.set_local_state({"user": {"id": "vic", "name": "Vic"}, "cursor": 1})
        source(ed).insert(0, "for everyone")
        await wait_for(lambda: str(source(vic)) == str(source(val)) == "for everyone", what="ed's edit at both viewers")
        await wait_for(lambda: vic.awareness.client_id in ed.awareness.states, what="vic's cursor at ed")
        await turns()
        assert val.peer_id not in vic.links and vic.peer_id not in val.links
        assert vic._mesh.missing_members() == [] and val._mesh.missing_members() == []
        assert vic.awareness.client_id not in val.awareness.states  # awareness is never relayed
        # nobody offered: the viewer that joined first answered the other's announce with one
        # refuse/viewers (how the newcomer learns its caps and role), and that was all
        assert vic.stats["refusals_sent"] + val.stats["refusals_sent"] == 1
        assert [r["signal"] for r in refusals_to(val)] == [{"type": "refuse", "reason": "viewers"}]
        assert vic.pending_links == val.pending_links == 0

        hub.set_role("val", "editor")  # the normal re-announce links them at once
        await wait_for(lambda: val.peer_id in vic.connected_peers and vic.peer_id in val.connected_peers,
                       what="vic and val linked after val's promotion")
        await wait_for(lambda: vic.awareness.client_id in val.awareness.states, what="vic's cursor at val")
        source(val).insert(0, "val: ")
        await wait_for(lambda: str(source(vic)) == str(source(ed)) == "val: for everyone", what="val's edit")

        hub.set_role("val", "viewer")
        await wait_for(lambda: val.peer_id not in vic.links and vic.peer_id not in val.links,
                       what="the link closed when both were viewers again")
        await turns()
        assert val.peer_id not in vic.links and vic.peer_id not in val.links  # and nobody re-links
        source(ed).insert(0, "still: ")
        await wait_for(lambda: str(source(vic)) == str(source(val)) == "still: val: for everyone",
                       what="ed's edits still reach both viewers")


async def test_a_viewer_refuses_another_viewers_offer_with_reason_viewers() -> None:
    """A viewer that offers anyway (a modified client, or one whose view of roles lags) gets
    ``refuse`` / ``viewers`` and closes its pending link; a stock viewer is linked as before."""
    hub = MemoryHub(roles={"vic": "viewer", "val": "viewer", "sam": "viewer"})
    vic, val = hub.room(user="vic"), hub.room(user="val")
    sam = hub.room(user="sam", caps=("chunk", "app", "docs", "roles"))  # no mesh: a stock-like viewer
    async with started(vic, val, sam):
        await wait_for(lambda: sam.peer_id in vic.connected_peers and sam.peer_id in val.connected_peers,
                       what="the stock viewer linked to both")
        await wait_for(lambda: vic._mesh.viewer_pair(val.peer_id) and val._mesh.viewer_pair(vic.peer_id),
                       what="both know they are viewers")
        link = vic._mesh._new_link(val.peer_id, initiator=True)
        await vic._mesh._start_link(link)
        await wait_for(lambda: vic.stats["refusals_received"] >= 1, what="val refuses vic")
        refusal = {"type": "signal", "from": val.peer_id, "to": vic.peer_id, "caps": list(p.CAPS),
                   "signal": {"type": "refuse", "reason": "viewers"}}  # the wire format, exactly
        await wait_for(lambda: val.peer_id not in vic.links and vic.pending_links == 0, what="pending link closed")
        assert not vic._mesh.backing_off(val.peer_id)  # presence, not a timer, decides
        await turns()  # closing re-announces: val answers that first announce of vic's once more, no more
        assert refusals_to(vic) == [refusal] * val.stats["refusals_sent"] and val.stats["refusals_sent"] <= 2
        assert vic.peer_id not in val.links and val.peer_id not in vic.links
        assert refusals_to(sam) == []
