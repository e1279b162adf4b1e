"""The browser's data-channel framing (web/src/wire.js) against the Python peers' (peer/):
chunks (type 100) and app messages (type 101) made on one side are read by the other, and the
browser's reassembler refuses malformed or oversized input instead of growing without bound."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from peer.chunking import Reassembler, split_message
from peer.protocol import AppMessage, ChunkMessage, encode_app, encode_sync_update, parse_message
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def js():
    require("node + web/node_modules", shutil.which("node") is not None and (ROOT / "web" / "node_modules" / "lib0").is_dir(), "make web")
    proc = subprocess.Popen(
        ["node", str(ROOT / "web" / "test" / "wire_cli.mjs")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=ROOT / "web", text=True, env={**os.environ},
    )

    def call(**req):
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield call
    proc.stdin.close()
    proc.wait(10)


def test_browser_chunks_reassemble_in_python(js):
    message = encode_sync_update(os.urandom(200_000))
    frames = [bytes.fromhex(f) for f in js(op="chunk", hex=message.hex(), id=7, part=65_536 - 64)["frames"]]
    assert len(frames) == 4 and all(len(f) <= 65_536 for f in frames)
    r = Reassembler()
    out = [r.feed(m) for m in map(parse_message, frames) if isinstance(m, ChunkMessage)]
    assert out[:-1] == [None, None, None] and out[-1] == message


def test_python_chunks_reassemble_in_browser(js):
    message = encode_sync_update(os.urandom(150_000))
    frames = split_message(message, 16_384, 3)
    assert len(frames) > 1
    assert js(op="reassemble", frames=[f.hex() for f in frames])["messages"] == [message.hex()]


def test_browser_reassembler_refuses_bad_input(js):
    message = encode_sync_update(os.urandom(50_000))
    frames = split_message(message, 10_000, 1)
    # Out of order, a part missing, a message over the byte limit: errors, never a wrong message.
    assert "error" in js(op="reassemble", frames=[frames[1].hex(), frames[0].hex()])
    assert js(op="reassemble", frames=[f.hex() for f in frames[:-1]])["messages"] == []
    assert "error" in js(op="reassemble", frames=[f.hex() for f in frames], limits={"maxBytes": 20_000})
    assert "error" in js(op="reassemble", frames=[frames[0].hex(), frames[2].hex()])


def test_app_messages_both_ways(js):
    run = {"op": "run", "run_id": "r-1", "language": "python", "state_vector": "AA==", "note": "ünïcode"}
    parsed = parse_message(bytes.fromhex(js(op="app", obj=run)["hex"]))
    assert isinstance(parsed, AppMessage) and parsed.body == run
    answer = {"op": "run-refused", "run_id": "r-1", "reason": "viewers cannot run code"}
    assert js(op="decode_app", hex=encode_app(answer).hex())["obj"] == answer
    assert "error" in js(op="decode_app", hex=encode_app({"x": 1}).hex()[:-4])
