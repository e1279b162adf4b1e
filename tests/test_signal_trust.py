"""The signaling server's share of the trust model (docs/protocol.md, "What CodeSync adds").

Attacks made the way the lowest-role member would make them, over real ``/signal`` sockets of
real ``codesync signaling`` processes — one node with the in-process hub, and two nodes on
Redis with the attacker, the victim and the witnesses spread over both — and each followed by
the legitimate use that must keep working:

- **peer-id squatting**: a victim's socket drops and another member claims its peer id
  (``peer_id_taken``; nothing under that id reaches the victim's peers); the victim comes back
  and has its id; the reservation ends after ``CODESYNC_SIGNAL_PEER_ID_GRACE``; one connection
  owns at most two peer ids; a reconnect loop cannot grow reservations without bound.
- **no laundering through stock clients**: a viewer and a peer whose caps lack ``roles``
  never exchange a signal, either way (``relay_refused``, no strike); a viewer and a
  ``roles`` peer do; editors without ``roles`` still reach each other; a demotion applies at
  once.
- **subscribe amplification**: a 60 kB frame of foreign rooms costs at most the topic cap in
  membership lookups (counted by the server's own metrics) and closes the socket after the
  strike limit, while another user is served.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from tests.helpers.stack import SeededRoom, SignalClient, Stack, signaling_stack
from tests.helpers.components import REDIS_URL, port_open, require
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

ROLES_CAPS = ["chunk", "app", "roles"]  # what a CodeSync peer that enforces roles announces


@dataclass
class Layout:
    """Where each client connects: node ``n % nodes`` (so on Redis, 0 and 1 are different nodes)."""

    stack: Stack
    redis: bool

    def ws(self, room: SeededRoom, label: str, node: int = 0) -> str:
        return self.stack.ws_url(room.token(label), node=node % len(self.stack.nodes))

    async def rest(self, room: SeededRoom, as_label: str, method: str, path: str, **kw) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.stack.url, timeout=10) as http:
            r = await http.request(method, path, headers={"Authorization": f"Bearer {room.token(as_label)}"}, **kw)
        assert r.status_code < 300, r.text
        return r


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["memory", "redis-2-nodes"])
async def layout(request, tmp_path_factory) -> Layout:
    if request.param == "memory":
        async with signaling_stack(tmp_path_factory.mktemp("trust")) as s:
            yield Layout(s, False)
        return
    require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
    prefix = f"cstest-{secrets.token_hex(4)}"
    async with signaling_stack(tmp_path_factory.mktemp("trust"), redis_url=REDIS_URL, redis_prefix=prefix, nodes=2) as s:
        yield Layout(s, True)


def peer(name: str) -> str:
    """A fresh peer id (y-webrtc uses random UUIDs)."""
    return f"{name}-{secrets.token_hex(6)}"


def announce(peer_id: str, caps: list[str] | None = None) -> dict:
    data: dict = {"type": "announce", "from": peer_id}
    if caps is not None:
        data["caps"] = caps
    return data


def signal(src: str, dst: str, kind: str = "offer", caps: list[str] | None = None) -> dict:
    """A y-webrtc ``signal`` exactly as a stock client sends it (plus ``caps`` for CodeSync peers)."""
    data: dict = {"type": "signal", "from": src, "to": dst, "token": 0.5, "signal": {"type": kind, "sdp": f"v=0 {src}"}}
    if caps is not None:
        data["caps"] = caps
    return data


def published(client: SignalClient, **match) -> list[dict]:
    """Every ``data`` of a publish ``client`` received so far whose fields equal ``match``."""
    return [
        f["data"] for f in client.frames
        if f.get("type") == "publish" and isinstance(f.get("data"), dict) and all(f["data"].get(k) == v for k, v in match.items())
    ]


async def metric(stack: Stack, name: str, node: int = 0) -> float:
    """One sample of this node's ``GET /metrics`` (0 when the series does not exist yet)."""
    async with httpx.AsyncClient(base_url=stack.nodes[node].url or "", timeout=10) as http:
        text = (await http.get("/metrics")).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _gauge_back(stack: Stack, name: str, node: int, value: float) -> bool:
    return await metric(stack, name, node) <= value


async def joined(client: SignalClient, room: SeededRoom, peer_id: str, caps: list[str] | None = None) -> None:
    """Subscribe and announce; returns once the server echoed the announce (the id is ours)."""
    await client.subscribe(room.id)
    await client.expect("presence")
    await client.publish(room.id, announce(peer_id, caps))
    await client.expect("publish", lambda f: f["data"].get("from") == peer_id)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[SignalClient]:
    """A connection of a user allowed one at a time: the previous one's close may still be
    under way on the server (4029 until it is) — bounded retries."""
    for _ in range(100):
        async with SignalClient.connect(url) as c:
            await c.send({"type": "ping"})
            first = await c.expect(None, lambda f: f["type"] in ("pong", "error"))
            if first["type"] == "pong":
                yield c
                return
            assert first["code"] == "too_many_connections", first
        await asyncio.sleep(0.05)
    raise AssertionError("the user's previous connection was never released")


# ----------------------------------------------------------------------------- peer-id squatting
async def test_dropped_victims_peer_id_cannot_be_squatted_and_comes_back(layout: Layout) -> None:
    room = await layout.stack.seed_room({"olga": "owner", "vic": "editor", "mal": "editor"})
    victim, owner_peer, mal_peer = peer("victim"), peer("olga"), peer("mal")
    async with SignalClient.connect(layout.ws(room, "olga", 0)) as olga, SignalClient.connect(
        layout.ws(room, "mal", 0)
    ) as mal:
        await joined(olga, room, owner_peer)
        await joined(mal, room, mal_peer)
        vic_node = 1 % len(layout.stack.nodes)
        gauge = 'codesync_signal_connections{kind="user"}'
        before = await metric(layout.stack, gauge, vic_node)
        async with SignalClient.connect(layout.ws(room, "vic", vic_node)) as vic:
            await joined(vic, room, victim)
            await olga.expect("presence", lambda f: any(p["peer_ids"] == [victim] for p in f["peers"]))
        # The victim's socket dropped (e.g. the 4001 reconnect after a token refresh)...
        await olga.expect("presence", lambda f: "Vic" not in [p["name"] for p in f["peers"]])
        # ...and its node is done with it (the gauge drops last, after the peer ids were let go).
        await wait_for(lambda: _gauge_back(layout.stack, gauge, vic_node, before), 10, what="the victim's connection to be gone")

        # The attacker claims the id: an offer under it to the victim's peer, and an announce.
        await mal.publish(room.id, signal(victim, owner_peer, "offer"))
        assert (await mal.expect("error"))["code"] == "peer_id_taken"
        await mal.publish(room.id, announce(victim))
        assert (await mal.expect("error"))["code"] == "peer_id_taken"
        # Barrier: the attacker's next frame reaches olga, so anything before it would have too.
        await mal.publish(room.id, signal(mal_peer, owner_peer, "offer"))
        await olga.expect("publish", lambda f: f["data"].get("from") == mal_peer and f["data"].get("type") == "signal")
        assert published(olga, **{"from": victim}) == [announce(victim)]  # the victim's own, nothing else
        assert not mal.closed

        # The victim reconnects (to the other node, on Redis) and takes its id back.
        olga.forget("publish")
        async with SignalClient.connect(layout.ws(room, "vic", 0)) as vic2:
            await joined(vic2, room, victim)
            back = await olga.expect("publish", lambda f: f["data"] == announce(victim))
            assert back["sender"]["user_id"] == room.user("vic").id
            await olga.expect("presence", lambda f: {p["name"]: p["peer_ids"] for p in f["peers"]}.get("Vic") == [victim])
            # ...and can signal under it; the attacker still cannot.
            await vic2.publish(room.id, signal(victim, owner_peer, "answer"))
            got = await olga.expect("publish", lambda f: f["data"].get("to") == owner_peer and f["data"].get("from") == victim)
            assert got["sender"]["user_id"] == room.user("vic").id
            await mal.publish(room.id, announce(victim))
            assert (await mal.expect("error"))["code"] == "peer_id_taken"
            assert not [f for f in vic2.frames if f["type"] == "error"]


async def test_at_most_two_peer_ids_per_connection(layout: Layout) -> None:
    room = await layout.stack.seed_room({"olga": "owner", "mal": "editor"})
    first, second, third = peer("m1"), peer("m2"), peer("m3")
    async with SignalClient.connect(layout.ws(room, "olga", 1)) as olga, SignalClient.connect(
        layout.ws(room, "mal", 0)
    ) as mal:
        await olga.subscribe(room.id)
        await olga.expect("presence")
        await joined(mal, room, first)
        await mal.publish(room.id, announce(second))  # a fresh id after peer_id_taken: allowed
        await mal.expect("publish", lambda f: f["data"].get("from") == second)
        for _ in range(12):  # above the strike limit: refused each time, never closed
            await mal.publish(room.id, announce(third))
        for _ in range(12):
            err = await mal.expect("error")
            assert err["code"] == "too_many_peer_ids" and err["topic"] == room.id
        assert not mal.closed
        # The two ids it owns keep working; the third never reached anyone.
        await mal.publish(room.id, announce(first))
        await olga.expect("publish", lambda f: f["data"].get("from") == first and f["clients"] == 2)
        assert not published(olga, **{"from": third})
        presence = await olga.expect("presence", lambda f: any(p["name"] == "Mal" and len(p["peer_ids"]) == 2 for p in f["peers"]))
        assert sorted(next(p for p in presence["peers"] if p["name"] == "Mal")["peer_ids"]) == sorted([first, second])
    # A new connection of the same user may use it.
    async with SignalClient.connect(layout.ws(room, "mal", 1)) as mal2:
        await joined(mal2, room, third)


@pytest.mark.parametrize("hub", ["memory", "redis-2-nodes"])
async def test_reservation_ends_after_the_grace(tmp_path, hub: str) -> None:
    kw: dict = {}
    if hub != "memory":
        require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
        kw = {"redis_url": REDIS_URL, "redis_prefix": f"cstest-{secrets.token_hex(4)}", "nodes": 2}
    grace = 4  # long enough to try the squat in; short enough to wait out
    async with signaling_stack(tmp_path, CODESYNC_SIGNAL_PEER_ID_GRACE=str(grace), **kw) as stack:
        room = await stack.seed_room({"vic": "editor", "mal": "editor"})
        victim = peer("victim")
        async with SignalClient.connect(stack.ws_url(room.token("mal"), node=0)) as mal:
            await mal.subscribe(room.id)
            await mal.expect("presence")
            async with SignalClient.connect(stack.ws_url(room.token("vic"), node=len(stack.nodes) - 1)) as vic:
                await joined(vic, room, victim)
                await mal.expect("presence", lambda f: any(p["peer_ids"] == [victim] for p in f["peers"]))
            await mal.expect("presence", lambda f: [p["name"] for p in f["peers"]] == ["Mal"])
            await mal.publish(room.id, announce(victim))
            assert (await mal.expect("error"))["code"] == "peer_id_taken"  # within the grace

        async def claim() -> bool:
            """A fresh connection (a refusal is a strike) tries to announce under the id."""
            async with SignalClient.connect(stack.ws_url(room.token("mal"), node=0)) as m:
                await m.subscribe(room.id)
                await m.expect("presence")
                await m.publish(room.id, announce(victim))
                got = await m.expect(None, lambda f: f["type"] == "error" or (f["type"] == "publish" and f["data"].get("from") == victim))
                if got["type"] == "error":
                    assert got["code"] == "peer_id_taken"
                    await asyncio.sleep(0.5)  # poll interval of this bounded loop
                    return False
                assert got["sender"]["user_id"] == room.user("mal").id
                return True

        await wait_for(claim, timeout=grace + 20, interval=0, what="the peer id to be free after the grace")


@pytest.mark.parametrize("hub", ["memory", "redis-2-nodes"])
async def test_reconnect_loop_cannot_grow_reservations(tmp_path, hub: str) -> None:
    """Each principal holds at most 2 x 2 x CODESYNC_SIGNAL_MAX_CONNS_PER_USER reservations (4
    here): a user reconnecting in a loop evicts only its own oldest, never another user's."""
    kw: dict = {}
    if hub != "memory":
        require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
        kw = {"redis_url": REDIS_URL, "redis_prefix": f"cstest-{secrets.token_hex(4)}", "nodes": 2}
    async with signaling_stack(tmp_path, CODESYNC_SIGNAL_MAX_CONNS_PER_USER="1", **kw) as stack:
        room = await stack.seed_room({"bob": "editor", "mal": "editor", "eve": "editor"})
        bobs = peer("bob")
        async with SignalClient.connect(stack.ws_url(room.token("bob"), node=1 % len(stack.nodes))) as bob:
            await joined(bob, room, bobs)
        mals = [peer(f"mal{i}") for i in range(12)]
        for i in range(0, 12, 2):  # six connections, two ids each, closed one after the other
            async with connected(stack.ws_url(room.token("mal"), node=(i // 2) % len(stack.nodes))) as mal:
                await joined(mal, room, mals[i])
                await mal.publish(room.id, announce(mals[i + 1]))
                await mal.expect("publish", lambda f: f["data"].get("from") == mals[i + 1])

        async def try_claim(peer_id: str) -> str:
            async with connected(stack.ws_url(room.token("eve"), node=0)) as eve:
                await eve.subscribe(room.id)
                await eve.expect("presence")
                await eve.publish(room.id, announce(peer_id))
                got = await eve.expect(None, lambda f: f["type"] == "error" or (f["type"] == "publish" and f["data"].get("from") == peer_id))
                return got["code"] if got["type"] == "error" else "ok"

        assert await try_claim(bobs) == "peer_id_taken"  # bob's reservation survived mal's loop
        assert await try_claim(mals[-1]) == "peer_id_taken"  # mal's newest are still kept
        assert await try_claim(mals[0]) == "ok"  # mal's oldest were let go


# ----------------------------------------------------------------------------- relay rule
async def test_viewer_and_peer_without_roles_never_exchange_signals(layout: Layout) -> None:
    room = await layout.stack.seed_room({"olga": "owner", "ed": "editor", "rita": "editor", "vic": "viewer", "val": "viewer"})
    o, e, r, v = peer("olga-stock"), peer("ed-stock"), peer("rita-roles"), peer("vic-roles")
    async with SignalClient.connect(layout.ws(room, "olga", 0)) as olga, SignalClient.connect(
        layout.ws(room, "ed", 0)
    ) as ed, SignalClient.connect(layout.ws(room, "rita", 1)) as rita, SignalClient.connect(layout.ws(room, "vic", 1)) as vic:
        own = {olga: (o, None), ed: (e, None), rita: (r, ROLES_CAPS), vic: (v, ROLES_CAPS)}  # stock: no caps
        for c in own:
            await c.subscribe(room.id)
        for c in own:
            await c.expect("presence", lambda f: len(f["peers"]) == 4)
        for c, (pid, caps) in own.items():
            await c.publish(room.id, announce(pid, caps))
        # Announces are relayed as usual: everyone hears everyone's (the viewer's too).
        for c in own:
            for pid, caps in own.values():
                await c.expect("publish", lambda f, pid=pid, caps=caps: f["data"] == announce(pid, caps))

        # stock editor -> viewer: refused (the stock client would apply a viewer's updates)
        await ed.publish(room.id, signal(e, v, "offer"))
        refused = await ed.expect("error")
        assert refused["code"] == "relay_refused" and refused["topic"] == room.id and refused["message"]
        # viewer -> stock editor: refused
        await vic.publish(room.id, signal(v, e, "offer", ROLES_CAPS))
        assert (await vic.expect("error"))["code"] == "relay_refused"
        # viewer <-> an editor that enforces roles: relayed both ways
        await vic.publish(room.id, signal(v, r, "offer", ROLES_CAPS))
        await rita.expect("publish", lambda f: f["data"].get("to") == r and f["data"].get("from") == v)
        await rita.publish(room.id, signal(r, v, "answer", ROLES_CAPS))
        await vic.expect("publish", lambda f: f["data"].get("to") == v and f["data"].get("from") == r)
        # stock editors still reach each other (y-webrtc interop) and roles peers
        await ed.publish(room.id, signal(e, o, "offer"))
        await olga.expect("publish", lambda f: f["data"].get("to") == o and f["data"].get("from") == e)
        await olga.publish(room.id, signal(o, e, "answer"))
        await ed.expect("publish", lambda f: f["data"].get("to") == e and f["data"].get("from") == o)
        await rita.publish(room.id, signal(r, e, "offer", ROLES_CAPS))
        await ed.expect("publish", lambda f: f["data"].get("to") == e and f["data"].get("from") == r)

        # Barriers: the viewer got ed's later announce, ed got the viewer's — frames of one
        # sender arrive in order, so the refused ones would be there. (Directed frames reach
        # only their addressee, so a later broadcast is the barrier.)
        await ed.publish(room.id, announce(e, None))
        await vic.publish(room.id, announce(v, ROLES_CAPS))
        await vic.expect("publish", lambda f: f["data"] == announce(e, None))
        await ed.expect("publish", lambda f: f["data"] == announce(v, ROLES_CAPS))
        assert not published(vic, **{"from": e, "to": v})
        assert not published(ed, **{"from": v, "to": e})

        # No strike: a stock client keeps answering announces; it is refused, not closed.
        for _ in range(12):
            await ed.publish(room.id, signal(e, v, "candidate"))
        for _ in range(12):
            assert (await ed.expect("error"))["code"] == "relay_refused"
        assert not ed.closed and not published(vic, **{"from": e, "to": v})

        # A viewer's encrypted (y-webrtc password) frame could only be meant for a stock client.
        await vic.publish(room.id, "ZW5jcnlwdGVk")
        assert (await vic.expect("error"))["code"] == "relay_refused"
        await ed.publish(room.id, "ZW5jcnlwdGVk")  # an editor's is relayed untouched
        await olga.expect("publish", lambda f: f["data"] == "ZW5jcnlwdGVk")

        # A stock viewer and a service connection (services always enforce roles): relayed.
        async with SignalClient.connect(layout.stack.ws_url(await layout.stack.service_token("persistence"), node=1 % len(layout.stack.nodes))) as svc, SignalClient.connect(
            layout.ws(room, "val", 0)
        ) as val:
            s, w = peer("persist"), peer("val-stock")
            await joined(svc, room, s)
            await joined(val, room, w)
            await val.publish(room.id, signal(w, s, "offer"))
            await svc.expect("publish", lambda f: f["data"].get("to") == s and f["data"].get("from") == w)
            await svc.publish(room.id, signal(s, w, "answer"))
            await val.expect("publish", lambda f: f["data"].get("to") == w and f["data"].get("from") == s)
            # ...but that stock viewer cannot reach a stock editor
            await val.publish(room.id, signal(w, e, "offer"))
            assert (await val.expect("error"))["code"] == "relay_refused"

    refusals = 0.0
    for node in range(len(layout.stack.nodes)):
        refusals += await metric(layout.stack, 'codesync_signal_refusals_total{reason="relay_refused"}', node)
    assert refusals >= 2 + 12 + 1 + 1


async def test_unknown_or_absent_target_of_a_viewers_signal_is_refused(layout: Layout) -> None:
    """A viewer cannot address a stock client by guessing or by an id from another room."""
    room = await layout.stack.seed_room({"olga": "owner", "vic": "viewer"})
    other = await layout.stack.seed_room({"olga": "owner"})
    stock = peer("olga-elsewhere")
    async with SignalClient.connect(layout.stack.ws_url(other.token("olga"), node=1 % len(layout.stack.nodes))) as olga2, SignalClient.connect(
        layout.ws(room, "vic", 0)
    ) as vic:
        await joined(olga2, other, stock)  # known to the server, but not in vic's room
        v = peer("vic")
        await joined(vic, room, v, ROLES_CAPS)
        for target in (stock, "no-such-peer"):
            await vic.publish(room.id, signal(v, target, "offer", ROLES_CAPS))
            assert (await vic.expect("error"))["code"] == "relay_refused"
        # an announce-like frame addressed to one peer is a signal as far as y-webrtc is concerned
        await vic.publish(room.id, {"type": "announce", "from": v, "to": stock})
        assert (await vic.expect("error"))["code"] == "relay_refused"


async def test_demotion_while_connected_applies_the_rule_at_once(layout: Layout) -> None:
    room = await layout.stack.seed_room({"olga": "owner", "dan": "editor", "ed": "editor"})
    d, e = peer("dan-stock"), peer("ed-stock")
    async with SignalClient.connect(layout.ws(room, "dan", 1)) as dan, SignalClient.connect(layout.ws(room, "ed", 0)) as ed:
        await joined(dan, room, d)
        await joined(ed, room, e)
        await dan.expect("publish", lambda f: f["data"] == announce(e))  # y-webrtc answers announces
        await dan.publish(room.id, signal(d, e, "offer"))
        await ed.expect("publish", lambda f: f["data"].get("to") == e)

        await layout.rest(room, "olga", "PUT", f"/api/rooms/{room.id}/members/{room.user('dan').id}", json={"role": "viewer"})
        for c in (dan, ed):  # presence is how peers learn it; from then on the rule holds
            await c.expect("presence", lambda f: {p["name"]: p["role"] for p in f["peers"]}.get("Dan") == "viewer")
        await dan.publish(room.id, signal(d, e, "candidate"))
        assert (await dan.expect("error"))["code"] == "relay_refused"
        await ed.publish(room.id, signal(e, d, "answer"))
        assert (await ed.expect("error"))["code"] == "relay_refused"
        # The editor's peer starts enforcing roles (its caps say so): it may reach the viewer.
        await ed.publish(room.id, announce(e, ROLES_CAPS))
        await ed.publish(room.id, signal(e, d, "answer", ROLES_CAPS))
        await dan.expect("publish", lambda f: f["data"].get("to") == d and f["data"].get("from") == e)
        await ed.publish(room.id, announce(e, []))  # and back to a stock-like peer
        await ed.publish(room.id, signal(e, d, "answer"))
        assert (await ed.expect("error"))["code"] == "relay_refused"

        for c in (dan, ed):
            c.forget("presence")  # older frames show Dan as an editor too
        await layout.rest(room, "olga", "PUT", f"/api/rooms/{room.id}/members/{room.user('dan').id}", json={"role": "editor"})
        for c in (dan, ed):
            await c.expect("presence", lambda f: {p["name"]: p["role"] for p in f["peers"]}.get("Dan") == "editor")
        await dan.publish(room.id, signal(d, e, "offer"))
        await ed.expect("publish", lambda f: f["data"].get("to") == e and f["data"]["signal"]["type"] == "offer" and f["sender"]["role"] == "editor")
        await ed.publish(room.id, signal(e, d, "answer"))
        await dan.expect("publish", lambda f: f["data"].get("to") == d and f["data"]["signal"]["type"] == "answer" and f["data"].get("caps") is None)


# ----------------------------------------------------------------------------- amplification
def foreign_topics_frame(n: int) -> str:
    frame = json.dumps({"type": "subscribe", "topics": [f"t{i:07d}" for i in range(n)]}, separators=(",", ":"))
    assert len(frame) < 64 * 1024  # below CODESYNC_SIGNAL_MAX_FRAME: the server reads it all
    return frame


async def test_subscribe_frame_of_foreign_rooms_costs_at_most_the_cap(layout: Layout) -> None:
    room = await layout.stack.seed_room({"olga": "owner", "eve": "viewer"})
    stack = layout.stack
    async with SignalClient.connect(layout.ws(room, "olga", 0)) as olga, SignalClient.connect(layout.ws(room, "eve", 0)) as eve:
        await joined(olga, room, peer("olga"))
        lookups0 = await metric(stack, "codesync_signal_membership_lookups_total")
        forbidden0 = await metric(stack, 'codesync_signal_refusals_total{reason="forbidden"}')
        frame = foreign_topics_frame(5500)  # ~60 kB: 5,500 rooms eve is not a member of
        await eve.send(frame)
        await olga.send({"type": "ping"})  # another user, right behind the attack
        await olga.expect("pong", timeout=10)
        # ...is served: its room works while (or after) the attacker is dealt with
        await olga.publish(room.id, announce(peer("olga2")))
        await olga.expect("publish", lambda f: f["clients"] >= 1 and f["data"]["from"].startswith("olga2"))
        assert await eve.wait_closed() == 1008  # refused topics are strikes (10 by default)
    errors = [f for f in eve.frames if f["type"] == "error"]
    assert 1 <= len(errors) <= 32 and {f["code"] for f in errors} == {"forbidden"}, errors[:3]
    lookups = await metric(stack, "codesync_signal_membership_lookups_total") - lookups0
    forbidden = await metric(stack, 'codesync_signal_refusals_total{reason="forbidden"}') - forbidden0
    # at most the per-connection topic cap (32), and here the strike limit (10) came first
    assert 1 <= lookups <= 10 and forbidden == lookups == len(errors), (lookups, forbidden, len(errors))
    # The attacker's own membership still works on a fresh connection.
    async with SignalClient.connect(layout.ws(room, "eve", 0)) as eve2:
        await eve2.subscribe(room.id)
        await eve2.expect("presence")
