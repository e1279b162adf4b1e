"""An unmodified y-webrtc client (its own WebrtcProvider/SignalingConn, in Node) through /signal.

The npm package lives in tests/js (``npm ci`` there); Node 20 gets a global WebSocket from
the ``ws`` package, nothing else is patched.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.stack import SignalClient, signaling_stack
from tests.support import ROOT, require

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


async def test_stock_y_webrtc_client_subscribes_publishes_receives(tmp_path) -> None:
    node = shutil.which("node")
    require("node", node is not None, "install Node.js")
    require("tests/js/node_modules", (JS / "node_modules" / "y-webrtc").exists(), "run npm ci in tests/js")
    async with signaling_stack(tmp_path) as stack:
        room = await stack.seed_room({"alice": "owner", "bob": "editor"})
        async with SignalClient.connect(stack.ws_url(room.token("bob"))) as bob:
            await bob.subscribe(room.id)
            await bob.expect("presence")
            proc = await asyncio.create_subprocess_exec(
                node, "stock_client.mjs", stack.ws_url(room.token("alice")), room.id,
                cwd=JS, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            client = NodeClient(proc)
            try:
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
            finally:
                if proc.returncode is None:
                    proc.stdin.close()
                    try:
                        await asyncio.wait_for(proc.wait(), 5)
                    except asyncio.TimeoutError:
                        proc.kill()
                        await proc.wait()
