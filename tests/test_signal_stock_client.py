"""An unmodified y-webrtc client (its own WebrtcProvider/SignalingConn, in Node) through /signal.

The npm package lives in tests/js (``npm ci`` there); Node 20 gets a global WebSocket from
the ``ws`` package, nothing else is patched.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.helpers.stack import SignalClient, signaling_stack
from tests.helpers.components import ROOT, require

pytestmark = [pytest.mark.timeout(60)]

JS = ROOT / "tests" / "js"


class NodeClient:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.events: list[dict] = []

    async def expect(self, predicate, timeout: float = 10.0) -> dict:
        async def read() -> dict:
            for event in self.events:
                if predicate(event):
                    return event
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"node exited: {(await self.proc.stderr.read()).decode()[-2000:]}")
                event = json.loads(line)
                self.events.append(event)
                if predicate(event):
                    return event

        return await asyncio.wait_for(read(), timeout)


def node_binary() -> str:
    node = shutil.which("node")
    require("node", node is not None, "install Node.js")
    require("tests/js/node_modules", (JS / "node_modules" / "y-webrtc").exists(), "run npm ci in tests/js")
    return node or "node"


@asynccontextmanager
async def stock_client(url: str, room_id: str) -> AsyncIterator[NodeClient]:
    proc = await asyncio.create_subprocess_exec(
        node_binary(), "stock_client.mjs", url, room_id,
        cwd=JS, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeClient(proc)
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def test_stock_y_webrtc_client_subscribes_publishes_receives(tmp_path) -> None:
    node_binary()
    async with signaling_stack(tmp_path) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with SignalClient.connect(stack.ws_url(room.token("bob"))) as bob:
            await bob.subscribe(room.id)
            await bob.expect("presence")
            async with stock_client(stack.ws_url(room.token("alice")), room.id) as client:
                proc = client.proc
                peer_id = (await client.expect(lambda e: e["event"] == "ready"))["peerId"]
                # The stock client subscribed and announced itself: bob sees it, stamped as alice.
                announce = await bob.expect("publish", lambda f: f["data"].get("type") == "announce")
                assert announce["data"] == {"type": "announce", "from": peer_id}
                assert announce["sender"]["user_id"] == room.user("alice").id and announce["clients"] == 2
                # ...and it received its own publish back, like from the reference server.
                own = await client.expect(lambda e: e["event"] == "message" and e["message"].get("type") == "publish")
                assert own["message"]["data"] == {"type": "announce", "from": peer_id}
                # It receives what others publish (a signal addressed elsewhere, which it ignores).
                note = {"type": "signal", "from": "bob-peer", "to": "not-" + peer_id, "token": 0.5, "signal": {"type": "answer", "sdp": "v=0"}}
                await bob.publish(room.id, note)
                got = await client.expect(lambda e: e["event"] == "message" and e["message"].get("data") == note)
                assert got["message"]["sender"]["user_id"] == room.user("bob").id
                # Presence (an extra frame type the stock client ignores) reached it too, harmlessly.
                await client.expect(lambda e: e["event"] == "message" and e["message"].get("type") == "presence")
                assert proc.returncode is None


async def test_a_viewers_signal_never_reaches_a_stock_client(tmp_path) -> None:
    """The stock client applies whatever its links send and relays it, so a viewer must never
    get a link to it: the viewer's offer to the stock client's own peer id is refused
    (``relay_refused``), while the viewer's signal to a CodeSync peer that enforces roles is
    relayed (to that peer only: a directed frame reaches its addressee alone)."""
    node_binary()
    roles = ["chunk", "app", "roles"]
    async with signaling_stack(tmp_path) as stack:
        room = await stack.seed_room({"alice": "owner", "rita": "editor", "vic": "viewer"})
        async with SignalClient.connect(stack.ws_url(room.token("vic"))) as vic, SignalClient.connect(
            stack.ws_url(room.token("rita"))
        ) as rita:
            for c in (vic, rita):
                await c.subscribe(room.id)
                await c.expect("presence")
            await rita.publish(room.id, {"type": "announce", "from": "rita-peer", "caps": roles})
            await vic.expect("publish", lambda f: f["data"].get("from") == "rita-peer")
            async with stock_client(stack.ws_url(room.token("alice")), room.id) as client:
                stock = (await client.expect(lambda e: e["event"] == "ready"))["peerId"]
                # The stock client's (caps-less) announce reaches the viewer as usual...
                await vic.expect("publish", lambda f: f["data"] == {"type": "announce", "from": stock})
                # ...but the viewer's offer to it is not relayed. (The viewer never announces
                # here: a stock client answers an announce with an offer, and Node has no WebRTC.)
                offer = {"type": "signal", "from": "vic-peer", "to": stock, "token": 0.9, "signal": {"type": "offer", "sdp": "v=0"}, "caps": roles}
                await vic.publish(room.id, offer)
                assert (await vic.expect("error"))["code"] == "relay_refused"
                # The viewer's offer to the roles peer is relayed, to that peer only.
                to_rita = dict(offer, to="rita-peer")
                await vic.publish(room.id, to_rita)
                assert (await rita.expect("publish", lambda f: f["data"].get("to") == "rita-peer"))["sender"]["role"] == "viewer"
                # Barrier: an undirected frame of the viewer's reaches the stock client (which
                # ignores its unknown type). Frames of one sender arrive in order: neither the
                # refused offer nor the one addressed to rita is among what came before it.
                barrier = {"type": "barrier", "from": "vic-peer"}
                await vic.publish(room.id, barrier)
                await client.expect(lambda e: e["event"] == "message" and e["message"].get("data") == barrier)
                assert not [e for e in client.events if e["event"] == "message" and (e["message"].get("data") or {}).get("to") == "rita-peer"]
                addressed = [e for e in client.events if e["event"] == "message" and (e["message"].get("data") or {}).get("to") == stock]
                assert addressed == [] and client.proc.returncode is None
