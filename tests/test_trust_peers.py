"""The trust model on the Python peers, attacked the way a member with the lowest role would.

Real ``codesync signaling``, ``codesync persist`` and ``codesync runner`` processes, real
aiortc ``peer.Room`` peers on loopback (docs/protocol.md, "The trust model"). An attacker
is a member running a modified client: it sends frames straight down its data channels
(``conn.send``), so nothing its own ``Room`` would refuse to send protects anyone — only
what the *receiving* peers enforce. Every test also shows that legitimate use still works.

The pure rules are unit-tested in tests/test_peer_rights.py.
"""

from __future__ import annotations

import base64

import pycrdt
import pytest

from peer import Room
from peer import protocol as p
from peer.persistence.store import DocumentStore
from codesync.settings import Settings
from tests.helpers.rooms import drops, forged_update, runs_of, send_raw, service_peer, source, v1_runs
from tests.helpers.persistence import saved_covers
from tests.helpers.services import ICE_HOSTS, Services, all_linked, peers, services
from tests.helpers.stack import signaling_stack
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(240)

# ----------------------------------------------------------------------------- tests
async def test_a_viewer_write_is_not_applied_relayed_or_stored(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "carol": "editor", "vic": "viewer"}
    async with services(tmp_path, roles) as svc, peers(svc, "ed") as (ed,):
        await wait_for(lambda: service_peer(ed, "persistence"), 45, what="persistence joins")
        # carol takes one member link (ed; links with service peers do not count, docs/protocol.md
        # "Room topology") and no more: she never links to vic, so anything of vic's reaching her
        # would have been relayed by ed or the persistence peer.
        async with peers(svc, "carol", max_conns=1) as (carol,):
            await all_linked([ed, carol], "persistence")
            source(ed).insert(0, "shared\n")
            async with peers(svc, "vic") as (vic,):
                await all_linked([ed, vic], "persistence")
                assert vic.peer_id not in carol.links
                await wait_for(lambda: str(source(vic)) == "shared\n", what="the viewer reads")

                # vic edits its own copy: a CodeSync peer that may not write keeps it to itself ...
                before = vic.doc.get_state()
                source(vic).insert(0, "VANDAL ")
                assert vic.stats["withheld_updates"] >= 1
                # ... and a modified client sends it anyway, as an Update and as a SyncStep2
                update = vic.doc.get_update(before)
                assert send_raw(vic, p.encode_sync_update(update)) == 2
                assert send_raw(vic, p.encode_sync_step2(vic.doc.get_update())) == 2

                await wait_for(lambda: drops(ed, "update", "read_only") >= 2, what="ed drops both")
                await wait_for(lambda: svc.metric("persist", "codesync_peer_dropped_total", what="update",
                                                  reason="read_only"), what="the persistence peer drops them")
                assert await svc.metric("persist", "codesync_peer_dropped_total", what="update", reason="read_only") >= 2
                assert ed.peers[vic.peer_id].synced  # the handshake completed: vic's SyncStep2 arrived, empty-handed

                source(ed).insert(len(source(ed)), "after\n")
                await wait_for(lambda: str(source(carol)) == "shared\nafter\n", what="carol gets ed's next edit")
                await wait_for(lambda: str(source(vic)) == "VANDAL shared\nafter\n", what="vic still reads")
                await wait_for(lambda: saved_covers(ed), 20, what="stored")
                for room in (ed, carol):
                    assert str(source(room)) == "shared\nafter\n"
                assert str(source(await svc.stored())) == "shared\nafter\n"


async def test_a_demoted_editor_is_read_only_at_once_and_writable_after_promotion(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "carol": "editor"}
    async with services(tmp_path, roles) as svc, peers(svc, "alice", "ed", "carol") as (alice, ed, carol):
        await all_linked([alice, ed, carol], "persistence")
        source(ed).insert(0, "ed was here\n")
        await wait_for(lambda: all(str(source(r)) == "ed was here\n" for r in (alice, carol)), what="ed writes")

        await svc.set_role("ed", "viewer")
        await wait_for(lambda: alice.role_of(ed.peer_id) == carol.role_of(ed.peer_id) == "viewer",
                       what="the demotion reaches the peers over presence")
        await wait_for(lambda: "roles changed" in svc.persist.log(), what="... and the persistence peer")
        await wait_for(lambda: ed.own_principal.role == "viewer", what="ed learns it too")
        assert alice.peers[ed.peer_id].sender["role"] == "editor"  # the stamp of the link's setup is stale

        # ed's links stay open (ed may read) but what ed sends is dropped by everyone
        assert send_raw(ed, p.encode_sync_update(forged_update(ed, "FORGED "))) == 3
        await wait_for(lambda: drops(alice, "update", "read_only") >= 1 and drops(carol, "update", "read_only") >= 1,
                       what="alice and carol drop it")
        await wait_for(lambda: svc.metric("persist", "codesync_peer_dropped_total", what="update", reason="read_only"),
                       what="the persistence peer drops it")
        source(ed).insert(0, "typed while a viewer\n")  # ed's own Room keeps it (a viewer does not write)
        assert ed.stats["withheld_updates"] >= 1
        source(alice).insert(len(source(alice)), "alice\n")
        await wait_for(lambda: str(source(ed)).endswith("ed was here\nalice\n"), what="ed still reads")
        await wait_for(lambda: saved_covers(alice), 20, what="alice's edit stored")
        for room in (alice, carol):
            assert str(source(room)) == "ed was here\nalice\n"

        await svc.set_role("ed", "editor")
        await wait_for(lambda: alice.role_of(ed.peer_id) == carol.role_of(ed.peer_id) == "editor", what="promotion")
        await wait_for(lambda: svc.persist.log().count("roles changed") >= 2, what="... at the persistence peer")
        # what ed kept while read-only goes out now, and new edits flow again
        await wait_for(lambda: str(source(alice)).startswith("typed while a viewer\n"), what="ed's kept edit")
        source(ed).insert(len(source(ed)), "promoted\n")
        expected = "typed while a viewer\ned was here\nalice\npromoted\n"
        await wait_for(lambda: all(str(source(r)) == expected for r in (alice, carol)), what="ed writes again")
        await wait_for(lambda: saved_covers(alice), 20, what="stored")
        assert str(source(await svc.stored())) == expected  # FORGED never stored


async def test_a_removed_member_is_cut_off_by_every_codesync_peer(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "mal": "editor", "rita": "editor"}
    async with services(tmp_path, roles, runner=True) as svc, \
            peers(svc, "alice", "ed", "mal", "rita") as (alice, ed, mal, rita):
        await all_linked([alice, ed, mal, rita], "persistence", "runner", timeout=60)
        source(mal).insert(0, "mal's line\n")
        await wait_for(lambda: str(source(alice)) == "mal's line\n", what="mal writes while a member")
        # mal runs a modified client that ignores its own removal and keeps its links open
        mal._mesh.removed_from_room = lambda: None  # type: ignore[method-assign]

        await svc.remove("mal")
        await svc.remove("rita")
        # every other CodeSync peer closes its end: mal's links all go, though mal keeps them
        await wait_for(lambda: not mal.connected_peers, 30, what="every peer closed its link to mal")
        for room in (alice, ed):
            assert mal.peer_id not in room.links and room.principal(mal.peer_id).role is None
        for service in (svc.persist, svc.runner):
            assert f"closing the link to {mal.peer_id}: its user is gone" in service.log()
        # rita's own (unmodified) Room stops by itself
        assert rita.removed and not rita.connected_peers

        source(alice).insert(len(source(alice)), "after the removal\n")
        await wait_for(lambda: str(source(ed)) == "mal's line\nafter the removal\n", what="the others carry on")
        await wait_for(lambda: saved_covers(alice), 20, what="stored")
        source(mal).insert(0, "still here? ")  # nowhere to go
        assert send_raw(mal, p.encode_sync_update(forged_update(mal, "MAL "))) == 0
        assert "after the removal" not in str(source(mal)) and "after the removal" not in str(source(rita))
        assert str(source(await svc.stored())) == "mal's line\nafter the removal\n"


async def test_forged_runs_are_refused_and_real_runs_arrive_and_are_stored(tmp_path):
    roles = {"ann": "owner", "ed": "editor", "vic": "viewer"}
    async with services(tmp_path, roles, runner=True) as svc, peers(svc, "ann", "ed", "vic") as (ann, ed, vic):
        await all_linked([ann, ed, vic], "persistence", "runner", timeout=60)
        # ed forges a finished run "by Ann" in the runs document, as an Update and a SyncStep2 ...
        fake = pycrdt.Doc()
        runs_of(fake)["forged"] = pycrdt.Map({
            "status": "finished", "language": "python", "requested_by": svc.seeded.user("ann").id,
            "requested_by_name": "Ann", "exit_code": 0, "output": pycrdt.Text("rm -rf done\n"),
        })
        assert send_raw(ed, p.encode_doc("runs", p.SYNC_UPDATE, fake.get_update())) == 4
        assert send_raw(ed, p.encode_doc("runs", p.SYNC_STEP2, fake.get_update())) == 4
        # ... and in the main document's v1 runs map, which an editor may write
        v1_runs(ed)["forged-v1"] = pycrdt.Map({"status": "finished", "output": pycrdt.Text("v1 forgery\n")})

        # a real run meanwhile
        source(ann).insert(0, "print('real', 6 * 7)\n")
        runner = service_peer(ann, "runner")
        replies: list[dict] = []
        ann.on_app(lambda obj, sender: replies.append(obj) if sender == runner else None)
        state_vector = base64.b64encode(ann.doc.get_state()).decode()
        assert await ann.send_app(runner, {"op": "run", "run_id": "real1", "language": "python",
                                           "state_vector": state_vector})
        await wait_for(lambda: {"op": "run-accepted", "run_id": "real1"} in replies, 20, what="run accepted")
        for room in (ann, vic, ed):
            await wait_for(lambda r=room: (runs_of(r).get("real1") or {}).get("status") == "finished", 30,
                           what="the real run finishes everywhere")
            entry = runs_of(room)["real1"]
            assert str(entry["output"]) == "real 42\n" and entry["requested_by"] == svc.seeded.user("ann").id
            assert entry["requested_by_name"] == "Ann" and "forged" not in runs_of(room)
        assert drops(ann, "doc_update", "not_service") >= 2 and drops(vic, "doc_update", "not_service") >= 2
        for service in ("persist", "runner"):
            await wait_for(lambda s=service: svc.metric(s, "codesync_peer_dropped_total", what="doc_update",
                                                        reason="not_service"), what=f"{service} drops the forgery")

        # the persistence peer deletes v1 records (its own edit, stored and broadcast)
        for room in (ann, ed, vic):
            await wait_for(lambda r=room: len(v1_runs(r)) == 0, 20, what="v1 run records deleted")
        assert "deleted 1 v1 run record(s) from the main document (written again)" in svc.persist.log()

        async def stored_run() -> bool:
            entry = runs_of(await svc.stored("runs")).get("real1")
            return entry is not None and entry.get("status") == "finished"

        await wait_for(stored_run, 20, what="the real run stored")
        stored_runs = runs_of(await svc.stored("runs"))
        assert "forged" not in stored_runs and str(stored_runs["real1"]["output"]) == "real 42\n"
        await wait_for(lambda: saved_covers(ann), 20, what="main document stored")
        main = await svc.stored()
        assert len(v1_runs(main)) == 0 and str(source(main)) == "print('real', 6 * 7)\n"


async def test_a_stored_v1_room_loads_with_its_run_records_removed(tmp_path):
    async def seed_v1(svc: Services) -> None:
        doc = pycrdt.Doc()
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        source(doc).insert(0, "print(1)\n")
        v1_runs(doc)["old-a"] = pycrdt.Map({"status": "finished", "output": pycrdt.Text("1\n")})
        v1_runs(doc)["old-b"] = pycrdt.Map({"status": "refused", "output": pycrdt.Text("")})
        store = await DocumentStore.open(Settings(database_url=svc.stack.database_url, data_dir=tmp_path / "data"))
        try:
            await store.append(svc.seeded.id, updates)
        finally:
            await store.close()

    async with services(tmp_path, {"alice": "owner"}, before_persist=seed_v1) as svc, peers(svc, "alice") as (alice,):
        await wait_for(lambda: service_peer(alice, "persistence"), 45, what="persistence joins")
        await alice.wait_synced(service_peer(alice, "persistence"), timeout=20)
        assert str(source(alice)) == "print(1)\n" and len(v1_runs(alice)) == 0  # in its very first SyncStep2
        assert "deleted 2 v1 run record(s) from the main document (on load)" in svc.persist.log()
        await wait_for(lambda: saved_covers(alice), 20, what="the deletion stored")
        stored = await svc.stored()
        assert str(source(stored)) == "print(1)\n" and len(v1_runs(stored)) == 0


async def test_awareness_cannot_claim_services_other_users_or_other_links_client_ids(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "carol": "editor"}
    async with services(tmp_path, roles, persist=False) as svc, peers(svc, "alice", "ed", "carol") as (alice, ed, carol):
        await all_linked([alice, ed, carol])
        ids = {label: svc.seeded.user(label).id for label in roles}
        carol.awareness.set_local_state({"user": {"id": ids["carol"], "name": "Carol", "color": "#0f0"}})
        ed.awareness.set_local_state({"user": {"id": ids["ed"], "name": "The Real Alice", "color": "#f00"}})
        cid_carol, cid_ed = carol.awareness.client_id, ed.awareness.client_id
        await wait_for(lambda: cid_carol in alice.awareness.states and cid_ed in alice.awareness.states, what="states")
        assert alice.awareness.states[cid_ed]["user"] == {"id": ids["ed"], "name": "Ed", "color": "#f00"}

        forged = {
            901: {"service": "persistence", "saved": {"status": "saved", "state_vector": "AA==", "seq": 1, "pending": 0}},
            902: {"user": {"id": ids["ed"], "name": "Ed"}, "saved": {"status": "saved"}},
            903: {"user": {"id": ids["alice"], "name": "Alice", "color": "#00f"}, "cursor": 1},
            cid_carol: {"user": {"id": ids["ed"], "name": "Ed"}, "cursor": 7},
            alice.awareness.client_id: {"user": {"id": ids["ed"], "name": "Ed"}},
        }
        frame = p.encode_awareness(p.encode_awareness_update(forged, {cid: {"clock": 99} for cid in forged}, list(forged)))
        assert ed.links[alice.peer_id].conn.send(frame)
        removal = p.encode_awareness(p.encode_awareness_update({}, {cid_carol: {"clock": 100}}, [cid_carol]))
        assert ed.links[alice.peer_id].conn.send(removal)  # and carol's state removed by ed
        ed.awareness.set_local_state({"user": {"id": ids["ed"], "name": "Ed?", "color": "#f00"}, "cursor": 42})
        await wait_for(lambda: (alice.awareness.states.get(cid_ed) or {}).get("cursor") == 42,
                       what="ed's own later state (same channel, so the forgeries were handled)")

        states = alice.awareness.states
        assert not {901, 902, 903} & set(states)
        assert states[cid_carol]["user"] == {"id": ids["carol"], "name": "Carol", "color": "#0f0"}
        assert states[cid_ed]["user"]["name"] == "Ed"
        assert not [s for s in states.values() if "saved" in s or "service" in s]
        assert {reason for (what, reason) in alice.dropped if what == "awareness"} >= {
            "claims_service", "wrong_user", "client_id_taken", "own_client_id"}
        # legit use: carol's own changes still arrive
        carol.awareness.set_local_state({"user": {"id": ids["carol"], "name": "Carol", "color": "#0f0"}, "cursor": 3})
        await wait_for(lambda: alice.awareness.states[cid_carol].get("cursor") == 3, what="carol's update")


async def test_the_runner_refuses_a_run_from_an_editor_demoted_while_linked(tmp_path):
    roles = {"alice": "owner", "ed": "editor"}
    async with services(tmp_path, roles, persist=False, runner=True) as svc, peers(svc, "alice", "ed") as (alice, ed):
        await all_linked([alice, ed], "runner")
        runner = service_peer(ed, "runner")
        replies: list[dict] = []
        ed.on_app(lambda obj, sender: replies.append(obj) if sender == runner else None)

        async def run(run_id: str) -> dict:
            state_vector = base64.b64encode(ed.doc.get_state()).decode()
            assert await ed.send_app(runner, {"op": "run", "run_id": run_id, "language": "python",
                                              "state_vector": state_vector})
            return await wait_for(lambda: next((r for r in replies if r.get("run_id") == run_id), None), 20,
                                  what=f"reply to {run_id}")

        source(ed).insert(0, "print('hi')\n")
        assert (await run("as-editor"))["op"] == "run-accepted"
        await wait_for(lambda: (runs_of(alice).get("as-editor") or {}).get("status") == "finished", 30, what="ran")

        await svc.set_role("ed", "viewer")
        await wait_for(lambda: "roles changed" in svc.runner.log(), what="the runner sees the demotion")
        refused = await run("as-viewer")
        assert refused["op"] == "run-refused" and "editors" in refused["reason"]
        stop = await ed.send_app(runner, {"op": "stop", "run_id": "as-editor"})
        assert stop
        await wait_for(lambda: any(r.get("op") == "stop-refused" for r in replies), what="stop refused")

        await svc.set_role("ed", "editor")
        await wait_for(lambda: svc.runner.log().count("roles changed") >= 2, what="the runner sees the promotion")
        assert (await run("promoted"))["op"] == "run-accepted"
        await wait_for(lambda: (runs_of(alice).get("promoted") or {}).get("status") == "finished", 30, what="ran")
        assert "as-viewer" not in runs_of(alice)  # viewers' refusals are never recorded


async def test_a_taken_peer_id_is_replaced_and_the_peer_joins(tmp_path):
    async with signaling_stack(tmp_path) as stack:
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        alice = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts=ICE_HOSTS)
        await alice.start()
        try:
            bob = Room(stack.url, seeded.token("bob"), seeded.id, ice_hosts=ICE_HOSTS, peer_id=alice.peer_id)
            await bob.start()  # the server refuses alice's id to bob: bob takes a fresh one
            try:
                assert bob.peer_id != alice.peer_id
                await wait_for(lambda: bob.peer_id in alice.connected_peers and alice.peer_id in bob.connected_peers,
                               20, what="alice and bob linked")
                assert alice.principal(bob.peer_id).user_id == seeded.user("bob").id
                source(bob).insert(0, "bob")
                await wait_for(lambda: str(source(alice)) == "bob", what="bob's edit")
            finally:
                await bob.stop()
        finally:
            await alice.stop()
