"""Fuzzing ``/signal`` of a LIVE ``codesync signaling`` process (in-process hub and Redis hub).

Hypothesis builds batches of hostile frames — structured y-webrtc frames with wrong types in
every field, random JSON, garbage text, binary frames, invalid UTF-8 in text frames, lone
surrogates, deep nesting, frames above the size limit — and sends each batch over a fresh
connection of a room member ("mallory", editor of room A, where the viewer "vera" sits, so
addressed frames take the relay rule's full path). After every batch:

- the server process is alive and has logged no traceback;
- a fresh connection can subscribe to room A and publish, and gets its own frame back;
- the observer in room B (where mallory is not a member) has received nothing but B's own
  presence frames — no frame leaked across rooms;
- every frame the witness in room A received is strict JSON (no NaN/Infinity), and every
  relayed ``publish`` carries a server-made ``sender`` of a real member.

Budget: ``FUZZ_EXAMPLES`` (see tests/helpers/fuzzing.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.fuzzing import LiveLoop, fuzz_settings
from tests.helpers.stack import SeededRoom, SignalClient, Stack, signaling_stack
from tests.helpers.components import REDIS_URL, port_open, require
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(150)

ROOM_A, ROOM_B = "@A", "@B"  # placeholders, replaced with the seeded room ids in the final text

# ----------------------------------------------------------------------------- strategies
weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "x\udfff", "\ud83d", "\x00", "\u2028", "A" * 129, "", " ", "__proto__", "constructor"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
)
json_values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(weird_text, c, max_size=4), max_leaves=12
)
topic = st.one_of(st.sampled_from([ROOM_A, ROOM_A, ROOM_B]), weird_text, json_values)
signal_data = st.fixed_dictionaries(
    {"type": st.sampled_from(["announce", "signal"]) | weird_text, "from": weird_text | json_values},
    optional={
        "to": st.sampled_from(["vera", "m"]) | weird_text | json_values,  # vera: the viewer's peer id
        "token": json_values,
        "signal": json_values,
        "caps": st.sampled_from([["roles"], ["chunk", "app", "roles"], []]) | json_values,
    },
)
data = st.one_of(signal_data, json_values, st.text(max_size=200))
structured = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "pong", "error"]) | json_values},
    optional={"topics": st.lists(topic, max_size=4) | json_values, "topic": topic, "data": data, "clients": json_values},
)


def _nested(depth: int, open_: str, close: str) -> str:
    return '{"type":"publish","topic":"@A","data":{"type":"announce","from":"deep","x":' + open_ * depth + close * depth + "}}"


frames = st.one_of(
    structured.map(lambda f: ("text", json.dumps(f, allow_nan=True))),
    st.lists(st.sampled_from(["subscribe", "publish", "unsubscribe"]), min_size=1, max_size=1).map(
        lambda t: ("text", json.dumps({"type": t[0], "topics": [ROOM_A], "topic": ROOM_A, "data": {"type": "announce", "from": "m"}}))
    ),
    json_values.map(lambda v: ("text", json.dumps(v, allow_nan=True))),
    st.text(max_size=300).map(lambda s: ("text", s)),
    st.binary(max_size=300).map(lambda b: ("bytes", b)),
    st.binary(min_size=1, max_size=64).map(lambda b: ("raw-text", b + b"\xff\xfe")),  # invalid UTF-8, TEXT opcode
    st.integers(1, 30000).map(lambda d: ("text", _nested(d, "[", "]"))),
    st.integers(1, 6000).map(lambda d: ("text", _nested(d, '{"a":', "}"))),
    st.sampled_from([60 * 1024, 64 * 1024 + 1, 300 * 1024]).map(
        lambda n: ("text", json.dumps({"type": "publish", "topic": ROOM_A, "data": {"type": "announce", "from": "big", "pad": "x" * n}}))
    ),
)
batches = st.tuples(st.booleans(), st.lists(frames, min_size=1, max_size=10))


# ----------------------------------------------------------------------------- the live stack
@dataclass
class Live:
    loop: LiveLoop
    stack: Stack
    a: SeededRoom
    b: SeededRoom
    observer: SignalClient  # carol, in room B only
    witness: "RawClient"  # bob, in room A
    viewer: "RawClient"  # vera, a viewer in room A: every addressed publish there takes the relay rule's full path
    cms: list[Any] = field(default_factory=list)
    batch_no: int = 0

    def url(self, label: str) -> str:
        room = self.a if label in self.a.users else self.b
        return self.stack.ws_url(room.token(label), node=self.batch_no % len(self.stack.nodes))

    def resolve(self, text: str) -> str:
        return text.replace(ROOM_A, self.a.id).replace(ROOM_B, self.b.id)


class RawClient:
    """Keeps the raw text of every frame, to check it is strict JSON."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session, self.ws = session, ws
        self.raw: list[str] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.raw.append(msg.data)

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()
        await self.session.close()


def _strict(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


@pytest.fixture(scope="module", params=["memory", "redis"])
def live(request, tmp_path_factory) -> Iterator[Live]:
    env: dict[str, Any] = {"CODESYNC_SIGNAL_MAX_CONNS_PER_USER": "500"}
    nodes = 1
    if request.param == "redis":
        require("Redis", port_open("127.0.0.1", 6379), "start redis-server on 127.0.0.1:6379")
        import secrets

        env.update(redis_url=REDIS_URL, redis_prefix=f"csfuzz-{secrets.token_hex(4)}")
        nodes = 2  # batches alternate between the two nodes; the observer/witness sit on node 0
    loop = LiveLoop()
    cm = signaling_stack(tmp_path_factory.mktemp(f"fuzz-signal-{request.param}"), nodes=nodes, **env)

    async def setup() -> Live:
        stack = await cm.__aenter__()
        a = await stack.seed_room({"alice": "owner", "bob": "editor", "mallory": "editor", "vera": "viewer"}, name="A")
        b = await stack.seed_room({"carol": "owner"}, name="B")
        obs_cm = SignalClient.connect(stack.ws_url(b.token("carol")))
        observer = await obs_cm.__aenter__()
        await observer.subscribe(b.id)
        await observer.expect("presence")
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(stack.ws_url(a.token("bob")))
        witness = RawClient(session, ws)
        await ws.send_str(json.dumps({"type": "subscribe", "topics": [a.id]}))
        vsession = aiohttp.ClientSession()
        vws = await vsession.ws_connect(stack.ws_url(a.token("vera"), node=len(stack.nodes) - 1))
        viewer = RawClient(vsession, vws)
        await vws.send_str(json.dumps({"type": "subscribe", "topics": [a.id]}))
        await vws.send_str(json.dumps({"type": "publish", "topic": a.id, "data": {"type": "announce", "from": "vera", "caps": ["roles"]}}))
        return Live(loop, stack, a, b, observer, witness, viewer, [obs_cm])

    live = loop.run(setup(), 60)
    try:
        yield live
    finally:

        async def teardown() -> None:
            await live.witness.close()
            await live.viewer.close()
            for c in live.cms:
                await c.__aexit__(None, None, None)
            await cm.__aexit__(None, None, None)

        try:
            loop.run(teardown(), 60)
        finally:
            loop.close()


# ----------------------------------------------------------------------------- checks
async def send_batch(live: Live, subscribe_first: bool, batch: list[tuple[str, Any]]) -> int | None:
    """Send one batch from mallory; return the close code if the server closed the socket."""
    async with SignalClient.connect(live.url("mallory")) as m:
        if subscribe_first:
            await m.subscribe(live.a.id)
            await m.expect("presence")
        for kind, payload in batch:
            if m.closed:
                break
            try:
                if kind == "text":
                    await m.ws.send_str(live.resolve(payload))
                elif kind == "bytes":
                    await m.ws.send_bytes(payload)
                else:
                    await m.ws.send_frame(payload, aiohttp.WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                break
        if not m.closed:
            try:
                await m.send({"type": "ping"})
            except (ConnectionError, RuntimeError):
                pass
        # every frame was processed in order once the pong arrives (or the server closed)
        for _ in range(500):
            if m.closed or any(f.get("type") == "pong" for f in m.frames):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"hang: no pong and no close after a batch; got {m.frames[-5:]}")
        for f in m.frames:
            assert f.get("type") != "error" or isinstance(f.get("code"), str), f
        return m.close_code if m.closed else None


async def healthy(live: Live) -> None:
    """A fresh, well-formed client still gets full service in room A."""
    live.batch_no += 1
    peer = f"health-{live.batch_no}"
    async with SignalClient.connect(live.url("alice")) as alice:
        await alice.subscribe(live.a.id)
        await alice.expect("presence", timeout=10)
        await alice.publish(live.a.id, {"type": "announce", "from": peer})
        echo = await alice.expect("publish", lambda f: f["data"].get("from") == peer, timeout=10)
        assert echo["topic"] == live.a.id and echo["sender"]["user_id"] == live.a.user("alice").id
        await alice.send({"type": "ping"})
        await alice.expect("pong", timeout=10)


def check_isolation(live: Live) -> None:
    """Checks the frames received since the last check (so one finding doesn't fail every later example)."""
    observed, live.observer.frames = live.observer.frames, []
    raw, live.witness.raw = live.witness.raw, []
    for frame in observed:
        assert frame.get("type") in ("presence", "pong"), f"room B received a foreign frame: {str(frame)[:300]}"
        assert frame.get("topic", live.b.id) == live.b.id, f"room B received a frame of {frame.get('topic')}"
    members = {u.id for u in live.a.users.values()}
    for text in raw:
        frame = _strict(text)  # the server never relays NaN/Infinity a browser's JSON.parse refuses
        if frame.get("type") == "publish":
            assert frame["topic"] == live.a.id, frame
            assert frame["sender"]["user_id"] in members and set(frame["sender"]) == {"user_id", "name", "role"}
            assert isinstance(frame["clients"], int)


def check_server(live: Live) -> None:
    for node in live.stack.nodes:
        assert node.proc.poll() is None, f"{node.name} died:\n{node.log()[-3000:]}"
        log = node.log()
        assert "Traceback" not in log, f"{node.name} logged a traceback:\n{log[-4000:]}"


# ----------------------------------------------------------------------------- tests
@fuzz_settings(150)
@given(batch=batches)
def test_hostile_frame_batches_never_hurt_the_server_or_other_rooms(live: Live, batch) -> None:
    subscribe_first, frames_ = batch
    code = live.loop.run(send_batch(live, subscribe_first, frames_))
    assert code not in (1011,), f"internal error closing the socket; server log:\n{live.stack.nodes[0].log()[-3000:]}"
    live.loop.run(healthy(live))
    check_isolation(live)
    check_server(live)


def test_oversized_and_flooding_clients_are_cut_off_cleanly(live: Live) -> None:
    async def run() -> list[int | None]:
        codes = []
        # 10 MB in one text frame: closed with 1009 before the server buffers it
        codes.append(await send_batch(live, True, [("text", "x" * (10 * 1024 * 1024))]))
        # 600 well-formed frames at once: rate limited, then closed for abuse. The client may
        # see only a reset (1006, no frames): the server closes while our pings are still
        # arriving, and a close with unread input is a TCP RST that discards what we had not
        # read yet. So the server's own log is the witness.
        def closes() -> int:
            return sum(node.log().count("bad frames") for node in live.stack.nodes)

        before = closes()
        async with SignalClient.connect(live.url("mallory")) as m:
            for _ in range(600):
                if m.closed:
                    break
                try:
                    await m.send({"type": "ping"})
                except (ConnectionError, RuntimeError):
                    break
            codes.append(await m.wait_closed(10))
            errors = {f.get("code") for f in m.frames if f.get("type") == "error"}
            assert errors <= {"rate_limited"}, errors
        await wait_for(lambda: closes() > before, 5,
                       what="the server closing the flooding socket for abuse")
        return codes

    too_big, flood = live.loop.run(run(), 60)
    assert too_big in (1009, 1006)  # 1006: the server closed (1009) while our client was still writing
    assert flood in (1008, 1000, 1006)  # 1008 from the server, or our own view of the reset
    live.loop.run(healthy(live))
    check_isolation(live)
    check_server(live)


def test_regression_lone_surrogates_and_nan_are_refused_not_relayed(live: Live) -> None:
    """Found by the fuzzer (signaling/ws/protocol.py): a ``"\\ud800"`` escape in a publish was
    relayed as a lone surrogate, the UTF-8 encode in every subscriber's writer task failed and
    those connections went silent for good (no pong, no publish); in a topic it reached the
    database as a traceback. ``NaN`` was relayed as non-JSON a browser's JSON.parse refuses."""

    async def run() -> None:
        async with SignalClient.connect(live.url("mallory")) as m:
            await m.subscribe(live.a.id)
            await m.expect("presence")
            bad = [
                '{"type":"publish","topic":"@A","data":{"type":"announce","from":"s1","x":"\\ud800"}}',
                '{"type":"publish","topic":"@A","data":{"type":"announce","from":"\\udfff"}}',
                '{"type":"subscribe","topics":["\\ud83d"]}',
                '{"type":"publish","topic":"@A","data":{"type":"announce","from":"n1","x":NaN}}',
                '{"type":"publish","topic":"@A","data":{"type":"announce","from":"n2","x":-Infinity}}',
                # orjson reads 1024 levels but writes 255: this one used to log a server traceback
                _nested(300, "[", "]"),
            ]
            for text in bad:
                await m.ws.send_str(live.resolve(text))
            codes = [(await m.expect("error"))["code"] for _ in bad]
            assert codes == ["invalid_unicode"] * 3 + ["malformed_json"] * 3
            await m.send({"type": "ping"})
            await m.expect("pong")
            # mallory's and bob's connections still carry traffic
            await m.publish(live.a.id, {"type": "announce", "from": "after-bad"})
            await m.expect("publish", lambda f: f["data"]["from"] == "after-bad")
        await healthy(live)
        await wait_for(lambda: any('"after-bad"' in t for t in live.witness.raw), 5, what="witness still receives")

    live.loop.run(run(), 30)
    check_isolation(live)
    check_server(live)
