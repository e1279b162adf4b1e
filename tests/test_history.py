"""History end to end: real ``codesync signaling`` and ``codesync persist`` processes, real
aiortc ``peer.Room`` peers on loopback (docs/history.md, docs/protocol.md "History").

Attribution is checked against who really typed (also through a relaying peer), restoring a
version converges everywhere and in storage, playback of a replayed trace reproduces the
trace's states, and the rights: a viewer per the room's policy, forged requests (wrong role),
a removed member.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pycrdt
import pytest
from sqlalchemy import select

from tests.helpers.traces import apply_patches, apply_txn, load_trace, replay_to_text
from peer import Room
from peer import protocol as p
from peer.persistence import history as h
from peer.persistence.history_client import HistoryClient, HistoryError
from peer.persistence.store import UPDATES, DocumentStore
from peer.persistence.yupdate import decode_ranges
from codesync.settings import Settings
from tests.helpers.stack import SeededRoom, Stack, signaling_stack
from tests.helpers.components import free_port, require
from tests.helpers.processes import Service, child_env, start_service
from tests.helpers.wait import wait_for, wait_http_ok
from tests.helpers.persistence import saved_covers

pytestmark = pytest.mark.timeout(300)

ICE = "127.0.0.1"  # loopback-only ICE (the network rule of every test)


# ----------------------------------------------------------------------------- the stack
@dataclass
class History:
    stack: Stack
    seeded: SeededRoom
    tmp: Path
    persist: Service
    ops: int

    async def rest(self, as_label: str, method: str, path: str, **kw) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=10) as http:
            r = await http.request(method, path, headers={"Authorization": f"Bearer {self.seeded.token(as_label)}"},
                                   **kw)
        assert r.status_code < 300, r.text
        return r

    async def remove(self, label: str, by: str = "alice") -> None:
        await self.rest(by, "DELETE", f"/api/rooms/{self.seeded.id}/members/{self.seeded.user(label).id}")

    async def store(self) -> DocumentStore:
        return await DocumentStore.open(Settings(database_url=self.stack.database_url, data_dir=self.tmp / "data"))

    async def stored_text(self) -> str:
        store = await self.store()
        try:
            doc = pycrdt.Doc()
            doc.apply_update((await store.load(self.seeded.id)).update)
            return str(doc.get("source", type=pycrdt.Text))
        finally:
            await store.close()

    async def metric(self, name: str, **labels: str) -> float:
        import re

        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.ops}/metrics")).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
            if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).items() >= labels.items():
                total += float(m.group(2))
        return total


@asynccontextmanager
async def history_stack(tmp: Path, roles: dict[str, str | None], *, runner: bool = False,
                        **env: str) -> AsyncIterator[History]:
    if runner:
        require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    async with signaling_stack(tmp) as stack:
        seeded = await stack.seed_room(roles)
        ops = free_port()
        base = {**stack.env, "CODESYNC_SIGNALING_URL": stack.url, "CODESYNC_ICE_HOSTS": "127.0.0.1"}
        persist = start_service(["persist"], child_env(**{
            **base, "CODESYNC_SERVICE_TOKEN": await stack.service_token("persistence"),
            "CODESYNC_PERSIST_IDLE_GRACE": "2", "CODESYNC_OPS_PORT": str(ops), **env,
        }), tmp / "persist.log", name="persist")
        runner_proc = None
        try:
            await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", persist)
            if runner:
                runner_ops = free_port()
                runner_proc = start_service(["runner"], child_env(**{
                    **base, "CODESYNC_SERVICE_TOKEN": await stack.service_token("runner"),
                    "CODESYNC_SANDBOX": "bubblewrap", "CODESYNC_RUNNER_IDLE_GRACE": "2",
                    "CODESYNC_OPS_PORT": str(runner_ops),
                }), tmp / "runner.log", name="runner")
                await wait_http_ok(f"http://127.0.0.1:{runner_ops}/healthz", runner_proc)
            yield History(stack, seeded, tmp, persist, ops)
        finally:
            for proc in (runner_proc, persist):
                if proc is not None:
                    proc.stop()


@asynccontextmanager
async def peers(hs: History, *labels: str, **kw) -> AsyncIterator[list[Room]]:
    async with AsyncExitStack() as es:
        rooms = []
        for label in labels:
            room = Room(hs.stack.url, hs.seeded.token(label), hs.seeded.id, ice_hosts=ICE, **kw)
            user = hs.seeded.user(label)
            # as a browser does: awareness names the user (and carries the document's client id)
            room.awareness.set_local_state({"user": {"id": user.id, "name": user.name, "color": "#08f"}})
            await room.start()
            es.push_async_callback(room.stop)
            rooms.append(room)
        yield rooms


# ----------------------------------------------------------------------------- helpers
def source(room: Room | pycrdt.Doc) -> pycrdt.Text:
    doc = room.doc if isinstance(room, Room) else room
    return doc.get("source", type=pycrdt.Text)


def persistence_of(room: Room) -> str | None:
    return next((pid for pid, info in room.peers.items() if info.service == "persistence" and info.connected), None)



async def linked(rooms: list[Room], timeout: float = 45) -> None:
    ids = {r.peer_id for r in rooms}
    await wait_for(lambda: all(ids - {r.peer_id} <= set(r.connected_peers) and persistence_of(r) for r in rooms),
                   timeout, what=f"links among {len(rooms)} peers and the persistence peer")


async def converged(rooms: list[Room], expected: str, timeout: float = 20) -> None:
    try:
        await wait_for(lambda: all(str(source(r)) == expected for r in rooms), timeout, what="convergence")
    except AssertionError:
        svs = [p.decode_state_vector(r.doc.get_state()) for r in rooms]
        fixed = []
        for r in rooms:
            d = pycrdt.Doc()
            d.apply_update(r.doc.get_update())
            for other in rooms:
                d.apply_update(other.doc.get_update(r.doc.get_state()))
            fixed.append(str(source(d)))
        raise AssertionError(f"no convergence: {[str(source(r)) for r in rooms]} svs={svs} "
                             f"clients={[r.doc.client_id for r in rooms]} dropped={[r.dropped for r in rooms]} "
                             f"stats={[r.stats for r in rooms]} with every diff applied: {fixed}") from None


async def type_text(room: Room, text: str, at_end: bool = True) -> None:
    """Typed one character at a time, yielding between keystrokes (one update each)."""
    for ch in text:
        t = source(room)
        t.insert(len(t) if at_end else 0, ch)
        await asyncio.sleep(0)


async def stored_rows(hs: History) -> list:
    store = await hs.store()
    try:
        async with store.engine.connect() as conn:
            return (await conn.execute(
                select(UPDATES.c.seq, UPDATES.c.doc, UPDATES.c.via, UPDATES.c.clients, UPDATES.c.data)
                .where(UPDATES.c.room_id == hs.seeded.id).order_by(UPDATES.c.seq))).all()
    finally:
        await store.close()


async def stored_attribution(hs: History):
    store = await hs.store()
    try:
        return await h.load_attribution(store.engine, hs.seeded.id)
    finally:
        await store.close()


def inserted_by_user(rows, attribution) -> dict[str | None, int]:
    """Clock units each user added, from the stored rows and client bindings."""
    out: dict[str | None, int] = {}
    for r in rows:
        if r.doc != "":
            continue
        for client, start, end in decode_ranges(r.clients):
            author = attribution.authors.get(attribution.owner(client))
            key = author.user_id or author.service if author else None
            out[key] = out.get(key, 0) + end - start
    return out


# ----------------------------------------------------------------------------- tests
async def test_stored_attribution_matches_who_typed_also_through_a_relay(tmp_path):
    roles = {"alice": "owner", "bob": "editor", "carol": "editor"}
    async with history_stack(tmp_path, roles) as hs, peers(hs, "alice", "bob", "carol") as (alice, bob, carol):
        await linked([alice, bob, carol])
        # one after the other: each typist's last keystroke is stored before the next one starts
        for room, line in ((alice, "alice wrote this line\n"), (bob, "bob wrote that one\n"),
                           (carol, "carol, directly\n")):
            await type_text(room, line)
            await wait_for(lambda r=room: saved_covers(r), 20, what="saved")

        # carol loses her link to the persistence peer and may hold only one link (bob's):
        # what she types now reaches storage only through bob, who relays it
        persist_id = persistence_of(carol)
        # (a mesh peer always takes the service peers' links, docs/protocol.md "Room topology":
        # here carol counts the persistence peer's link against her max_conns, so she refuses it)
        carol._mesh.is_service = lambda peer_id: False  # type: ignore[method-assign]
        await carol.links[alice.peer_id].conn.aclose()
        carol.max_conns = 1
        await carol.links[persist_id].conn.aclose()
        await wait_for(lambda: set(carol.connected_peers) == {bob.peer_id}, 20, what="carol linked to bob only")
        # ... and bob knows it (links messages): until then he would leave carol's keystrokes to
        # her old link with the persistence peer, and anti-entropy would bring them instead
        await wait_for(lambda: bob.remote_links(carol.peer_id) == {bob.peer_id}
                       and carol.peer_id not in (bob.remote_links(persist_id) or ()), 20, what="bob sees it")
        relayed = "carol, relayed by bob\n"
        await type_text(carol, relayed)
        await wait_for(lambda: saved_covers(bob) and relayed in str(source(bob)), 20, what="stored via bob")
        assert persistence_of(carol) is None

        # an update with a client id nobody announced, sent by bob: it is bob's (the limit)
        side = pycrdt.Doc()
        side.apply_update(bob.doc.get_update())
        before = side.get_state()
        source(side).insert(0, "# bob's other client\n")
        forged = side.get_update(before)
        assert bob.links[persist_id].conn.send(p.encode_sync_update(forged))
        await wait_for(lambda: "# bob's other client" in str(source(alice)), 20, what="alice gets it too")
        # bob sent it past his own document: nobody forwards it to him (he is its origin link,
        # and alice is linked to him), anti-entropy brings it back to him
        await wait_for(lambda: "# bob's other client" in str(source(bob)), 20, what="bob gets it by anti-entropy")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")

        text = str(source(alice))
        assert text == str(source(bob)) == await hs.stored_text()
        rows = await stored_rows(hs)
        attribution = await stored_attribution(hs)
        ids = {label: hs.seeded.user(label).id for label in roles}
        counts = inserted_by_user(rows, attribution)
        assert counts[ids["alice"]] == len("alice wrote this line\n")
        assert counts[ids["bob"]] == len("bob wrote that one\n") + len("# bob's other client\n")
        assert counts[ids["carol"]] == len("carol, directly\n") + len(relayed)
        # every client binding of a person came from their own link's awareness
        for label, room in (("alice", alice), ("bob", bob), ("carol", carol)):
            binding = attribution.clients[room.doc.client_id]
            assert binding.direct and attribution.authors[binding.author].user_id == ids[label]
        assert not attribution.clients[side.client_id].direct
        assert attribution.authors[attribution.owner(side.client_id)].user_id == ids["bob"]
        # carol's relayed keystrokes arrived on bob's link (via) and are carol's all the same
        by_num = {a.user_id: a.num for a in attribution.authors.values() if a.user_id}
        relayed_rows = [r for r in rows if r.doc == "" and any(c == carol.doc.client_id and s >= len("carol, directly\n")
                                                               for c, s, _ in decode_ranges(r.clients))]
        assert relayed_rows and all(r.via == by_num[ids["bob"]] for r in relayed_rows)

        # the same through the history API: authors of the clients in the document
        client = HistoryClient(alice)
        answer = await client.ask("authors", clients=[alice.doc.client_id, carol.doc.client_id, side.client_id])
        names = {int(c): answer["authors"][str(a)]["user_id"] for c, a in answer["clients"].items()}
        assert names == {alice.doc.client_id: ids["alice"], carol.doc.client_id: ids["carol"],
                         side.client_id: ids["bob"]}
        timeline = await client.ask("timeline")
        bursts = [b for s in timeline["sessions"] for b in s["bursts"]]
        authors = [timeline["authors"][str(b["author"])]["user_id"] for b in bursts]
        assert authors[:3] == [ids["alice"], ids["bob"], ids["carol"]]
        assert sum(b["updates"] for b in bursts) == sum(1 for r in rows if r.doc == "")


async def test_restoring_a_version_converges_on_every_peer_and_in_storage(tmp_path):
    roles = {"alice": "owner", "bob": "editor", "vic": "viewer"}
    async with history_stack(tmp_path, roles) as hs, peers(hs, "alice", "bob", "vic") as (alice, bob, vic):
        await linked([alice, bob, vic])
        await type_text(alice, "def answer():\n    return 42\n")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")
        bob_history = HistoryClient(bob)
        named = (await bob_history.ask("checkpoint", name="  the answer \x07"))["checkpoint"]
        assert named["name"] == "the answer" and named["seq"] > 0
        # later: someone pastes over the morning's work
        t = source(alice)
        with alice.doc.transaction():
            del t[0:len(t)]
            t.insert(0, "oops\n")
        await wait_for(lambda: str(source(bob)) == "oops\n", 20, what="bob sees the paste")
        await type_text(bob, "print(answer())\n")
        await converged([alice, bob, vic], "oops\nprint(answer())\n")
        await wait_for(lambda: saved_covers(alice) and saved_covers(bob), 20, what="saved")

        timeline = await bob_history.ask("timeline")
        assert [c["name"] for c in timeline["checkpoints"]] == ["the answer"]
        assert timeline["authors"][str(timeline["checkpoints"][0]["author"])]["user_id"] == hs.seeded.user("bob").id
        old = await bob_history.ask("version", seq=named["seq"])
        assert old["exact"] and old["seq"] == named["seq"]
        assert str(source(HistoryClient.version_doc(old))) == "def answer():\n    return 42\n"

        assert bob_history.restore(old) > 0  # a new edit on top, made by bob's peer
        expected = "def answer():\n    return 42\n"
        for room in (alice, bob, vic):
            await wait_for(lambda r=room: str(source(r)) == expected, 20, what="the restore reaches every peer")
        await wait_for(lambda: saved_covers(bob), 20, what="the restore is stored")
        assert await hs.stored_text() == expected
        # nothing was rewritten: the paste is still in the history, the restore is a new burst by bob
        latest = await bob_history.ask("timeline")
        bursts = [b for s in latest["sessions"] for b in s["bursts"]]
        assert latest["authors"][str(bursts[-1]["author"])]["user_id"] == hs.seeded.user("bob").id
        page = await bob_history.ask("updates", after=named["seq"])
        main_rows = [u for u in page["updates"] if u[2] == "main"]
        assert latest["authors"][str(main_rows[-1][3])]["user_id"] == hs.seeded.user("bob").id
        before_restore = await bob_history.ask("version", seq=main_rows[-2][0])
        assert str(source(HistoryClient.version_doc(before_restore))) == "oops\nprint(answer())\n"
        assert bob_history.changes and bob_history.changes[0]["what"] == "checkpoint"


async def test_every_file_of_a_workspace_has_its_history(tmp_path):
    """Schema v2: a version's text, blame's authors and a restore work on any file of the tree,
    not only on the first (``source``); a file that did not exist yet says so; a malformed file
    id is a clear ``bad_request``."""
    from peer import workspace as wsp

    async with history_stack(tmp_path, {"alice": "owner", "bob": "editor"}) as hs, \
            peers(hs, "alice", "bob") as (alice, bob):
        await linked([alice, bob])
        wsp.ensure_first_file(alice.doc)
        await type_text(alice, "import lib\n")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")
        before = await HistoryClient(alice).ask("timeline")
        assert before["bounds"]["last_seq"] > 0
        lib = wsp.create(alice.doc, "file", "lib.py", content="def helper():\n    return 1\n")
        text = alice.doc.get(wsp.text_name(lib), type=pycrdt.Text)
        await wait_for(lambda: str(bob.doc.get(wsp.text_name(lib), type=pycrdt.Text)) == str(text), 20,
                       what="bob has lib.py")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")
        bob_history = HistoryClient(bob)
        named = (await bob_history.ask("checkpoint", name="helper returns 1"))["checkpoint"]
        bob_text = bob.doc.get(wsp.text_name(lib), type=pycrdt.Text)
        with bob.doc.transaction():
            del bob_text[0:len(bob_text)]
            bob_text.insert(0, "def helper():\n    return 2\n")
        await wait_for(lambda: str(text) == "def helper():\n    return 2\n", 20, what="alice sees bob's edit")
        await wait_for(lambda: saved_covers(bob), 20, what="saved")

        old = await bob_history.ask("version", seq=named["seq"], format="text", file=lib)
        assert (old["file"], old["exists"], old["text"]) == (lib, True, "def helper():\n    return 1\n")
        first = await bob_history.ask("version", seq=named["seq"], format="text")
        assert first["file"] == wsp.SOURCE_ID and first["exists"] and first["text"] == str(source(alice))
        absent = await bob_history.ask("version", seq=before["bounds"]["last_seq"], format="text", file=lib)
        assert (absent["exists"], absent["text"]) == (False, "")
        for bad in ("../x", "", "a" * 65, 7, "id\n"):
            with pytest.raises(HistoryError) as refused:
                await bob_history.ask("version", seq=named["seq"], format="text", file=bad)
            assert refused.value.code == "bad_request"

        assert bob_history.restore(await bob_history.ask("version", seq=named["seq"]), lib) > 0
        await wait_for(lambda: str(text) == "def helper():\n    return 1\n", 20, what="the restore of lib.py reaches alice")
        # blame's question for this file: the clients that wrote lib.py are alice's and bob's peers
        clients = sorted(p.decode_state_vector(text.doc.get_state()))
        owners = await bob_history.ask("authors", clients=clients)
        users = {owners["authors"][str(num)]["user_id"] for num in owners["clients"].values()}
        assert {hs.seeded.user("alice").id, hs.seeded.user("bob").id} <= users


async def test_playback_reproduces_every_state_of_a_replayed_trace(tmp_path):
    trace = load_trace("sveltecomponent")
    count = 1500
    states = [trace["startContent"]]
    for txn in trace["txns"][:count]:
        states.append(apply_patches(states[-1], txn["patches"]))
    async with history_stack(tmp_path, {"alice": "owner", "bob": "editor"}) as hs, \
            peers(hs, "alice", coalesce_delay=0.0) as (alice,):
        await wait_for(lambda: persistence_of(alice), 45, what="persistence joins")
        text = source(alice)
        current = trace["startContent"]
        marks: dict[int, int] = {}  # trace state index -> the seq stored for it
        client = HistoryClient(alice)
        for i, txn in enumerate(trace["txns"][:count], start=1):
            current = apply_txn(text, current, txn["patches"])
            await asyncio.sleep(0)  # each transaction leaves as its own message
            if i in (1, 400, 1000, count):
                await wait_for(lambda: saved_covers(alice), 30, what=f"state {i} stored")
                marks[i] = (await client.ask("timeline"))["bounds"]["last_seq"]
        assert current == states[count] == replay_to_text(trace, count)

        async with peers(hs, "bob") as (bob,):
            await linked([bob])
            player = HistoryClient(bob)
            # seeking: the version at each mark is the trace's state there
            for i, seq in marks.items():
                version = await player.ask("version", seq=seq)
                assert version["exact"] and str(source(HistoryClient.version_doc(version))) == states[i]
                packed = await player.ask("version", seq=seq, encoding="deflate")  # what the web player asks
                assert packed["encoding"] == "deflate" and len(packed["docs"]["main"]) < len(version["docs"]["main"])
                assert str(source(HistoryClient.version_doc(packed))) == states[i]
                text = await player.ask("version", seq=seq, format="text")  # what the version view asks
                assert text["text"] == states[i] and "docs" not in text
            # playing from the first mark to the end, page by page, one update at a time
            doc = HistoryClient.version_doc(await player.ask("version", seq=marks[1]))
            seen = [str(source(doc))]
            after, times = marks[1], []
            while True:
                page = await player.ask("updates", after=after, limit=400)
                for seq, at, name, author, data in page["updates"]:
                    assert name == "main" and page["authors"][str(author)]["user_id"] == hs.seeded.user("alice").id
                    doc.apply_update(base64.b64decode(data))
                    seen.append(str(source(doc)))
                    times.append(at)
                    after = seq
                if not page["more"]:
                    break
            assert seen == states[1:count + 1], "playback skipped or changed a state of the trace"
            assert times == sorted(times)


async def test_viewers_read_history_only_per_the_room_policy_and_wrong_roles_are_refused(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "vic": "viewer"}
    async with history_stack(tmp_path, roles) as hs, peers(hs, "alice", "ed", "vic") as (alice, ed, vic):
        await linked([alice, ed, vic])
        await type_text(ed, "x = 1\n")
        await wait_for(lambda: saved_covers(ed), 20, what="saved")
        owner, editor, viewer = HistoryClient(alice), HistoryClient(ed), HistoryClient(vic)

        async def refused(client: HistoryClient, q: str, **args) -> str:
            with pytest.raises(HistoryError) as err:
                await client.ask(q, **args)
            return err.value.code

        # default policy: viewers read nothing of the history
        for q, args in (("timeline", {}), ("version", {"seq": 1}), ("updates", {"after": 0}),
                        ("authors", {"clients": [ed.doc.client_id]})):
            assert await refused(viewer, q, **args) == "forbidden"
        # a modified client's request claims more than it has: only the stamped, live role counts
        assert await refused(viewer, "timeline", role="owner", user_id=hs.seeded.user("alice").id) == "forbidden"
        assert await refused(viewer, "checkpoint", name="mine") == "forbidden"
        for q, args in (("export", {}), ("delete", {"confirm": True}), ("policy", {"viewers_read": True})):
            assert await refused(viewer, q, **args) == "forbidden"
            assert await refused(editor, q, **args) == "forbidden"
        assert await hs.metric("codesync_persist_history_requests_total", q="delete", result="forbidden") == 2
        # ... while editors read and name versions
        timeline = await editor.ask("timeline")
        assert timeline["policy"] == {"viewers_read": False, "room": None}
        await editor.ask("checkpoint", name="first")

        # the owner opens the history to viewers
        assert (await owner.ask("policy", viewers_read=True))["policy"]["viewers_read"] is True
        await wait_for(lambda: any(c["what"] == "policy" for c in viewer.changes), 10, what="the notice")
        timeline = await viewer.ask("timeline")
        version = await viewer.ask("version", seq=timeline["checkpoints"][0]["seq"])
        assert str(source(HistoryClient.version_doc(version))) == "x = 1\n"
        assert await refused(viewer, "checkpoint", name="mine") == "forbidden"  # reading only
        assert await refused(viewer, "export") == "forbidden"

        # a member cannot answer in the persistence peer's place
        forged = {"op": "history-reply", "id": 99, "q": "timeline", "ok": True, "sessions": []}
        assert await vic.send_app(alice.peer_id, forged)
        assert await vic.send_app(alice.peer_id, {"op": "history-changed", "what": "deleted"})
        await wait_for(lambda: owner.foreign_replies >= 2, 10, what="the forged answers arrive and are ignored")
        assert not any(c["what"] == "deleted" for c in owner.changes)
        # malformed requests get a clear error, nothing breaks
        for bad in ({"q": "version"}, {"q": "version", "seq": -1}, {"q": "version", "seq": True},
                    {"q": "updates", "after": 0, "limit": 10**9}, {"q": "nonsense"},
                    {"q": "checkpoint", "name": ""}, {"q": "checkpoint", "name": "x" * 101},
                    {"q": "authors", "clients": ["a"]}, {"q": "export", "cursor": "updates:abc"},
                    {"q": "delete"}):
            reply = await editor.request(bad.pop("q"), **bad) if "q" in bad else None
            assert reply is not None and not reply["ok"]
            assert reply["error"]["code"] in ("bad_request", "forbidden"), reply
        # the owner turns it off again; viewers are refused at once
        await owner.ask("policy", viewers_read=False)
        assert await refused(viewer, "timeline") == "forbidden"
        assert (await owner.ask("timeline"))["policy"] == {"viewers_read": False, "room": False}


async def test_a_removed_member_gets_nothing_and_a_demoted_editor_is_refused(tmp_path):
    roles = {"alice": "owner", "ed": "editor", "mal": "editor"}
    async with history_stack(tmp_path, roles) as hs, peers(hs, "alice", "ed", "mal") as (alice, ed, mal):
        await linked([alice, ed, mal])
        await type_text(mal, "mal was here\n")
        await wait_for(lambda: saved_covers(mal), 20, what="saved")
        attacker = HistoryClient(mal)
        assert (await attacker.ask("timeline"))["bounds"]["last_seq"] > 0
        # demoted to viewer: refused at once (the default policy), though the link stays open
        await hs.rest("alice", "PUT", f"/api/rooms/{hs.seeded.id}/members/{hs.seeded.user('mal').id}",
                      json={"role": "viewer"})
        await wait_for(lambda: "roles changed" in hs.persist.log(), 20, what="the persistence peer sees the demotion")
        with pytest.raises(HistoryError) as err:
            await attacker.ask("timeline")
        assert err.value.code == "forbidden"
        # removed: a modified client keeps its links open as long as it can ...
        mal._mesh.removed_from_room = lambda: None  # type: ignore[method-assign]
        await hs.remove("mal")
        await wait_for(lambda: persistence_of(mal) is None, 30, what="the persistence peer closes mal's link")
        with pytest.raises(HistoryError) as err:
            await attacker.ask("timeline")
        assert err.value.code == "unavailable"  # ... and has nobody left to ask
        # legitimate use goes on
        assert (await HistoryClient(ed).ask("timeline"))["bounds"]["last_seq"] > 0


async def test_owner_exports_then_deletes_the_history_and_the_document_stays(tmp_path):
    roles = {"alice": "owner", "ed": "editor"}
    async with history_stack(tmp_path, roles) as hs:
        async with peers(hs, "alice", "ed") as (alice, ed):
            await linked([alice, ed])
            await type_text(alice, "secret = 'hunter2'\n")
            await wait_for(lambda: saved_covers(alice), 20, what="saved")
            owner = HistoryClient(alice)
            first = (await owner.ask("checkpoint", name="with the secret"))["checkpoint"]
            t = source(alice)
            with alice.doc.transaction():
                del t[0:len(t)]
            await type_text(ed, "secret = load()\n")
            await wait_for(lambda: saved_covers(alice) and saved_covers(ed), 20, what="saved")

            lines = [json.loads(line) for line in (await owner.export()).splitlines()]
            assert lines[0]["type"] == "room" and lines[0]["format"] == h.EXPORT_FORMAT
            kinds = {line["type"] for line in lines}
            assert {"author", "client", "checkpoint", "update"} <= kinds
            replayed = pycrdt.Doc()
            for line in lines:
                if line["type"] == "update" and line["doc"] == "":
                    replayed.apply_update(base64.b64decode(line["data"]))
            assert str(source(replayed)) == "secret = load()\n" == str(source(alice))
            authors = {a["num"]: a for a in lines if a["type"] == "author"}
            typed = {authors[u["author"]].get("user_id") for u in lines if u["type"] == "update" and u["clients"]}
            assert typed == {hs.seeded.user("alice").id, hs.seeded.user("ed").id}

            with pytest.raises(HistoryError):
                await HistoryClient(ed).ask("delete", confirm=True)
            deleted = (await owner.ask("delete", confirm=True))["deleted"]
            assert deleted["upto_seq"] > first["seq"]
            with pytest.raises(HistoryError) as err:
                await owner.ask("version", seq=first["seq"])
            assert err.value.code == "not_kept"
            timeline = await owner.ask("timeline")
            assert timeline["sessions"] == [] and timeline["checkpoints"] == []
            assert timeline["bounds"]["detail_from"] == deleted["upto_seq"] + 1
            now = await owner.ask("version", seq=deleted["upto_seq"])
            assert now["exact"] and str(source(HistoryClient.version_doc(now))) == "secret = load()\n"
            # editing goes on and is history again
            await type_text(ed, "print(secret)\n")
            await wait_for(lambda: saved_covers(ed), 20, what="saved")
            doc = HistoryClient.version_doc(now)
            for _seq, _at, _doc, _author, data in (await owner.ask("updates", after=deleted["upto_seq"]))["updates"]:
                doc.apply_update(base64.b64decode(data))
            assert str(source(doc)) == "secret = load()\nprint(secret)\n"
        # the secret is gone from storage; the document is whole after everyone left
        await wait_for(lambda: f"room {hs.seeded.id}: left" in hs.persist.log(), 20, what="the peer leaves")
        rows = await stored_rows(hs)
        store = await hs.store()
        try:
            from peer.persistence.store import SNAPSHOTS

            async with store.engine.connect() as conn:
                snaps = (await conn.execute(select(SNAPSHOTS.c.data).where(SNAPSHOTS.c.room_id == hs.seeded.id))).all()
        finally:
            await store.close()
        assert not any(b"hunter2" in bytes(r.data) for r in rows)
        assert not any(b"hunter2" in bytes(s.data) for s in snaps)
        assert await hs.stored_text() == "secret = load()\nprint(secret)\n"


async def test_playback_shows_a_run_when_it_happened(tmp_path):
    """The runs document is history too: its updates come back in the same order, between the
    edits they happened between, with the runner as their author."""
    async with history_stack(tmp_path, {"alice": "owner"}, runner=True) as hs, peers(hs, "alice") as (alice,):
        await wait_for(lambda: persistence_of(alice) and any(
            i.service == "runner" and i.connected for i in alice.peers.values()), 60, what="both services join")
        await type_text(alice, "print('ran at last')\n")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")
        runner = next(pid for pid, i in alice.peers.items() if i.service == "runner" and i.connected)
        assert await alice.send_app(runner, {"op": "run", "run_id": "r1", "language": "python",
                                             "state_vector": base64.b64encode(alice.doc.get_state()).decode()})
        runs = alice.docs["runs"].get("runs", type=pycrdt.Map)
        await wait_for(lambda: (runs.get("r1") or {}).get("status") == "finished", 60, what="the run finishes")
        await type_text(alice, "# after the run\n")
        await wait_for(lambda: saved_covers(alice), 20, what="saved")

        client = HistoryClient(alice)
        rows = []
        after = 0
        while True:
            page = await client.ask("updates", after=after)
            rows += page["updates"]
            authors = page["authors"]
            if not page["more"]:
                break
            after = rows[-1][0]
        kinds = [r[2] for r in rows]
        first_run, last_run = kinds.index("runs"), len(kinds) - 1 - kinds[::-1].index("runs")
        assert "main" in kinds[:first_run] and "main" in kinds[last_run + 1:], kinds
        assert {authors[str(r[3])].get("service") for r in rows if r[2] == "runs"} == {"runner"}
        # the player's state in the middle of the run: the code before "# after", the run there
        played_main, played_runs = pycrdt.Doc(), pycrdt.Doc()
        statuses = []
        for seq, at, name, author, data in rows:
            (played_main if name == "main" else played_runs).apply_update(base64.b64decode(data))
            if name == "runs":
                entry = played_runs.get("runs", type=pycrdt.Map).get("r1")
                statuses.append(entry.get("status") if entry is not None else None)
                assert str(source(played_main)) == "print('ran at last')\n"
        assert statuses[-1] == "finished" and ("running" in statuses or "queued" in statuses), statuses
        final = played_runs.get("runs", type=pycrdt.Map)["r1"]
        assert str(final["output"]) == "ran at last\n"
        assert str(source(played_main)) == "print('ran at last')\n# after the run\n"
