"""TURN through a real coturn: REST credentials from /api/ice-servers, relay-only ICE.

coturn (Debian package ``coturn``) is started by the test on 127.0.0.1 with the deployment's
configuration (deploy/turnserver.conf: ``use-auth-secret``, no TLS) and command-line overrides:
the secret, a realm, loopback listening/relay addresses and ports, and ``allow-loopback-peers`` so
relayed traffic may go to 127.0.0.1. Peers use aiortc's relay transport policy, so they gather no host candidates at all
and every packet between them goes through coturn; ``CODESYNC_ICE_HOSTS=127.0.0.1``
(peer/ice.py) keeps anything else off the machine's real interfaces.
"""

from __future__ import annotations

import asyncio
import re
import base64
import hashlib
import hmac
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCIceTransportPolicy, RTCPeerConnection
from pycrdt import Doc, Text, YMessageType, create_sync_message, create_update_message, handle_sync_message

from peer.ice import apply_ice_policy, ice_servers_from_json
from signaling.api.ops import ice_servers
from tests.helpers.api import in_process_api
from tests.helpers.components import ROOT, free_port, port_open, require
from tests.helpers.processes import stop_process
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(90)

REALM = "codesync.test"


@dataclass
class Coturn:
    port: int
    secret: str
    relay_ports: range
    proc: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def turn_credentials(secret: str, user_id: str, expiry: int) -> tuple[str, str]:
    """TURN REST API credentials, computed independently of signaling/api/ops.py."""
    username = f"{expiry}:{user_id}"
    return username, base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    require("coturn", binary is not None, "apt-get install coturn")
    port = free_port()
    # The relay range: free ports below the kernel's ephemeral range, picked per test run.
    relay_low = 20000 + secrets.randbelow(20) * 1000
    secret = secrets.token_urlsafe(24)
    log_path = tmp_path / "turnserver.log"
    args = [
        binary,
        # The deployment's own file (validates it), with loopback overrides on the command line.
        "-c",
        str(ROOT / "deploy" / "turnserver.conf"),
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={relay_low}",
        f"--max-port={relay_low + 999}",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--verbose",  # session lines name the TURN username (the peer-library test reads them)
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
    ]
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
    server = Coturn(port, secret, range(relay_low, relay_low + 1000), proc, log_path)
    try:
        deadline = time.monotonic() + 15
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None, f"turnserver exited:\n{server.log()[-3000:]}"
            assert time.monotonic() < deadline, f"turnserver did not listen:\n{server.log()[-3000:]}"
            time.sleep(0.05)  # polling a port another process opens; no event to wait on
        yield server
    finally:
        stop_process(proc)


@pytest.fixture
async def turn_api(make_settings, sqlite_url, coturn: Coturn) -> AsyncIterator:
    settings = make_settings(
        database_url=sqlite_url,
        turn_urls=coturn.url,
        turn_secret=coturn.secret,
        turn_ttl=600,
        stun_urls=f"stun:127.0.0.1:{coturn.port}",
        ice_hosts="127.0.0.1",
    )
    async with in_process_api(settings) as api:
        yield api


# --------------------------------------------------------------------------- ice-servers API


async def test_ice_servers_rest_credentials(api_sqlite):
    api_sqlite.settings.turn_urls = "turn:turn.example.org:3478?transport=udp, turn:turn.example.org:3478?transport=tcp"
    api_sqlite.settings.turn_secret = "shared"
    api_sqlite.settings.turn_ttl = 120
    api_sqlite.settings.stun_urls = "stun:turn.example.org:3478"
    assert (await api_sqlite.client.get("/api/ice-servers")).status_code == 401
    user = await api_sqlite.register()
    before = int(time.time())
    r = await api_sqlite.client.get("/api/ice-servers", headers=api_sqlite.auth(user))
    assert r.status_code == 200
    stun, turn = r.json()
    assert stun == {"urls": ["stun:turn.example.org:3478"]}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp", "turn:turn.example.org:3478?transport=tcp"]
    expiry, user_id = turn["username"].split(":", 1)
    assert user_id == user["user"]["id"]
    assert before + 120 <= int(expiry) <= int(time.time()) + 120
    assert turn["credential"] == turn_credentials("shared", user_id, int(expiry))[1]


def test_ice_servers_without_turn_secret_has_no_turn():
    from codesync.settings import Settings

    assert ice_servers(Settings(turn_urls="turn:x:3478"), "u") == []
    assert ice_servers(Settings(stun_urls="stun:x:3478"), "u") == [{"urls": ["stun:x:3478"]}]


# --------------------------------------------------------------------------- coturn refuses


async def _allocate(coturn: Coturn, username: str, password: str) -> None:
    from aioice.turn import create_turn_endpoint

    transport, _ = await create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", coturn.port), username, password
    )
    transport.close()


def _error_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    return response.attributes.get("ERROR-CODE", (None,))[0]


async def test_coturn_accepts_valid_and_refuses_wrong_or_expired_credentials(coturn: Coturn):
    from aioice.stun import TransactionFailed

    now = int(time.time())
    await _allocate(coturn, *turn_credentials(coturn.secret, "alice", now + 300))  # the control: it works

    wrong_user, wrong_credential = turn_credentials("not-the-secret", "alice", now + 300)
    with pytest.raises(TransactionFailed) as refused:
        await _allocate(coturn, wrong_user, wrong_credential)
    assert _error_code(refused.value) == 401

    with pytest.raises(TransactionFailed) as expired:
        await _allocate(coturn, *turn_credentials(coturn.secret, "alice", now - 10))
    assert _error_code(expired.value) == 401


# --------------------------------------------------------------------------- peers through TURN


class YjsChannel:
    """Just enough y-protocols over one data channel: sync on open, then live updates."""

    def __init__(self, doc: Doc):
        self.doc = doc
        self.channel = None
        doc.observe(self._on_change)

    def _on_change(self, event) -> None:
        if self.channel is not None and self.channel.readyState == "open" and not self._applying:
            self.channel.send(create_update_message(event.update))

    _applying = False

    def attach(self, channel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: bytes) -> None:
            assert message[0] == YMessageType.SYNC
            self._applying = True
            try:
                reply = handle_sync_message(message[1:], self.doc)
            finally:
                self._applying = False
            if reply is not None:
                channel.send(reply)

        def opened() -> None:
            channel.send(create_sync_message(self.doc))

        if channel.readyState == "open":
            opened()
        else:
            channel.on("open", opened)


def _selected_pair(pc: RTCPeerConnection):
    connection = pc.sctp.transport.transport._connection  # aiortc -> aioice
    return connection._nominated.get(1)


async def test_two_peers_exchange_document_updates_through_coturn(turn_api, coturn: Coturn):
    assert apply_ice_policy("127.0.0.1")
    user = await turn_api.register()
    r = await turn_api.client.get("/api/ice-servers", headers=turn_api.auth(user))
    assert r.status_code == 200
    servers = ice_servers_from_json(r.json())
    assert any(s.username and s.username.endswith(":" + user["user"]["id"]) for s in servers)
    config = RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)

    doc_a, doc_b = Doc(), Doc()
    doc_a["source"] = text_a = Text("print('hello')\n")
    doc_b["source"] = text_b = Text()
    side_a, side_b = YjsChannel(doc_a), YjsChannel(doc_b)
    a, b = RTCPeerConnection(config), RTCPeerConnection(config)
    try:
        side_a.attach(a.createDataChannel("yjs"))
        b.on("datachannel", side_b.attach)
        await a.setLocalDescription(await a.createOffer())
        offer_sdp = a.localDescription.sdp
        candidates = [line for line in offer_sdp.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay " in c for c in candidates), candidates
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)

        await wait_for(lambda: str(text_b) == "print('hello')\n", timeout=30, what="initial sync through TURN")
        text_b += "print('from b')\n"
        text_a.insert(0, "# shared\n")
        expected = "# shared\nprint('hello')\nprint('from b')\n"
        await wait_for(lambda: str(text_a) == expected and str(text_b) == expected, timeout=15, what="live updates")

        for pc in (a, b):
            pair = _selected_pair(pc)
            assert pair is not None
            assert pair.local_candidate.type == "relay" and pair.remote_candidate.type == "relay"
            # Both ends are addresses coturn allocated from its relay range: traffic went through it.
            for candidate in (pair.local_candidate, pair.remote_candidate):
                assert candidate.host == "127.0.0.1" and candidate.port in coturn.relay_ports
    finally:
        await asyncio.gather(a.close(), b.close())


# --------------------------------------------------------------------------- the peer library


async def test_peer_library_rooms_allocate_on_coturn_with_signaling_credentials(tmp_path: Path, coturn: Coturn):
    """Room peers fetch /api/ice-servers themselves and allocate relays on coturn with those credentials."""
    from peer import Room
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(
        tmp_path,
        CODESYNC_TURN_URLS=coturn.url,
        CODESYNC_TURN_SECRET=coturn.secret,
        CODESYNC_TURN_TTL="300",
    ) as stack:
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor"})
        alice = Room(stack.url, seeded.token("alice"), seeded.id, ice_hosts="127.0.0.1")
        bob = Room(stack.url, seeded.token("bob"), seeded.id, ice_hosts="127.0.0.1")
        try:
            await alice.start()
            await bob.start()
            alice.doc["source"] = Text("x = 1\n")
            await wait_for(lambda: str(bob.doc.get("source", type=Text)) == "x = 1\n", timeout=30, what="sync")
        finally:
            await asyncio.gather(alice.stop(), bob.stop(), return_exceptions=True)
    log = coturn.log()
    for label in ("alice", "bob"):
        user_id = seeded.user(label).id
        assert re.search(rf"username=<\d+:{user_id}>", log), f"no allocation by {label} in coturn's log"
