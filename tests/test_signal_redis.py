"""Two real signaling nodes sharing one Redis behave as one server.

Cross-node delivery (announce/signal both ways, ``clients`` counting both nodes), presence as
the union, peer-id binding across nodes, ``room-active`` for a service on the other node, a
node killed with SIGKILL leaving presence within the heartbeat expiry, and a clean stop
leaving it at once — in both cases its peer ids stay reserved to their users.
"""

from __future__ import annotations

import signal

import httpx
import pytest
from redis.asyncio import Redis

from tests.helpers.stack import SignalClient, signaling_stack

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

TTL = "1.5"  # CODESYNC_PRESENCE_TTL: seconds, so the crash test is quick



def names(frame: dict) -> list[str]:
    return sorted(p["name"] for p in frame["peers"])


async def test_two_nodes_behave_as_one(tmp_path, redis_url, redis_prefix) -> None:
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_PRESENCE_TTL=TTL
    ) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor", "eve": None})
        async with SignalClient.connect(stack.ws_url(room.token("alice"), node=0)) as a, SignalClient.connect(
            stack.ws_url(room.token("bob"), node=1)
        ) as b:
            await a.subscribe(room.id)
            await a.expect("presence", lambda f: names(f) == ["Alice"])
            await b.subscribe(room.id)
            # presence is the union of both nodes, on both nodes
            await a.expect("presence", lambda f: names(f) == ["Alice", "Bob"])
            await b.expect("presence", lambda f: names(f) == ["Alice", "Bob"])

            await a.publish(room.id, {"type": "announce", "from": "pa"})
            own = await a.expect("publish")
            got = await b.expect("publish")
            assert own == got and got["clients"] == 2 and got["data"] == {"type": "announce", "from": "pa"}
            assert got["sender"] == {"user_id": room.user("alice").id, "name": "Alice", "role": "owner"}
            answer = {"type": "signal", "from": "pb", "to": "pa", "token": 0.1, "signal": {"type": "answer", "sdp": "v=0"}}
            await b.publish(room.id, answer)
            assert (await a.expect("publish"))["data"] == answer

            # peer ids are bound cluster-wide: bob on node 1 cannot speak as alice's "pa"
            await b.publish(room.id, {"type": "signal", "from": "pa", "to": "pb", "signal": {}})
            assert (await b.expect("error"))["code"] == "peer_id_taken"

            # a non-member on the other node is still refused
            async with SignalClient.connect(stack.ws_url(room.token("eve"), node=1)) as e:
                await e.subscribe(room.id)
                assert (await e.expect("error"))["code"] == "forbidden"

            # HTTP presence on either node sees both
            for node in stack.nodes:
                async with httpx.AsyncClient(base_url=node.url) as http:
                    r = await http.get(f"/api/rooms/{room.id}/presence", headers={"Authorization": f"Bearer {room.token('bob')}"})
                    assert r.status_code == 200 and names(r.json()) == ["Alice", "Bob"]
                    assert {p["name"]: p["peer_ids"] for p in r.json()["peers"]} == {"Alice": ["pa"], "Bob": ["pb"]}

            # a service connecting late on node 1 learns the room is active; idle when users leave
            token = await stack.service_token("runner")
            async with SignalClient.connect(stack.ws_url(token, node=1)) as svc:
                await svc.expect("room-active", lambda f: f["topic"] == room.id)
                other = await stack.seed_room({"carol": "owner"})
                async with SignalClient.connect(stack.ws_url(other.token("carol"), node=0)) as c:
                    await c.subscribe(other.id)
                    await svc.expect("room-active", lambda f: f["topic"] == other.id)
                await svc.expect("room-idle", lambda f: f["topic"] == other.id)
                await svc.subscribe(room.id)
                await svc.expect("presence")
                await svc.publish(room.id, {"type": "announce", "from": "runner-peer"})
                for client in (a, b):
                    got = await client.expect("publish", lambda f: f["sender"].get("service") == "runner")
                    assert got["clients"] == 3

            await b.send({"type": "unsubscribe", "topics": [room.id]})
            await a.expect("presence", lambda f: names(f) == ["Alice"])
            await a.publish(room.id, {"type": "announce", "from": "pa"})
            assert (await a.expect("publish", lambda f: f["data"].get("from") == "pa"))["clients"] == 1


async def test_a_directed_frame_goes_to_the_node_and_subscriber_of_its_addressee(tmp_path, redis_url, redis_prefix) -> None:
    """Across nodes too, a frame with ``to`` reaches only the subscriber holding that peer id
    (a ``d`` record on its node's channel). (An address no node holds is fanned out — or,
    while a node's view of the others is being refreshed, refused by the relay rule: the
    in-process test covers the fan-out.)"""
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_PRESENCE_TTL=TTL
    ) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with SignalClient.connect(stack.ws_url(room.token("alice"), node=0)) as a, SignalClient.connect(
            stack.ws_url(room.token("bob"), node=1)
        ) as b, SignalClient.connect(stack.ws_url(room.token("bob"), node=1)) as b2:
            for client in (a, b, b2):
                await client.subscribe(room.id)
            for client in (a, b, b2):  # each node knows the other has subscribers of the room
                await client.expect("presence", lambda f: names(f) == ["Alice", "Bob"])
            for client, pid in ((a, "pa"), (b, "pb"), (b2, "pb2")):
                await client.publish(room.id, {"type": "announce", "from": pid})

            def holds(f: dict, *pids: str) -> bool:
                return set(pids) <= {p for peer in f["peers"] for p in peer["peer_ids"]}

            # each node's view of the other's subscribers is current once its presence lists them
            await a.expect("presence", lambda f: holds(f, "pa", "pb", "pb2"))
            await b.expect("presence", lambda f: holds(f, "pa", "pb", "pb2"))
            for client in (a, b, b2):
                for pid in ("pa", "pb", "pb2"):
                    await client.expect("publish", lambda f, pid=pid: f["data"] == {"type": "announce", "from": pid})
            offer = {"type": "signal", "from": "pa", "to": "pb", "token": 0.2, "signal": {"type": "offer", "sdp": "v=0"}}
            answer = {"type": "signal", "from": "pb", "to": "pa", "token": 0.3, "signal": {"type": "answer", "sdp": "v=0"}}
            after_a, after_b = {"type": "announce", "from": "pa"}, {"type": "announce", "from": "pb"}
            await a.publish(room.id, offer)
            await b.publish(room.id, answer)
            await a.publish(room.id, after_a)  # barriers: frames of one sender arrive in order
            await b.publish(room.id, after_b)
            assert (await b.expect("publish", lambda f: f["data"]["from"] == "pa"))["data"] == offer
            assert (await b.expect("publish", lambda f: f["data"]["from"] == "pa"))["data"] == after_a
            assert (await a.expect("publish", lambda f: f["data"]["from"] == "pb"))["data"] == answer
            assert (await a.expect("publish", lambda f: f["data"]["from"] == "pa"))["data"] == after_a  # no echo of the offer
            # b2 (bob's other client, on b's node): only the barriers
            assert (await b2.expect("publish", lambda f: f["data"]["from"] == "pa"))["data"] == after_a
            assert (await b2.expect("publish", lambda f: f["data"]["from"] == "pb"))["data"] == after_b
            assert not [f for f in b2.pending if f.get("type") == "publish"]


async def test_killed_node_leaves_presence(tmp_path, redis_url, redis_prefix) -> None:
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_PRESENCE_TTL=TTL
    ) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with SignalClient.connect(stack.ws_url(room.token("alice"), node=0)) as a, SignalClient.connect(
            stack.ws_url(room.token("bob"), node=1)
        ) as b:
            await a.subscribe(room.id)
            await b.subscribe(room.id)
            await b.publish(room.id, {"type": "announce", "from": "bob-peer"})
            await a.expect("presence", lambda f: names(f) == ["Alice", "Bob"] and any(p["peer_ids"] for p in f["peers"] if p["name"] == "Bob"))
            a.forget("presence")
            stack.nodes[1].kill(signal.SIGKILL)  # no goodbye: only the heartbeat expiry can tell
            gone = await a.expect("presence", lambda f: names(f) == ["Alice"], timeout=float(TTL) * 4)
            assert gone["peers"][0]["user_id"] == room.user("alice").id
            await b.wait_closed(timeout=5)
            # the dead node's peer id is kept for bob (CODESYNC_SIGNAL_PEER_ID_GRACE), not for alice
            await a.publish(room.id, {"type": "announce", "from": "bob-peer"})
            assert (await a.expect("error"))["code"] == "peer_id_taken"
            async with SignalClient.connect(stack.ws_url(room.token("bob"), node=0)) as b2:
                await b2.subscribe(room.id)  # bob reconnects to the surviving node: his id again
                await b2.publish(room.id, {"type": "announce", "from": "bob-peer"})
                mine = await a.expect("publish", lambda f: f["sender"].get("name") == "Bob")
                assert mine["clients"] == 2 and mine["data"]["from"] == "bob-peer"
            redis = Redis.from_url(redis_url, decode_responses=True)
            try:
                nodes = await redis.zrange(f"{redis_prefix}:sig:nodes", 0, -1)
                assert len(nodes) == 1  # the dead node was reaped
            finally:
                await redis.aclose()


async def test_stopped_node_leaves_presence_at_once(tmp_path, redis_url, redis_prefix) -> None:
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_PRESENCE_TTL="30"
    ) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with SignalClient.connect(stack.ws_url(room.token("alice"), node=0)) as a, SignalClient.connect(
            stack.ws_url(room.token("bob"), node=1)
        ) as b:
            await a.subscribe(room.id)
            await b.subscribe(room.id)
            await b.publish(room.id, {"type": "announce", "from": "bob-peer"})
            await a.expect("presence", lambda f: names(f) == ["Alice", "Bob"] and ["bob-peer"] in [p["peer_ids"] for p in f["peers"]])
            stack.nodes[1].stop()  # SIGTERM: graceful
            assert await b.wait_closed() == 1001
            await a.expect("presence", lambda f: names(f) == ["Alice"], timeout=5)  # far below the 30 s ttl
            # bob's peer id is kept for him (he reconnects to node 0), not free for alice
            await a.publish(room.id, {"type": "announce", "from": "bob-peer"})
            assert (await a.expect("error"))["code"] == "peer_id_taken"
            async with SignalClient.connect(stack.ws_url(room.token("bob"), node=0)) as b2:
                await b2.subscribe(room.id)
                await b2.publish(room.id, {"type": "announce", "from": "bob-peer"})
                assert (await b2.expect("publish", lambda f: f["data"].get("from") == "bob-peer"))["sender"]["name"] == "Bob"
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await redis.keys(f"{redis_prefix}:sig:room:*") == []  # nothing left behind
    finally:
        await redis.aclose()
