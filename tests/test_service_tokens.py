"""Service tokens (persistence, runner): they expire, a running service renews its own over
HTTP without a restart, ``codesync token`` keeps printing one, and ``codesync token revoke``
(one token, or a whole scope) refuses it at once and closes its ``/signal`` sockets.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import jwt
import pytest

from codesync.models import ServiceToken
from signaling.state import STATE
from signaling.tokens import AUDIENCE
from tests.helpers.stack import SignalClient, Stack, signaling_stack
from tests.helpers.components import ROOT, free_port
from tests.helpers.processes import child_env, start_service
from tests.helpers.wait import wait_for, wait_http_ok

pytestmark = pytest.mark.timeout(150)


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``codesync ARGS`` as the operator runs it next to the deployment (same database, key, Redis)."""
    return subprocess.run(
        [sys.executable, "-m", "codesync.cli", *args],
        env=child_env(**stack.env, **env), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


async def _service_alive(client: SignalClient) -> None:
    await client.send({"type": "ping"})
    await client.expect("pong", timeout=10)


# ----------------------------------------------------------------------------- HTTP exchange
async def test_a_service_exchanges_its_token_for_a_fresh_one(api):
    state = api.server.app[STATE]
    async with state.sessions() as session:
        row = ServiceToken(scope="runner", name="test")
        session.add(row)
        await session.commit()
        row_id = row.id
    token = state.tokens.issue_service(row_id, "runner", ttl=60)
    c = claims(token)
    assert c["jti"] == row_id and c["exp"] - c["iat"] == 60

    r = await api.client.post("/api/service/token", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    fresh = claims(body["token"])
    assert fresh["jti"] == row_id and fresh["scope"] == "runner"
    assert body["expires_in"] == api.settings.service_token_ttl == fresh["exp"] - fresh["iat"]
    ice = await api.client.get("/api/ice-servers", headers={"Authorization": f"Bearer {body['token']}"})
    assert ice.status_code == 200  # the fresh token works

    user = await api.register()
    cases = {
        "no token": ({}, 401, "unauthorized"),
        "a user's access token": ({"Authorization": f"Bearer {user['access_token']}"}, 403, "forbidden"),
        "tampered signature": ({"Authorization": f"Bearer {token[:-4]}AAAA"}, 401, "invalid_token"),
        "without expiry (made before tokens expired)": (
            {"Authorization": "Bearer " + jwt.encode(
                {"typ": "service", "sub": "service:runner", "scope": "runner", "aud": AUDIENCE, "iat": int(time.time()), "jti": row_id},
                state.settings.effective_secret_key, algorithm="HS256")},
            401, "invalid_token",
        ),
    }
    for what, (headers, status, code) in cases.items():
        r = await api.client.post("/api/service/token", headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, (what, r.text)
    expired = jwt.encode(
        {"typ": "service", "sub": "service:runner", "scope": "runner", "aud": AUDIENCE,
         "iat": int(time.time()) - 120, "exp": int(time.time()) - 60, "jti": row_id},
        state.settings.effective_secret_key, algorithm="HS256",
    )
    r = await api.client.post("/api/service/token", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"

    # Revoked: neither the old nor the fresh token is good for anything any more.
    from signaling.admin import revoke_service_tokens

    assert await revoke_service_tokens(api.settings, token=token) == [row_id]
    for t in (token, body["token"]):
        r = await api.client.post("/api/service/token", headers={"Authorization": f"Bearer {t}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        assert (await api.client.get("/api/ice-servers", headers={"Authorization": f"Bearer {t}"})).status_code == 401


# ----------------------------------------------------------------------------- codesync token
@pytest.mark.redis
async def test_codesync_token_prints_expiring_tokens_and_revoke_closes_their_sockets(tmp_path, redis_url, redis_prefix):
    """Two nodes on Redis, re-check off: the revocation notice closes the sockets on either node."""
    async with signaling_stack(
        tmp_path, redis_url=redis_url, redis_prefix=redis_prefix, nodes=2, CODESYNC_SESSION_RECHECK="3600"
    ) as stack:
        made = cli(stack, "token", "--scope", "runner", "--name", "runner-a")
        assert made.returncode == 0, made.stderr
        token_a = made.stdout.strip()
        c = claims(token_a)
        assert c["scope"] == "runner" and c["exp"] - c["iat"] == 30 * 24 * 3600  # it expires
        assert f"codesync token revoke {c['jti']}" in made.stderr
        short = cli(stack, "token", "--scope", "runner", "--ttl", "600")
        token_b = short.stdout.strip()
        assert claims(token_b)["exp"] - claims(token_b)["iat"] == 600
        token_p = cli(stack, "token", "--scope", "persistence").stdout.strip()

        listed = cli(stack, "token", "list")
        assert listed.returncode == 0 and c["jti"] in listed.stdout and "runner-a" in listed.stdout

        room = await stack.seed_room({"alice": "owner"})
        async with SignalClient.connect(stack.ws_url(token_a, node=1)) as a, \
                SignalClient.connect(stack.ws_url(token_b, node=0)) as b, \
                SignalClient.connect(stack.ws_url(token_p, node=1)) as p, \
                SignalClient.connect(stack.ws_url(room.token("alice"), node=0)) as alice:
            for svc in (a, b, p):
                await _service_alive(svc)
            await alice.subscribe(room.id)
            await alice.expect("presence")

            # One token, by id: its socket closes at once; the others stay.
            revoked = cli(stack, "token", "revoke", c["jti"])
            assert revoked.returncode == 0 and c["jti"] in revoked.stdout, revoked.stderr
            assert await a.wait_closed(timeout=10) == 4003
            await _service_alive(b)
            await _service_alive(p)

            # A whole scope, with the token itself as the argument for one more: all runners go.
            assert cli(stack, "token", "revoke", "--scope", "runner").returncode == 0
            assert await b.wait_closed(timeout=10) == 4003
            await _service_alive(p)
            await alice.send({"type": "ping"})
            await alice.expect("pong")

        for token in (token_a, token_b):
            async with SignalClient.connect(stack.ws_url(token, node=0)) as again:
                assert await again.wait_closed(timeout=10) == 4003
        bad = cli(stack, "token", "revoke", "no-such-token-id")
        assert bad.returncode == 2 and "no service token" in bad.stderr and "Traceback" not in bad.stderr
        assert cli(stack, "token").returncode == 2  # create needs --scope: a clear usage line
        assert cli(stack, "token", "revoke", token_p).returncode == 0  # the token itself works too


async def test_revocation_without_redis_is_picked_up_by_the_recheck(tmp_path):
    async with signaling_stack(tmp_path, CODESYNC_SESSION_RECHECK="1") as stack:
        token = cli(stack, "token", "--scope", "persistence").stdout.strip()
        async with SignalClient.connect(stack.ws_url(token)) as svc:
            await _service_alive(svc)
            assert cli(stack, "token", "revoke", token).returncode == 0
            assert await svc.wait_closed(timeout=10) == 4003


# ----------------------------------------------------------------------------- rotation
async def test_a_running_service_renews_its_token_without_a_restart(tmp_path):
    """`codesync persist` starts with a token valid 6 s; signaling hands out 6 s tokens. Long
    after the first one expired the peer is still connected and working in rooms."""
    ttl = 6
    async with signaling_stack(tmp_path, CODESYNC_SERVICE_TOKEN_TTL=str(ttl)) as stack:
        first = cli(stack, "token", "--scope", "persistence", "--ttl", str(ttl)).stdout.strip()
        first_exp = claims(first)["exp"]
        ops = free_port()
        env = child_env(
            **{**stack.env, "CODESYNC_SECRET_KEY": ""},  # a service never needs the signing key
            CODESYNC_SIGNALING_URL=stack.url,
            CODESYNC_SERVICE_TOKEN=first,
            CODESYNC_OPS_PORT=str(ops),
            CODESYNC_ICE_HOSTS="127.0.0.1",
            CODESYNC_PERSIST_IDLE_GRACE="1",
        )
        persist = start_service(["persist"], env, tmp_path / "persist.log")
        try:
            await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", persist, timeout=60)
            # Three renewals: by then the token it started with is long expired.
            await wait_for(lambda: persist.log().count("service token renewed") >= 3, timeout=60,
                           what="three renewals in the persist log")
            assert time.time() > first_exp + 1
            async with SignalClient.connect(stack.ws_url(first)) as stale:  # the original is dead ...
                assert await stale.wait_closed(timeout=10) == 4001
            room = await stack.seed_room({"alice": "owner"})
            async with SignalClient.connect(stack.ws_url(room.token("alice"))) as alice:  # ... the peer is not
                await alice.subscribe(room.id)
                frame = await alice.expect("publish", lambda f: (f.get("sender") or {}).get("service") == "persistence",
                                           timeout=30)
                assert frame["sender"] == {"service": "persistence"}
            async with httpx.AsyncClient(timeout=5) as http:
                health = (await http.get(f"http://127.0.0.1:{ops}/healthz")).json()
            assert health["checks"]["signaling"] == "ok", health
            assert persist.proc.poll() is None
        finally:
            persist.stop()
