"""Room topology with real processes: ``codesync signaling`` + ``codesync persist`` and
aiortc ``peer.Room`` peers on loopback (docs/protocol.md "Room topology").

- a full mesh: each member receives exactly one copy of each keystroke, nobody forwards,
  the persistence peer counts no duplicate;
- a room larger than the link limit (max_conns 3, 8 members + the persistence peer)
  converges and stays converged while members leave and join;
- an offer nobody answers (a dropped offer, a dead pending link) times out and the link is
  made again; an update lost on a link is repaired by anti-entropy.

The rules in detail, fast and deterministic, over in-memory links: tests/test_peer_topology.py.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from peer import Room
from peer import protocol as p
from tests.helpers.stack import SignalClient
from tests.helpers.wait import wait_for
from tests.helpers.rooms import lose_first, service_peer, source
from tests.helpers.services import ICE_HOSTS, Services, services

pytestmark = pytest.mark.timeout(240)


async def member(svc: Services, label: str, **kw) -> Room:
    room = Room(svc.stack.url, svc.seeded.token(label), svc.seeded.id, ice_hosts=ICE_HOSTS, **kw)
    await room.start()
    return room


def lines(room: Room) -> set[str]:
    return set(str(source(room)).split())


async def test_a_full_mesh_of_real_peers_receives_one_copy_per_keystroke(tmp_path) -> None:
    labels = [f"m{i}" for i in range(5)]
    async with services(tmp_path, {label: "editor" for label in labels}) as svc, AsyncExitStack() as es:
        rooms = []
        for label in labels:
            rooms.append(await member(svc, label))
            es.push_async_callback(rooms[-1].stop)
        ids = {r.peer_id for r in rooms}

        def meshed() -> bool:
            for r in rooms:
                persist = service_peer(r, "persistence")
                if persist is None or not ids - {r.peer_id} <= set(r.connected_peers):
                    return False
                everyone = ids | {persist}
                if any(r.remote_links(x) != everyone - {x} for x in everyone - {r.peer_id}):
                    return False  # somebody's links message is still on its way
            return True

        await wait_for(meshed, 60, what="a full mesh with the persistence peer, links known")
        writer, readers = rooms[0], rooms[1:]
        before = [(r.stats["updates_in"], r.stats["duplicates"]) for r in readers]
        dup_before = await svc.metric("persist", "codesync_peer_duplicate_updates_total")
        for i in range(20):
            source(writer).insert(len(source(writer)), "abcdefghijklmnopqrst"[i])
            writer.flush()
            await wait_for(lambda n=i + 1: all(len(source(r)) == n for r in readers), 10, what=f"keystroke {i}")
        await asyncio.sleep(0.2)  # a forwarded copy would come a hop later
        for r, (updates, dups) in zip(readers, before):
            assert r.stats["updates_in"] - updates == 20, "one copy of each keystroke"
            assert r.stats["duplicates"] == dups
        assert sum(r.stats["forwarded"] for r in rooms) == 0
        assert await svc.metric("persist", "codesync_peer_duplicate_updates_total") == dup_before
        assert await svc.metric("persist", "codesync_peer_messages_forwarded_total") == 0
        assert await svc.metric("persist", "codesync_peer_messages_received_total", link="mesh") > 0
        # what it sent, by kind: its saved status (awareness), no forwarded copy in a full mesh
        assert await svc.metric("persist", "codesync_peer_messages_sent_total", kind="awareness") > 0
        assert await svc.metric("persist", "codesync_peer_messages_sent_total", kind="relayed") == 0


async def test_a_room_beyond_the_link_limit_converges_and_stays_converged_through_churn(tmp_path) -> None:
    labels = [f"m{i}" for i in range(11)]
    opts = dict(max_conns=3, anti_entropy_interval=1.0, pending_timeout=3.0)
    async with services(tmp_path, {label: "editor" for label in labels}) as svc:
        live: dict[str, Room] = {}
        try:
            for label in labels[:8]:
                live[label] = await member(svc, label, **opts)
                source(live[label]).insert(0, f"{label}\n")

            def converged(expect: set[str]) -> bool:
                return all(lines(r) == expect for r in live.values())

            await wait_for(lambda: converged(set(labels[:8])), 90, what="8 members with 3 links each converged")
            for r in live.values():
                assert sum(1 for link in r.links.values() if not link.service) <= 3
                assert service_peer(r, "persistence") is not None  # never refused, never counted

            for label in labels[:3]:  # three leave, three join
                await live.pop(label).stop()
            for label in labels[8:]:
                live[label] = await member(svc, label, **opts)
                source(live[label]).insert(0, f"{label}\n")
            for i, r in enumerate(live.values()):
                source(r).insert(0, f"again{i}\n")
            expect = set(labels) | {f"again{i}" for i in range(len(live))}
            try:
                await wait_for(lambda: converged(expect), 90, what="converged after the churn")
            except AssertionError:
                for label, r in live.items():
                    print(label, r.peer_id[:6], sorted(expect - lines(r)), sorted(lines(r) - expect),
                          [(pid[:6], link.open, link.service) for pid, link in r.links.items()], r.stats, r.dropped)
                raise
            source(live[labels[-1]]).insert(0, "last\n")
            await wait_for(lambda: converged(expect | {"last"}), 30, what="and it stays converged")

            async def stored_all() -> bool:
                return set(str(source(await svc.stored())).split()) == expect | {"last"}

            await wait_for(stored_all, 30, interval=0.5, what="the persistence peer stored all of it")
        finally:
            for r in live.values():
                await r.stop()


async def test_a_dead_pending_link_times_out_and_a_lost_update_is_repaired(tmp_path) -> None:
    roles = {"alice": "editor", "bob": "editor", "carol": "editor"}
    async with services(tmp_path, roles, persist=False) as svc, AsyncExitStack() as es:
        alice = await member(svc, "alice", pending_timeout=4.0, anti_entropy_interval=0.5)
        es.push_async_callback(alice.stop)
        bob = await member(svc, "bob", pending_timeout=4.0, anti_entropy_interval=0.5)
        es.push_async_callback(bob.stop)
        await wait_for(lambda: bob.peer_id in alice.connected_peers and alice.peer_id in bob.connected_peers, 30,
                       what="alice and bob linked")

        # carol's first client announces and never answers: both offers to it are dropped
        ghost = "carol-" + alice.peer_id[:8]
        async with SignalClient.connect(svc.stack.ws_url(svc.seeded.token("carol"))) as dead:
            await dead.subscribe(svc.seeded.id)
            await dead.publish(svc.seeded.id, {"type": "announce", "from": ghost, "caps": list(p.CAPS)})
            # (each checked as soon as its offer is out: on a loaded machine the other side's
            # offer may come after this one's pending link has already timed out)
            await wait_for(lambda: ghost in alice.links, 10, what="alice offers to the dead peer")
            assert alice.pending_links == 1
            await wait_for(lambda: ghost in bob.links or bob.stats["pending_timeouts"] == 1, 10,
                           what="bob offers to the dead peer")
            await wait_for(lambda: alice.stats["pending_timeouts"] == 1 and bob.stats["pending_timeouts"] == 1, 20,
                           what="both pending links time out")
            # (the timed-out link leaves alice.links once its close has run)
            await wait_for(lambda: ghost not in alice.links and alice.pending_links == bob.pending_links == 0, 10,
                           what="the dead links are gone")

            # carol's real client takes the same peer id (the same principal may): links form
            carol = await member(svc, "carol", peer_id=ghost)
            es.push_async_callback(carol.stop)
            await wait_for(lambda: {alice.peer_id, bob.peer_id} <= set(carol.connected_peers), 30,
                           what="carol linked to both")

        # an update lost on the way from alice to bob: carol does not forward it (bob is linked
        # to alice); anti-entropy brings it
        await wait_for(lambda: carol.remote_links(bob.peer_id) == {alice.peer_id, carol.peer_id}, 10, what="links known")
        lost = lose_first(alice, bob.peer_id)
        source(alice).insert(0, "lost on the way")
        await wait_for(lambda: str(source(carol)) == "lost on the way", 10, what="carol has it")
        assert lost
        await wait_for(lambda: str(source(bob)) == "lost on the way", 10, what="bob repaired")
        assert bob.stats["repairs"] >= 1
