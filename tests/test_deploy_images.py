"""Build the deployment's images and run them against a private dockerd — opt-in.

Building takes about five minutes on two cores (apt, pip and npm downloads), too much for
every CI run, so this runs only with ``CODESYNC_TEST_IMAGES=1``; compose.yaml itself is
validated on every run (tests/test_deploy_compose.py).

No registry is reachable here, so the base is the debootstrap bookworm rootfs that
runner/image.py builds (cached under /var/cache/codesync), imported into a private dockerd;
``DEBIAN_IMAGE`` points the Dockerfile at it. The host's CA bundle is layered on top (pip and
npm honour it) so builds also work behind a TLS-intercepting proxy. Builds use host networking
(the private dockerd has no bridge); containers run with host networking on loopback ports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.components import ROOT, free_port, require

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(1200),
    pytest.mark.images,  # opt-in (CODESYNC_TEST_IMAGES=1, ~6 min): deselected otherwise, see conftest
]

BASE = "codesync-test-base:bookworm"


@pytest.fixture(scope="module")
def daemon() -> Iterator:
    from tests.helpers.dockerd import dockerd_available, running_dockerd

    require("dockerd (as root)", dockerd_available(), "apt-get install docker.io; run as root")
    with running_dockerd() as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon):
    c = daemon.client()
    c.api.timeout = 1200
    yield c
    c.close()


@pytest.fixture(scope="module")
def base_image(client) -> str:
    from tests.helpers.compose import import_base_image

    return import_base_image(client, BASE)


def build(client, base: str, target: str, tag: str) -> None:
    try:
        client.images.build(
            path=str(ROOT), target=target, tag=tag, buildargs={"DEBIAN_IMAGE": base}, network_mode="host", rm=True
        )
    except Exception as exc:  # BuildError carries the log
        log = "".join(str(line.get("stream", line)) for line in getattr(exc, "build_log", []))
        raise AssertionError(f"building {target} failed: {exc}\n{log[-5000:]}") from None


def test_app_image_serves_signaling_and_stops_gracefully(client, base_image):
    build(client, base_image, "app", "codesync:test")
    port, ops = free_port(), free_port()
    container = client.containers.run(
        "codesync:test",
        ["signaling"],
        detach=True,
        network_mode="host",
        environment={"CODESYNC_HOST": "127.0.0.1", "CODESYNC_PORT": str(port), "CODESYNC_SECRET_KEY": "k" * 48,
                     "CODESYNC_OPS_PORT": str(ops)},  # as compose.yaml runs the nodes
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as http:
            while True:
                try:
                    health = http.get("/healthz")
                    break
                except httpx.HTTPError:
                    container.reload()
                    assert container.status == "running", container.logs().decode()[-3000:]
                    assert time.monotonic() < deadline, container.logs().decode()[-3000:]
                    time.sleep(0.2)  # polling a port inside a container; no event to wait on
            assert health.status_code == 200 and health.json()["checks"]["database"] == "ok"
            # /metrics is on the ops port only (not the public one, which the proxy serves).
            assert http.get("/metrics").status_code == 404
            assert "codesync_http_requests_total" in httpx.get(f"http://127.0.0.1:{ops}/metrics", timeout=3).text
            assert "<title>CodeSync</title>" in http.get("/").text  # the web bundle from the node stage
        # The compose healthcheck command, run inside the container.
        code, _ = container.exec_run(
            ["python3", "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=3)"]
        )
        assert code == 0
        container.stop(timeout=20)  # SIGTERM through tini
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, container.logs().decode()[-3000:]
        assert '"service": "signaling"' in container.logs().decode()  # JSON logs by default
    finally:
        container.remove(force=True)


def test_turn_and_proxy_images(client, base_image):
    build(client, base_image, "turn", "codesync-turn:test")
    build(client, base_image, "proxy", "codesync-proxy:test")
    port = free_port()
    turn = client.containers.run(
        "codesync-turn:test",
        [f"--listening-port={port}", "--listening-ip=127.0.0.1", "--static-auth-secret=s", "--realm=r", "--external-ip=127.0.0.1"],
        detach=True,
        network_mode="host",
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the compose healthcheck command
            code, out = turn.exec_run(["timeout", "3", "turnutils_stunclient", "-p", str(port), "127.0.0.1"])
            if code == 0:
                break
            assert time.monotonic() < deadline, turn.logs().decode()[-3000:]
            time.sleep(0.2)
        assert b"reflexive addr: 127.0.0.1" in out
    finally:
        turn.remove(force=True)
    out = client.containers.run("codesync-proxy:test", entrypoint=["nginx", "-v"], remove=True, stderr=True)
    assert b"nginx/" in out
