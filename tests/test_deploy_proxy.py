"""The reverse proxy of the deployment (deploy/nginx.conf) in front of two signaling nodes.

A real nginx (Debian package) runs the committed configuration, rewritten only where the
test machine differs from compose: loopback addresses for the listener and the upstream
nodes, files under the test's directory. Then: HTTP is balanced and tagged with request ids,
a node that is down is skipped, WebSockets pass through, and a graceful shutdown of one node
(SIGTERM: its sockets close with 1001 "going away") moves its clients to the other node —
peers keep editing throughout and no edit is lost.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.proxy import read_text, nginx_proxy
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(120)

def _hostport(url: str) -> str:
    return url.removeprefix("http://")


async def graceful_stop(service, timeout: float = 10.0) -> None:
    """SIGTERM, then the node must exit by itself, cleanly, within ``timeout`` (never SIGKILL)."""
    service.proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(service.proc.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{service.name} still running {timeout}s after SIGTERM:\n{service.log()[-3000:]}") from None
    assert code == 0, f"{service.name} exited with {code} after SIGTERM:\n{service.log()[-3000:]}"


async def signal_connections(node_url: str) -> int:
    """Open /signal sockets on one node, from its own metrics."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{node_url}/metrics")).text
    return int(sum(float(v) for v in re.findall(r"^codesync_signal_connections\{[^}]*\} (\S+)$", text, re.M)))


# --------------------------------------------------------------------------- HTTP


async def test_proxy_balances_http_tags_request_ids_and_skips_a_dead_node(tmp_path: Path):
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(tmp_path, nodes=2) as stack:
        nodes = [_hostport(n.url or "") for n in stack.nodes]
        async with nginx_proxy(tmp_path / "nginx", nodes) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as client:
                for _ in range(4):
                    r = await client.get("/healthz")
                    assert r.status_code == 200 and r.json()["checks"]["database"] == "ok"
                    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # nginx made one
                r = await client.get("/healthz", headers={"X-Request-Id": "client-chosen-7"})
                assert r.headers.get_list("x-request-id") == ["client-chosen-7"]
                await wait_for(lambda: set(nodes) <= set(proxy.upstreams_used()), timeout=5, what="both nodes used")

                await graceful_stop(stack.nodes[0])
                for _ in range(6):
                    r = await client.get("/healthz")
                    assert r.status_code == 200, r.text
                unauth = await client.get("/api/me")
                assert unauth.status_code == 401 and unauth.json()["error"]["code"]


# --------------------------------------------------------------------------- WebSockets


async def test_websockets_pass_through_and_a_graceful_shutdown_moves_clients(tmp_path: Path, redis_url, redis_prefix):
    from tests.helpers.stack import SignalClient, signaling_stack

    async with signaling_stack(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2) as stack:
        room = await stack.seed_room({"a": "owner", "b": "editor", "c": "editor", "d": "editor"})
        nodes = [_hostport(n.url or "") for n in stack.nodes]
        async with nginx_proxy(tmp_path / "nginx", nodes) as proxy:
            clients = {}
            contexts = []
            try:
                # One nginx worker, round robin: the four sockets alternate between the nodes.
                for label in "abcd":
                    ctx = SignalClient.connect(f"{proxy.ws_base}/signal?token={room.token(label)}")
                    contexts.append(ctx)
                    clients[label] = await ctx.__aenter__()
                    await clients[label].subscribe(room.id)
                    await clients[label].expect("presence")
                for label, client in clients.items():
                    await client.send({"type": "ping"})
                    await client.expect("pong")
                # Cross-node fan-out through Redis, via the proxy.
                await clients["a"].publish(room.id, {"type": "announce", "from": "peer-a"})
                for client in clients.values():
                    frame = await client.expect("publish", lambda f: f["data"].get("from") == "peer-a")
                    assert frame["sender"]["user_id"] == room.user("a").id

                on_first = await signal_connections(stack.nodes[0].url or "")
                assert 1 <= on_first <= 3, "the proxy should spread the four sockets over both nodes"
                await graceful_stop(stack.nodes[0])
                gone = [label for label, c in clients.items() if c.closed or await _closed_soon(c)]
                assert len(gone) == on_first, f"expected the {on_first} sockets of the stopped node to close, got {gone}"
                for label in gone:
                    assert clients[label].close_code == 1001, (label, clients[label].close_code)
                stayed = [label for label in clients if label not in gone]
                for label in stayed:
                    assert not clients[label].closed

                # Clients reconnect through the proxy and land on the surviving node.
                for label in gone:
                    ctx = SignalClient.connect(f"{proxy.ws_base}/signal?token={room.token(label)}")
                    contexts.append(ctx)
                    clients[label] = await ctx.__aenter__()
                    await clients[label].subscribe(room.id)
                    await clients[label].expect("presence")

                def everyone_present(frame: dict) -> bool:
                    return {p["user_id"] for p in frame["peers"]} == {room.user(x).id for x in "abcd"}

                await clients[stayed[0]].expect("presence", everyone_present, timeout=20)
                await clients[gone[0]].publish(room.id, {"type": "announce", "from": f"peer-{gone[0]}-2"})
                for client in clients.values():
                    await client.expect("publish", lambda f: f["data"].get("from") == f"peer-{gone[0]}-2")
            finally:
                for ctx in reversed(contexts):
                    await ctx.__aexit__(None, None, None)


async def _eq(awaitable, value) -> bool:
    return (await awaitable) == value


async def _closed_soon(client, timeout: float = 5.0) -> bool:
    try:
        await client.wait_closed(timeout)
        return True
    except (asyncio.TimeoutError, TimeoutError):
        return False


# --------------------------------------------------------------------------- peers keep every edit


async def test_graceful_shutdown_of_a_node_loses_no_edit(tmp_path: Path, redis_url, redis_prefix):
    from peer import Room
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2) as stack:
        seeded = await stack.seed_room({"alice": "owner", "bob": "editor", "carol": "editor"})
        nodes = [_hostport(n.url or "") for n in stack.nodes]
        async with nginx_proxy(tmp_path / "nginx", nodes) as proxy:
            rooms: list[Room] = []
            try:
                alice = Room(proxy.url, seeded.token("alice"), seeded.id, ice_hosts="127.0.0.1")
                bob = Room(proxy.url, seeded.token("bob"), seeded.id, ice_hosts="127.0.0.1")
                rooms += [alice, bob]
                await alice.start()
                await bob.start()
                await alice.wait_synced(timeout=20)
                await bob.wait_synced(timeout=20)
                from pycrdt import Text

                text_a = alice.doc.get("source", type=Text)
                text_b = bob.doc.get("source", type=Text)
                dropped: list[str] = []
                alice.signaling.on_disconnected(lambda: dropped.append("alice"))
                bob.signaling.on_disconnected(lambda: dropped.append("bob"))
                # Stop the node holding more of their signaling sockets (at least one of them).
                counts = [await signal_connections(n.url or "") for n in stack.nodes]
                victim = stack.nodes[0] if counts[0] >= counts[1] else stack.nodes[1]
                assert max(counts) >= 1 and sum(counts) == 2, counts

                total, stop_at = 160, 40
                stopping: asyncio.Task | None = None
                for i in range(total):
                    writer = text_a if i % 2 == 0 else text_b
                    writer.insert(len(writer), f"edit {i}\n")  # ASCII: byte and UTF-16 offsets agree
                    if i == stop_at:  # the node goes down while both keep typing
                        stopping = asyncio.create_task(graceful_stop(victim))
                    await asyncio.sleep(0.005)  # a typing pace, not a synchronisation
                assert stopping is not None
                await stopping

                expected = {f"edit {i}" for i in range(total)}

                def converged(*texts: Text) -> bool:
                    lines = [set(str(t).splitlines()) for t in texts]
                    return all(x == expected for x in lines) and len({str(t) for t in texts}) == 1

                await wait_for(lambda: converged(text_a, text_b), timeout=20, what="alice and bob to converge")
                # Both are back on signaling (through the proxy, on the surviving node) ...
                assert len(set(dropped)) == max(counts), (dropped, counts)  # the victim's clients were moved
                await wait_for(lambda: alice.signaling.connected and bob.signaling.connected, timeout=20,
                               what="alice and bob to reconnect to signaling")
                survivor = stack.nodes[1] if victim is stack.nodes[0] else stack.nodes[0]
                await wait_for(lambda: _eq(signal_connections(survivor.url or ""), 2), timeout=20,
                               what="both on the surviving node")
                # ... and a newcomer, who can only meet them through the surviving node, gets every edit.
                carol = Room(proxy.url, seeded.token("carol"), seeded.id, ice_hosts="127.0.0.1")
                rooms.append(carol)
                await carol.start()
                text_c = carol.doc.get("source", type=Text)
                await wait_for(lambda: converged(text_a, text_b, text_c), timeout=30, what="carol to get every edit")
                assert len(str(text_c).splitlines()) == total  # nothing duplicated either
            finally:
                await asyncio.gather(*(r.stop() for r in rooms), return_exceptions=True)


# --------------------------------------------------------------------------- client addresses, logs, metrics


async def test_proxy_passes_the_client_address_and_a_spoofed_header_is_ignored(tmp_path: Path, redis_url, redis_prefix):
    """Behind nginx every request comes from 127.0.0.1; nginx appends the real client address to
    X-Forwarded-For and the nodes trust that header from 127.0.0.1 only. An attacker at
    127.0.0.2 who hammers the owner's account — and claims in its own X-Forwarded-For to be
    the owner's 127.0.0.3 — is slowed down; the owner at 127.0.0.3 signs in."""
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2,
        CODESYNC_TRUSTED_PROXIES="127.0.0.1", CODESYNC_LOGIN_FREE_FAILURES="2", CODESYNC_LOGIN_DELAY_BASE="60",
    ) as stack:
        nodes = [_hostport(n.url or "") for n in stack.nodes]
        async with nginx_proxy(tmp_path / "nginx", nodes) as proxy:
            transport = {a: httpx.AsyncHTTPTransport(local_address=a) for a in ("127.0.0.2", "127.0.0.3")}
            async with httpx.AsyncClient(base_url=proxy.url, transport=transport["127.0.0.2"], timeout=30) as attacker, \
                    httpx.AsyncClient(base_url=proxy.url, transport=transport["127.0.0.3"], timeout=30) as owner:
                r = await owner.post("/api/auth/register",
                                     json={"email": "owner@example.com", "password": "correct horse battery", "name": "O"})
                assert r.status_code == 201, r.text
                statuses = []
                for i in range(4):  # over both nodes (round robin); the state is shared in Redis
                    r = await attacker.post("/api/auth/login", json={"email": "owner@example.com", "password": f"guess-{i}"},
                                            headers={"X-Forwarded-For": f"127.0.0.3, 198.51.100.{i}"})
                    statuses.append(r.status_code)
                assert statuses == [401, 401, 401, 429], statuses
                await wait_for(lambda: set(nodes) <= set(proxy.upstreams_used()), timeout=5, what="both nodes used")
                r = await owner.post("/api/auth/login", json={"email": "owner@example.com", "password": "correct horse battery"})
                assert r.status_code == 200, r.text
            # Straight to a node (not through a trusted proxy), the same spoof counts for nothing.
            direct = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(base_url=stack.url, transport=direct, timeout=30) as c:
                r = await c.post("/api/auth/login", json={"email": "owner@example.com", "password": "x-guess"},
                                 headers={"X-Forwarded-For": "203.0.113.9"})
                assert r.status_code == 429  # still the attacker's 127.0.0.2, already held back


async def test_proxy_hides_metrics_and_keeps_invite_tokens_out_of_its_log(tmp_path: Path):
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(tmp_path, nodes=1) as stack:
        async with nginx_proxy(tmp_path / "nginx", [_hostport(stack.url)]) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
                # The node serves /metrics here (tests ask it to); the proxy never passes it on.
                assert (await http.get(f"{stack.url}/metrics")).status_code == 200
                for path in ("/metrics", "/metrics?x=1", "//metrics", "/%6Detrics", "/./metrics"):
                    r = await http.get(httpx.URL(proxy.url + path))  # absolute: keep "//" a path
                    assert r.status_code == 404 and "codesync_" not in r.text, path
                page = await http.get("/")
                assert "frame-ancestors 'none'" in page.headers.get("content-security-policy", "")

                users = []
                for name in ("owner", "a", "b"):
                    r = await http.post("/api/auth/register",
                                        json={"email": f"{name}@example.com", "password": "correct horse battery", "name": name})
                    users.append({"Authorization": f"Bearer {r.json()['access_token']}"})
                rid = (await http.post("/api/rooms", json={"name": "r"}, headers=users[0])).json()["id"]
                tokens = [
                    (await http.post(f"/api/rooms/{rid}/invites", json={"role": "viewer"}, headers=users[0])).json()["token"]
                    for _ in range(2)
                ]
                assert (await http.post("/api/invites/accept", json={"token": tokens[0]}, headers=users[1])).status_code == 200
                assert (await http.post(f"/api/invites/{tokens[1]}/accept", headers=users[2])).status_code == 200

            def logged() -> str:
                return read_text(proxy.access_log)

            await wait_for(lambda: "/api/invites/-/accept" in logged() and '"uri":"/api/invites/accept"' in logged(),
                           timeout=10, what="both accepts in the access log")
            text = logged()
            for token in tokens:
                assert token not in text and token.split(".")[2] not in text
