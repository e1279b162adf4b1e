"""``/signal`` against a real ``codesync signaling`` process (in-process backend).

Frame by frame: the y-webrtc core as the reference server speaks it, then CodeSync's
additions (auth, membership, sender stamp, peer-id binding, presence, service activity),
every bad-input case and the limits.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal

import httpx
import pytest
import pytest_asyncio

from tests.helpers.stack import SignalClient, Stack, add_member, signaling_stack
from tests.helpers.components import REDIS_URL, port_open, require

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

ENV = {
    "CODESYNC_SIGNAL_RATE": "40",
    "CODESYNC_SIGNAL_MAX_TOPICS": "3",
    "CODESYNC_SIGNAL_SERVICE_MAX_TOPICS": "5",
    "CODESYNC_SIGNAL_MAX_CONNS_PER_USER": "3",
    "CODESYNC_SIGNAL_SEND_QUEUE": "50",
    "CODESYNC_SIGNAL_MAX_STRIKES": "5",
    "CODESYNC_SIGNAL_MAX_FRAME": "8192",
    "CODESYNC_SIGNAL_HEARTBEAT": "2",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "redis"])
async def stack(request, tmp_path_factory) -> Stack:
    """One node for the whole module — in-process hub, then the same tests on the Redis hub."""
    kw: dict = {}
    if request.param == "redis":
        require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
        kw = {"redis_url": REDIS_URL, "redis_prefix": f"cstest-{secrets.token_hex(4)}"}
    async with signaling_stack(tmp_path_factory.mktemp("signal"), **kw, **ENV) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def room(stack: Stack):
    return await stack.seed_room({"alice": "owner", "bob": "editor", "vic": "viewer", "eve": None})


def announce(peer: str) -> dict:
    return {"type": "announce", "from": peer}


def pid(room, name: str) -> str:
    """A peer id of this test's room: peer ids stay reserved to their user for
    CODESYNC_SIGNAL_PEER_ID_GRACE after a disconnect, and every test seeds new users."""
    return f"{name}.{room.id}"


# ----------------------------------------------------------------------------- y-webrtc core
async def test_core_protocol_frame_by_frame(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a, SignalClient.connect(
        stack.ws_url(room.token("bob"))
    ) as b:
        await a.send({"type": "ping"})
        assert await a.expect() == {"type": "pong"}

        await a.subscribe(room.id)
        await a.expect("presence")
        await a.publish(room.id, announce(pid(room, "peer-a")))
        own = await a.expect("publish")  # the sender receives its own publish, like the reference
        assert own["topic"] == room.id and own["data"] == announce(pid(room, "peer-a")) and own["clients"] == 1
        assert own["sender"] == {"user_id": room.user("alice").id, "name": "Alice", "role": "owner"}

        await b.subscribe(room.id)
        await b.expect("presence")
        signal_data = {"type": "signal", "from": pid(room, "peer-b"), "to": pid(room, "peer-a"), "token": 0.5, "signal": {"type": "offer", "sdp": "v=0"}}
        await b.publish(room.id, signal_data)
        got = await a.expect("publish")  # directed ("to"): only its addressee gets it (test below)
        assert got["data"] == signal_data and got["clients"] == 2
        assert got["sender"]["user_id"] == room.user("bob").id and got["sender"]["role"] == "editor"

        encrypted = "c2VjcmV0LWJ5dGVz"  # encrypted rooms publish base64 strings: relayed untouched
        await a.publish(room.id, encrypted)
        assert (await b.expect("publish"))["data"] == encrypted
        assert (await a.expect("publish"))["data"] == encrypted

        await b.send({"type": "unsubscribe", "topics": [room.id]})
        await a.expect("presence", lambda f: [p["name"] for p in f["peers"]] == ["Alice"])
        await a.publish(room.id, announce(pid(room, "peer-a")))
        assert (await a.expect("publish"))["clients"] == 1
        await b.send({"type": "ping"})
        await b.expect("pong")
        assert not [f for f in b.pending if f["type"] == "publish"]  # nothing after unsubscribing


async def test_directed_frames_go_to_their_addressee_only(stack: Stack, room) -> None:
    """A frame with ``to`` (offer, answer, candidate, refuse) reaches only the subscriber
    holding that peer id: every y-webrtc peer ignores the others' anyway, and a big room
    joining at once would otherwise make every member parse every pair's SDP (issue 15).
    The sender gets no echo; an address nobody holds here is fanned out as before."""
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a, SignalClient.connect(
        stack.ws_url(room.token("bob"))
    ) as b, SignalClient.connect(stack.ws_url(room.token("bob"))) as b2:
        for client in (a, b, b2):
            await client.subscribe(room.id)
        for client in (a, b, b2):  # each one's subscription is through before anyone announces
            await client.expect("presence")
        for client, name in ((a, "peer-a"), (b, "peer-b"), (b2, "peer-b2")):
            await client.publish(room.id, announce(pid(room, name)))
        for client in (a, b, b2):  # everyone sees every announce (fan-out as before)
            for name in ("peer-a", "peer-b", "peer-b2"):
                await client.expect("publish", lambda f, n=name: f["data"] == announce(pid(room, n)))
        offer = {"type": "signal", "from": pid(room, "peer-b"), "to": pid(room, "peer-a"), "token": 1.5,
                 "signal": {"type": "offer", "sdp": "v=0"}}
        await b.publish(room.id, offer)
        unknown = {"type": "signal", "from": pid(room, "peer-b"), "to": "nobody-here", "token": 2.5,
                   "signal": {"type": "offer", "sdp": "v=0"}}
        await b.publish(room.id, unknown)
        assert (await a.expect("publish"))["data"] == offer
        assert (await a.expect("publish"))["data"] == unknown
        # b2 and the sender b: the next publish they see is the fanned-out unknown address
        for client in (b, b2):
            assert (await client.expect("publish"))["data"] == unknown



async def test_client_supplied_sender_and_extras_are_not_relayed(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a:
        await a.subscribe(room.id)
        await a.send({"type": "publish", "topic": room.id, "data": {"x": 1}, "sender": {"user_id": "forged"}, "clients": 99})
        got = await a.expect("publish")
        assert got["sender"]["user_id"] == room.user("alice").id and got["clients"] == 1


# ----------------------------------------------------------------------------- auth
@pytest.mark.parametrize("token,code", [(None, 4003), ("not-a-jwt", 4003), ("eyJhbGciOiJIUzI1NiJ9.e30.x", 4003)])
async def test_refuses_missing_or_bad_token(stack: Stack, token, code) -> None:
    async with SignalClient.connect(stack.ws_url(token)) as c:
        err = await c.expect("error")
        assert err["code"] == "unauthorized"
        assert await c.wait_closed() == code


async def test_refuses_expired_token(stack: Stack, room) -> None:
    token = stack.access_token(room.user("alice").id, ttl=-60)  # beyond the 5 s decoding leeway
    async with SignalClient.connect(stack.ws_url(token)) as c:
        assert (await c.expect("error"))["code"] == "token_expired"
        assert await c.wait_closed() == 4001


async def test_token_from_another_key_is_refused(stack: Stack, room) -> None:
    from signaling.tokens import TokenService

    forged = TokenService("x" * 48).issue_access(room.user("alice").id)[0]
    async with SignalClient.connect(stack.ws_url(forged)) as c:
        assert await c.wait_closed() == 4003


async def test_membership_viewer_allowed_non_member_forbidden(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("vic"))) as v, SignalClient.connect(
        stack.ws_url(room.token("eve"))
    ) as e, SignalClient.connect(stack.ws_url(room.token("alice"))) as a:
        await a.subscribe(room.id)
        await a.expect("presence")
        await v.subscribe(room.id)
        presence = await v.expect("presence")
        assert {p["name"]: p["role"] for p in presence["peers"]} == {"Alice": "owner", "Vic": "viewer"}
        await v.publish(room.id, announce(pid(room, "peer-v")))  # viewers take part in signaling
        assert (await a.expect("publish"))["sender"]["role"] == "viewer"

        await e.subscribe(room.id, "no-such-room")
        errors = [await e.expect("error"), await e.expect("error")]
        assert {(x["code"], x["topic"]) for x in errors} == {("forbidden", room.id), ("forbidden", "no-such-room")}
        await e.publish(room.id, announce(pid(room, "peer-e")))
        assert (await e.expect("error"))["code"] == "not_subscribed"
        await a.publish(room.id, announce(pid(room, "peer-a")))
        await a.expect("publish")
        await e.send({"type": "ping"})
        await e.expect("pong")
        assert not [f for f in e.frames if f["type"] in ("publish", "presence")]  # nothing from that room


async def test_token_expiry_closes_with_4001_and_fresh_token_reconnects(stack: Stack, room) -> None:
    user = room.user("bob")
    async with SignalClient.connect(stack.ws_url(stack.access_token(user.id, ttl=2))) as c:
        await c.subscribe(room.id)
        await c.expect("presence")
        err = await c.expect("error", timeout=10)
        assert err["code"] == "token_expired"
        assert await c.wait_closed() == 4001
    async with SignalClient.connect(stack.ws_url(stack.access_token(user.id))) as c:
        await c.subscribe(room.id)
        await c.expect("presence")


# ----------------------------------------------------------------------------- peer ids
async def test_peer_id_spoofing_refused(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a, SignalClient.connect(
        stack.ws_url(room.token("bob"))
    ) as b:
        await a.subscribe(room.id)
        await b.subscribe(room.id)
        await a.expect("presence", lambda f: len(f["peers"]) == 2)
        await a.publish(room.id, announce(pid(room, "alice-peer")))
        await a.expect("publish")
        await b.expect("publish")
        await b.publish(room.id, {"type": "signal", "from": pid(room, "alice-peer"), "to": "x", "signal": {"type": "answer"}})
        err = await b.expect("error")
        assert err["code"] == "peer_id_taken" and err["topic"] == room.id
        await b.publish(room.id, announce(pid(room, "bob-peer")))
        assert (await a.expect("publish"))["data"]["from"] == pid(room, "bob-peer")  # the spoofed one never arrived
        presence = await a.expect("presence", lambda f: any(p["peer_ids"] == [pid(room, "bob-peer")] for p in f["peers"]))
        assert {p["name"]: p["peer_ids"] for p in presence["peers"]} == {"Alice": [pid(room, "alice-peer")], "Bob": [pid(room, "bob-peer")]}

    # The same user reconnecting (old socket not yet gone) takes its peer id over.
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a1, SignalClient.connect(
        stack.ws_url(room.token("alice"))
    ) as a2:
        await a1.subscribe(room.id)
        await a2.subscribe(room.id)
        await a1.publish(room.id, announce(pid(room, "alice-again")))
        await a1.expect("publish")
        await a2.publish(room.id, announce(pid(room, "alice-again")))
        assert (await a2.expect("publish", lambda f: f["sender"]["user_id"] == room.user("alice").id))


# ----------------------------------------------------------------------------- presence
async def test_presence_join_leave_and_http(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a:
        await a.subscribe(room.id)
        first = await a.expect("presence")
        assert first["topic"] == room.id and [p["user_id"] for p in first["peers"]] == [room.user("alice").id]
        async with SignalClient.connect(stack.ws_url(room.token("bob"))) as b:
            await b.subscribe(room.id)
            joined = await a.expect("presence", lambda f: len(f["peers"]) == 2)
            assert sorted(p["name"] for p in joined["peers"]) == ["Alice", "Bob"]
            async with httpx.AsyncClient(base_url=stack.url) as http:
                r = await http.get(f"/api/rooms/{room.id}/presence", headers={"Authorization": f"Bearer {room.token('vic')}"})
                assert r.status_code == 200 and sorted(p["name"] for p in r.json()["peers"]) == ["Alice", "Bob"]
                r = await http.get(f"/api/rooms/{room.id}/presence", headers={"Authorization": f"Bearer {room.token('eve')}"})
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
                r = await http.get(f"/api/rooms/{room.id}/presence")
                assert r.status_code == 401
        left = await a.expect("presence", lambda f: len(f["peers"]) == 1)
        assert left["peers"][0]["name"] == "Alice"


async def test_service_connection_room_active_idle(stack: Stack, room) -> None:
    token = await stack.service_token("persistence")
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as a:
        await a.subscribe(room.id)
        await a.expect("presence")
        # A service that connects late learns about rooms that are already active.
        async with SignalClient.connect(stack.ws_url(token)) as svc:
            assert (await svc.expect("room-active", lambda f: f["topic"] == room.id))
            await svc.subscribe(room.id)  # services may join any room, no membership needed
            await svc.publish(room.id, announce(pid(room, "persist-peer")))
            got = await a.expect("publish", lambda f: "service" in f["sender"])
            assert got["sender"] == {"service": "persistence"} and got["clients"] == 2
            presence = await svc.expect("presence")
            assert [p["name"] for p in presence["peers"]] == ["Alice"]  # services are not people
            await a.send({"type": "unsubscribe", "topics": [room.id]})
            await svc.expect("room-idle", lambda f: f["topic"] == room.id)
            await a.subscribe(room.id)
            await svc.expect("room-active", lambda f: f["topic"] == room.id)


# ----------------------------------------------------------------------------- bad input
BAD_FRAMES = [
    ("garbage", "malformed_json"),
    ('{"type": "subscribe", "topics": "room"}', "invalid_field"),
    ('{"type": "subscribe"}', "missing_field"),
    ('{"type": "subscribe", "topics": [1, 2]}', "invalid_topic"),
    ('{"type": "publish", "data": {}}', "missing_field"),
    ('{"type": "publish", "topic": "r"}', "missing_field"),
    ('{"type": "publish", "topic": "r", "data": 5}', "invalid_field"),
    ('{"type": "publish", "topic": "r", "data": {"from": 7}}', "invalid_field"),
    ('{"type": "frobnicate"}', "unknown_type"),
    ('{"topics": []}', "missing_field"),
    ("[1, 2, 3]", "invalid_frame"),
    ('"just a string"', "invalid_frame"),
    # a double overflow: relayed, it would reach browsers as Infinity (not JSON)
    ('{"type": "publish", "topic": "r", "data": {"x": 1e400}}', "malformed_json"),
    ('{"type": "publish", "topic": "r", "data": {"x": "\\ud800"}}', "invalid_unicode"),
    ("[" * 2000 + "]" * 2000, "malformed_json"),  # nested too deeply (below the frame limit)
    ('{"type": "ping", "type": "frobnicate"}', "unknown_type"),  # duplicate keys: the last wins, as in JSON.parse
    ("[" * 100000 + "]" * 100000, None),  # above the frame limit: closes with 1009 instead
]


@pytest.mark.parametrize("frame,code", [f for f in BAD_FRAMES if f[1]])
async def test_bad_frame_gets_error_and_connection_survives(stack: Stack, room, frame: str, code: str) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        await c.send(frame)
        err = await c.expect("error")
        assert err["code"] == code, err
        await c.send({"type": "ping"})
        await c.expect("pong")


async def test_binary_and_invalid_utf8(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        await c.send(b'{"type":"ping"}')
        assert (await c.expect("error"))["code"] == "binary_unsupported"
        await c.send(b"\xff\xfe garbage")
        assert (await c.expect("error"))["code"] == "binary_unsupported"
        await c.send({"type": "ping"})
        await c.expect("pong")
    # Invalid UTF-8 in a *text* frame is a WebSocket protocol error (RFC 6455 §8.1): close 1007.
    reader, writer = await raw_upgrade(stack, room.token("alice"))
    try:
        payload = b"\xc3\x28 invalid"
        mask = b"\x01\x02\x03\x04"
        writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await writer.drain()
        frame = await asyncio.wait_for(reader.read(64), 5)
        assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1007, frame
    finally:
        writer.close()
    async with httpx.AsyncClient(base_url=stack.url) as http:  # the server is still fine
        assert (await http.get("/healthz")).status_code == 200


async def test_oversized_frame_closes_1009(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        await c.publish(room.id, {"blob": "x" * 20000})
        assert await c.wait_closed() == 1009


async def test_repeated_abuse_closes_1008(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        for _ in range(5):
            await c.send("not json")
        assert await c.wait_closed() == 1008
        assert len([f for f in c.frames if f["type"] == "error"]) == 5


# ----------------------------------------------------------------------------- limits
async def test_rate_limit(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        for _ in range(120):  # burst is 2 x 40
            await c.send({"type": "ping"})
        err = await c.expect("error")
        assert err["code"] == "rate_limited"
        assert await c.wait_closed() == 1008  # flooding counts as abuse
        assert 70 <= len([f for f in c.frames if f["type"] == "pong"]) <= 90


async def test_topics_per_connection(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        extra = [await stack.seed_room({"alice2": "owner"}) for _ in range(5)]
        # alice2 of the first extra room joins three more: a user connection holds at most 3 topics
        member = extra[0].user("alice2")
        for r in extra[1:4]:
            await add_member(stack.database_url, stack.secret, r.id, member.id, "editor")
        async with SignalClient.connect(stack.ws_url(member.token)) as u:
            await u.subscribe(*[r.id for r in extra[:4]])
            err = await u.expect("error")
            assert err["code"] == "too_many_topics" and err["topic"] == extra[3].id
        # a service peer sits in every active room: its own, larger limit (5 here)
        svc = await stack.service_token("runner")
        async with SignalClient.connect(stack.ws_url(svc)) as s:
            await s.subscribe(room.id, *[r.id for r in extra])
            err = await s.expect("error")
            assert err["code"] == "too_many_topics" and err["topic"] == extra[-1].id
            assert [f for f in s.frames if f["type"] == "error"] == [err]  # rooms 1-5 were accepted
        await c.subscribe(room.id)
        await c.expect("presence")


async def test_refused_topics_count_against_the_frame_limit_and_as_strikes(stack: Stack, room) -> None:
    """A subscribe frame is looked at for at most the topic cap (3 here): foreign rooms take
    their slots too, so the member's own room after them is refused without a lookup; each
    refused room is a strike (5 here)."""
    async with SignalClient.connect(stack.ws_url(room.token("vic"))) as v:
        await v.subscribe("foreign-1", "foreign-2", "foreign-3", room.id, "foreign-4")
        errors = [await v.expect("error") for _ in range(4)]
        assert [(e["code"], e["topic"]) for e in errors] == [
            ("forbidden", "foreign-1"), ("forbidden", "foreign-2"), ("forbidden", "foreign-3"), ("too_many_topics", room.id)
        ]
        assert "1 more" in errors[-1]["message"]
        await v.send({"type": "ping"})
        await v.expect("pong")
        assert not [f for f in v.frames if f["type"] == "presence"]  # not joined by that frame
        await v.subscribe(room.id)  # its own frame: joined (4 strikes so far, below 5)
        await v.expect("presence")
        await v.subscribe("foreign-5")  # the fifth strike
        assert (await v.expect("error"))["code"] == "forbidden"
        assert await v.wait_closed() == 1008


async def test_connections_per_user(stack: Stack, room) -> None:
    url = stack.ws_url(room.token("bob"))
    async with SignalClient.connect(url) as c1, SignalClient.connect(url) as c2, SignalClient.connect(url) as c3:
        for c in (c1, c2, c3):
            await c.send({"type": "ping"})
            await c.expect("pong")
        async with SignalClient.connect(url) as c4:
            assert (await c4.expect("error"))["code"] == "too_many_connections"
            assert await c4.wait_closed() == 4029
    async with SignalClient.connect(url) as c5:  # slots are freed on close
        await c5.send({"type": "ping"})
        await c5.expect("pong")


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_upgrade(stack: Stack, token: str, rcvbuf: int | None = None):
    """A hand-made WebSocket client (for what no well-behaved client library will send)."""
    import socket

    host, port = "127.0.0.1", int(stack.url.rsplit(":", 1)[1])
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        (
            f"GET /signal?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_client_that_stops_reading_is_dropped(tmp_path) -> None:
    # Own node with a generous frame size and rate, so filling the kernel buffers is quick.
    env = {"CODESYNC_SIGNAL_RATE": "2000", "CODESYNC_SIGNAL_SEND_QUEUE": "50"}
    async with signaling_stack(tmp_path, **env) as own:
        room = await own.seed_room({"alice": "owner", "vic": "viewer"})
        async with SignalClient.connect(own.ws_url(room.token("alice"))) as a:
            await a.subscribe(room.id)
            await a.expect("presence")
            # vic subscribes and then never reads its socket again (tiny receive buffer).
            _reader, writer = await raw_upgrade(own, room.token("vic"), rcvbuf=4096)
            try:
                writer.write(masked_text_frame(json.dumps({"type": "subscribe", "topics": [room.id]})))
                await writer.drain()
                await a.expect("presence", lambda f: len(f["peers"]) == 2)
                # (an announce: a signal addressed to a peer vic's viewer role cannot reach is not relayed)
                blob = {"type": "announce", "from": "alice-flood", "pad": "y" * 60000}
                for _ in range(2000):  # ~120 MB at most; the kernel holds a few MB before vic's queue fills
                    await a.publish(room.id, blob)
                    if [f for f in a.pending if f["type"] == "presence" and len(f["peers"]) == 1]:
                        break
                await a.expect("presence", lambda f: len(f["peers"]) == 1, timeout=10)  # vic was dropped
                assert not a.closed
            finally:
                writer.close()
        assert "send buffer full" in own.nodes[0].log()


async def test_keepalive_pings_and_drops_a_silent_client(stack: Stack, room) -> None:
    """WebSocket-level heartbeat: a ping every CODESYNC_SIGNAL_HEARTBEAT s; no pong -> closed."""
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as good:  # answers pings
        await good.subscribe(room.id)
        await good.expect("presence")
        reader, writer = await raw_upgrade(stack, room.token("bob"))  # never answers pings
        try:
            first = await asyncio.wait_for(reader.readexactly(2), 5)
            assert first[0] == 0x89  # FIN + ping
            await asyncio.wait_for(reader.read(), 10)  # EOF: the server gave up on the silent one
        finally:
            writer.close()
        # the ponging client lived through the same heartbeat intervals
        assert not good.closed
        await good.send({"type": "ping"})
        await good.expect("pong")


# ----------------------------------------------------------------------------- ops
async def test_metrics_exposed(stack: Stack, room) -> None:
    async with SignalClient.connect(stack.ws_url(room.token("alice"))) as c:
        await c.subscribe(room.id)
        await c.publish(room.id, announce(pid(room, "m")))
        await c.expect("publish")
        async with httpx.AsyncClient(base_url=stack.url) as http:
            text = (await http.get("/metrics")).text
    for name in (
        'codesync_signal_connections{kind="user"}',
        "codesync_signal_rooms",
        'codesync_signal_messages_in_total{type="publish"}',
        "codesync_signal_messages_out_total",
        'codesync_signal_refusals_total{reason="forbidden"}',
        "codesync_signal_fanout_seconds_bucket",
    ):
        assert name in text, name


async def test_graceful_shutdown_closes_1001(tmp_path) -> None:
    async with signaling_stack(tmp_path) as own:
        r = await own.seed_room({"zed": "owner"})
        async with SignalClient.connect(own.ws_url(r.token("zed"))) as c:
            await c.subscribe(r.id)
            await c.expect("presence")
            own.nodes[0].proc.send_signal(signal.SIGTERM)
            assert await c.wait_closed() == 1001
