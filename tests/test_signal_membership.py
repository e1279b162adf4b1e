"""Membership changes made through the REST API reach ``/signal`` subscribers already connected.

Run twice: one node with the in-process hub (REST call and sockets on the same process), and
two nodes sharing Redis with the REST call on node 0 and the sockets on node 1 — the
membership listener fires only in the process that handled the REST call, so the other node
learns it from the Redis bus.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from tests.helpers.stack import SeededRoom, SignalClient, Stack, add_member, signaling_stack
from tests.helpers.components import REDIS_URL, port_open, require

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@dataclass
class Layout:
    stack: Stack
    rest_node: int
    socket_node: int

    def ws(self, room: SeededRoom, label: str) -> str:
        return self.stack.ws_url(room.token(label), node=self.socket_node)

    async def rest(self, room: SeededRoom, as_label: str, method: str, path: str, **kw) -> httpx.Response:
        base = self.stack.nodes[self.rest_node].url or ""
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.request(method, path, headers={"Authorization": f"Bearer {room.token(as_label)}"}, **kw)
        assert r.status_code < 300, r.text
        return r


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "redis-2-nodes"])
async def layout(request, tmp_path_factory) -> Layout:
    if request.param == "memory":
        async with signaling_stack(tmp_path_factory.mktemp("member")) as s:
            yield Layout(s, 0, 0)
        return
    require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
    prefix = f"cstest-{secrets.token_hex(4)}"
    async with signaling_stack(tmp_path_factory.mktemp("member"), redis_url=REDIS_URL, redis_prefix=prefix, nodes=2) as s:
        yield Layout(s, 0, 1)


def pid(room: SeededRoom, name: str) -> str:
    """A peer id of this test's room (peer ids stay reserved to their user for a while)."""
    return f"{name}.{room.id}"


def names(frame: dict) -> dict[str, str]:
    return {p["name"]: p["role"] for p in frame["peers"]}


async def quiet_publishes(client: SignalClient) -> list[dict]:
    """Publishes ``client`` received up to now (a ping round trip flushes its socket first)."""
    await client.send({"type": "ping"})
    await client.expect("pong")
    return [f for f in client.pending if f["type"] == "publish"]


async def test_removed_member_stops_receiving_and_is_told(layout: Layout) -> None:
    room = await layout.stack.seed_room({"alice": "owner", "bob": "editor"})
    async with SignalClient.connect(layout.ws(room, "alice")) as a, SignalClient.connect(layout.ws(room, "bob")) as b:
        await a.subscribe(room.id)
        await b.subscribe(room.id)
        await a.expect("presence", lambda f: names(f) == {"Alice": "owner", "Bob": "editor"})
        await a.publish(room.id, {"type": "announce", "from": pid(room, "pa")})
        await b.expect("publish")  # bob receives while a member

        await layout.rest(room, "alice", "DELETE", f"/api/rooms/{room.id}/members/{room.user('bob').id}")
        err = await b.expect("error")
        assert err["code"] == "forbidden" and err["topic"] == room.id
        await a.expect("presence", lambda f: names(f) == {"Alice": "owner"})

        a.forget("publish")
        b.forget("publish")
        await a.publish(room.id, {"type": "announce", "from": pid(room, "pa")})
        assert (await a.expect("publish"))["clients"] == 1  # alice's own copy: fan-out done
        assert await quiet_publishes(b) == []

        # a stock client keeps publishing: refused (no strike, no 1008 close), nothing relayed
        for _ in range(12):  # above the default 10 strikes
            await b.publish(room.id, {"type": "announce", "from": pid(room, "pb")})
        for _ in range(12):
            assert (await b.expect("error"))["code"] == "forbidden"
        assert not b.closed
        assert await quiet_publishes(a) == []
        # and may not subscribe again
        await b.subscribe(room.id)
        assert (await b.expect("error"))["code"] == "forbidden"


async def test_demoted_editor_is_stamped_viewer(layout: Layout) -> None:
    room = await layout.stack.seed_room({"alice": "owner", "bob": "editor"})
    async with SignalClient.connect(layout.ws(room, "alice")) as a, SignalClient.connect(layout.ws(room, "bob")) as b:
        await a.subscribe(room.id)
        await b.subscribe(room.id)
        await a.expect("presence", lambda f: names(f) == {"Alice": "owner", "Bob": "editor"})
        await b.publish(room.id, {"type": "announce", "from": pid(room, "pb")})
        assert (await a.expect("publish"))["sender"]["role"] == "editor"

        await layout.rest(room, "alice", "PUT", f"/api/rooms/{room.id}/members/{room.user('bob').id}", json={"role": "viewer"})
        await a.expect("presence", lambda f: names(f) == {"Alice": "owner", "Bob": "viewer"})
        await b.expect("presence", lambda f: names(f) == {"Alice": "owner", "Bob": "viewer"})
        await b.publish(room.id, {"type": "announce", "from": pid(room, "pb")})
        got = await a.expect("publish")
        assert got["sender"] == {"user_id": room.user("bob").id, "name": "Bob", "role": "viewer"}
        assert not [f for f in b.pending if f["type"] == "error"]  # still subscribed

        # promoted back: the stamp follows
        await layout.rest(room, "alice", "PUT", f"/api/rooms/{room.id}/members/{room.user('bob').id}", json={"role": "owner"})
        await a.expect("presence", lambda f: names(f) == {"Alice": "owner", "Bob": "owner"})
        await b.publish(room.id, {"type": "announce", "from": pid(room, "pb")})
        assert (await a.expect("publish", lambda f: f["sender"]["role"] == "owner"))["sender"]["name"] == "Bob"


async def test_deleted_room_drops_every_user_but_not_services(layout: Layout) -> None:
    room = await layout.stack.seed_room({"alice": "owner", "bob": "editor", "vic": "viewer"})
    other = await layout.stack.seed_room({"carol": "owner"})
    await add_member(layout.stack.database_url, layout.stack.secret, other.id, room.user("alice").id, "editor")
    svc_token = await layout.stack.service_token("persistence")
    svc_url = layout.stack.ws_url(svc_token, node=layout.socket_node)
    async with SignalClient.connect(layout.ws(room, "alice")) as a, SignalClient.connect(
        layout.ws(room, "bob")
    ) as b, SignalClient.connect(layout.ws(room, "vic")) as v, SignalClient.connect(svc_url) as svc:
        await a.subscribe(room.id, other.id)
        await b.subscribe(room.id)
        await v.subscribe(room.id)
        await svc.subscribe(room.id)
        await svc.expect("presence", lambda f: f["topic"] == room.id and len(f["peers"]) == 3)

        await layout.rest(room, "alice", "DELETE", f"/api/rooms/{room.id}")
        for client in (a, b, v):
            err = await client.expect("error")
            assert err["code"] == "forbidden" and err["topic"] == room.id
        await svc.expect("room-idle", lambda f: f["topic"] == room.id)
        await svc.expect("presence", lambda f: f["topic"] == room.id and f["peers"] == [])
        assert not [f for f in svc.pending if f["type"] == "error"]  # services are unaffected

        await svc.publish(room.id, {"type": "announce", "from": pid(room, "svc-peer")})
        assert (await svc.expect("publish"))["clients"] == 1  # only the service is left
        for client in (a, b, v):
            assert await quiet_publishes(client) == []
        # alice's other room on the same connection is untouched
        await a.publish(other.id, {"type": "announce", "from": pid(room, "pa")})
        assert (await a.expect("publish"))["topic"] == other.id
