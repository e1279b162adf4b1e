"""Operations endpoints: the reusable ops server, signaling's /healthz and /metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from signaling.opsserver import OpsServer, ops_server, run_checks
from tests.support import free_port

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
