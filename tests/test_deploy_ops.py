"""Operations endpoints: the reusable ops server, signaling's /healthz and /metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from codesync.opsserver import OpsServer, ops_server, run_checks
from tests.helpers.components import free_port

pytestmark = pytest.mark.timeout(60)


async def test_ops_server_health_and_metrics():
    registry = CollectorRegistry()
    saves = Counter("codesync_test_saves", "saves done", registry=registry)
    saves.inc(3)
    state = {"connected": False}

    async def database() -> bool:
        return True

    server = OpsServer("127.0.0.1", free_port(), "persistence", {"database": database}, registry=registry)
    server.add_check("signaling", lambda: state["connected"] or "not connected")
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            r = await client.get("/healthz")
            assert r.status_code == 503
            assert r.json() == {
                "status": "degraded",
                "service": "persistence",
                "checks": {"database": "ok", "signaling": "error: not connected"},
            }
            state["connected"] = True
            r = await client.get("/healthz")
            assert r.status_code == 200 and r.json()["status"] == "ok"
            m = await client.get("/metrics")
            assert m.status_code == 200
            assert m.headers["content-type"].startswith("text/plain")
            assert "codesync_test_saves_total 3.0" in m.text
    finally:
        await server.stop()


async def test_checks_that_raise_or_hang_fail():
    def boom() -> bool:
        raise RuntimeError("x")

    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    result = await run_checks({"boom": boom, "hang": hang, "ok": lambda: "ok", "no": lambda: False}, timeout=0.2)
    assert result == {"boom": "error: RuntimeError", "hang": "error: timeout", "ok": "ok", "no": "error: failed"}


async def test_ops_server_is_off_without_setting(make_settings):
    async with ops_server(make_settings(), "runner") as server:
        assert server is None
    port = free_port()
    async with ops_server(make_settings(ops_port=port), "runner", {"sandbox": lambda: True}) as server:
        assert server is not None and server.port == port
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{port}/healthz")
            assert r.json() == {"status": "ok", "service": "runner", "checks": {"sandbox": "ok"}}
            assert "python_info" in (await client.get(f"http://127.0.0.1:{port}/metrics")).text


# --------------------------------------------------------------------------- signaling


async def test_signaling_healthz_reports_database_and_redis(make_settings, sqlite_url, redis_url, redis_prefix):
    from tests.helpers.api import in_process_api

    async with in_process_api(make_settings(database_url=sqlite_url, redis_url=redis_url, redis_prefix=redis_prefix)) as api:
        r = await api.client.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_signaling_healthz_is_503_when_redis_goes_down(make_settings, sqlite_url, tmp_path):
    """A private redis-server, stopped under a running node: /healthz names Redis and answers 503."""
    import shutil
    import subprocess

    from tests.helpers.api import in_process_api
    from tests.helpers.components import port_open, require
    from tests.helpers.wait import wait_for

    binary = shutil.which("redis-server")
    require("redis-server", binary is not None, "apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: port_open("127.0.0.1", port), timeout=10, what="redis-server to listen")
        settings = make_settings(database_url=sqlite_url, redis_url=f"redis://127.0.0.1:{port}/0")
        async with in_process_api(settings) as api:
            assert (await api.client.get("/healthz")).status_code == 200
            proc.terminate()
            proc.wait(10)
            r = await api.client.get("/healthz")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "degraded"
            assert body["checks"]["database"] == "ok"
            assert body["checks"]["redis"].startswith("error")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_request_ids_and_http_metrics(make_settings, sqlite_url):
    """Request ids on every answer; HTTP metrics on the ops port (and not on the public one)."""
    from tests.helpers.api import in_process_api

    ops = free_port()
    async with in_process_api(make_settings(database_url=sqlite_url, ops_port=ops)) as api_sqlite:
        await _request_ids_and_http_metrics(api_sqlite, f"http://127.0.0.1:{ops}")


async def _request_ids_and_http_metrics(api_sqlite, ops_url: str) -> None:
    r = await api_sqlite.client.get("/api/me")
    assert r.status_code == 401
    generated = r.headers["X-Request-Id"]
    assert len(generated) == 16
    r = await api_sqlite.client.get("/healthz", headers={"X-Request-Id": "proxy-abc.123"})
    assert r.headers["X-Request-Id"] == "proxy-abc.123"
    r = await api_sqlite.client.get("/healthz", headers={"X-Request-Id": "bad id\twith junk" * 10})
    assert r.headers["X-Request-Id"] != "bad id\twith junk" * 10 and len(r.headers["X-Request-Id"]) == 16
    r = await api_sqlite.client.get("/no/such/page/x-unique-path")
    await api_sqlite.client.request("TRACE", "/healthz")
    assert (await api_sqlite.client.get("/metrics")).status_code == 404  # not on the public port
    async with httpx.AsyncClient(timeout=5) as ops:
        metrics = (await ops.get(f"{ops_url}/metrics")).text
        health = (await ops.get(f"{ops_url}/healthz")).json()
    assert health == {"status": "ok", "service": "signaling", "checks": {"database": "ok"}}
    assert 'codesync_http_requests_total{method="GET",route="/api/me",status="401"}' in metrics
    assert 'codesync_http_request_seconds_bucket{le="0.005",route="/healthz"}' in metrics
    assert "x-unique-path" not in metrics and 'method="TRACE"' not in metrics  # raw paths and methods never become labels
    assert 'method="OTHER"' in metrics
    assert "process_resident_memory_bytes" in metrics


def test_json_log_lines_carry_the_request_id():
    import io
    import json
    import logging

    from codesync.logs import CONN_ID, REQUEST_ID, ContextFilter, JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("signaling"))
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("codesync.test.requestid")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        token, ctoken = REQUEST_ID.set("req-1"), CONN_ID.set("c-9")
        try:
            logger.warning("inside %s", "x")
        finally:
            REQUEST_ID.reset(token)
            CONN_ID.reset(ctoken)
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "request_id" not in outside and outside["service"] == "signaling"
    assert inside["msg"] == "inside x" and inside["request_id"] == "req-1" and inside["conn_id"] == "c-9"


# --------------------------------------------------------------------------- every service, as deployed


async def test_every_service_answers_healthz_and_metrics_and_stops_cleanly(tmp_path, redis_url, redis_prefix):
    """signaling, `codesync persist` and `codesync runner` as separate processes, like compose runs them."""
    import signal as _signal
    import subprocess

    from tests.helpers.stack import signaling_stack
    from tests.helpers.processes import child_env, start_service
    from tests.helpers.wait import wait_http_ok

    async with signaling_stack(tmp_path, redis_url=redis_url, redis_prefix=redis_prefix) as stack:
        peers = {}
        try:
            for command, scope, metric in (
                ("persist", "persistence", "codesync_persist_rooms_owned"),
                ("runner", "runner", "codesync_runner_rooms"),
            ):
                port = free_port()
                env = child_env(
                    **stack.env,
                    CODESYNC_SIGNALING_URL=stack.url,
                    CODESYNC_SERVICE_TOKEN=await stack.service_token(scope),
                    CODESYNC_OPS_PORT=str(port),
                    CODESYNC_ICE_HOSTS="127.0.0.1",
                    CODESYNC_LOG_JSON="true",
                )
                svc = start_service([command], env, tmp_path / f"{command}.log")
                peers[command] = svc
                await wait_http_ok(f"http://127.0.0.1:{port}/healthz", svc, timeout=60)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                    health = (await client.get("/healthz")).json()
                    assert health["status"] == "ok" and health["service"] == scope, health
                    assert health["checks"]["signaling"] == "ok"
                    metrics = await client.get("/metrics")
                    assert metrics.status_code == 200 and metric in metrics.text
            async with httpx.AsyncClient(base_url=stack.url, timeout=5) as client:
                health = (await client.get("/healthz")).json()
                assert health == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
                assert "codesync_signal_connections" in (await client.get("/metrics")).text
            # Graceful shutdown: SIGTERM, each exits 0 by itself.
            for command, svc in peers.items():
                svc.proc.send_signal(_signal.SIGTERM)
                try:
                    code = await asyncio.to_thread(svc.proc.wait, 15)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{command} ignored SIGTERM:\n{svc.log()[-3000:]}") from None
                assert code == 0, f"{command} exited {code}:\n{svc.log()[-3000:]}"
                assert '"service": "%s"' % command in svc.log()  # JSON log lines name the process
        finally:
            for svc in peers.values():
                svc.kill()
