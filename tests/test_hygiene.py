"""Deployment hygiene: a private data dir (0700) with private files (database, WAL, signing
key: 0600), security headers (CSP with ``frame-ancestors``) on everything the web server
answers, and ``/metrics`` only on the ops port unless asked for.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import httpx
import pytest

from codesync import db
from codesync.settings import Settings
from tests.helpers.api import in_process_api
from tests.helpers.stack import SignalClient
from tests.helpers.components import ROOT, free_port, require

pytestmark = pytest.mark.timeout(60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_database_and_key_are_private(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    settings = Settings(data_dir=data)  # embedded defaults: SQLite in the data dir, generated key
    key = settings.effective_secret_key
    assert len(key) >= 32 and mode(data / "secret_key") == 0o600
    assert mode(data) == 0o700  # tightened, although it existed as 0755

    engine = db.create_engine(settings)
    try:
        await db.migrate(engine)  # writes: the WAL and shared-memory files appear
    finally:
        await engine.dispose()
    files = {p.name: mode(p) for p in data.glob("codesync.db*")}
    assert "codesync.db" in files and set(files.values()) == {0o600}, files

    # Files an older version left readable are tightened on the next start.
    os.chmod(data, 0o755)
    os.chmod(data / "codesync.db", 0o644)
    os.chmod(data / "secret_key", 0o644)
    fresh = Settings(data_dir=data)
    assert fresh.effective_secret_key == key
    db.create_engine(fresh)
    assert mode(data) == 0o700 and mode(data / "codesync.db") == 0o600 and mode(data / "secret_key") == 0o600


def _dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>t</title><script type=module src=assets/app.js></script>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    return dist


async def test_security_headers_on_documents_and_nosniff_everywhere(make_settings, tmp_path: Path):
    async with in_process_api(make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}", web_dist=_dist(tmp_path))) as api:
        for path, status, document in (("/", 200, True), ("/room/x", 200, True), ("/assets/app.js", 200, False),
                                       ("/api/me", 401, False), ("/healthz", 200, False), ("/assets/missing.js", 404, False)):
            r = await api.client.get(path)
            assert r.status_code == status, (path, r.status_code)
            assert r.headers.get("x-content-type-options") == "nosniff", path  # nothing is run as a page ...
            assert r.headers.get("referrer-policy") == "no-referrer", path
            if not document:
                continue
            csp = r.headers.get("content-security-policy", "")  # ... and pages are fenced in
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
            assert directives.get("frame-ancestors") == "'none'", (path, csp)
            assert directives.get("script-src") == "'self'", (path, csp)  # no inline script, no eval
            assert directives.get("object-src") == "'none'" and directives.get("base-uri") == "'none'"
            assert directives.get("connect-src") == "'self'"
            assert r.headers.get("x-frame-options") == "DENY"
        # The WebSocket handshake still works (headers are for documents, not upgrades).
        reg = await api.register()
        async with SignalClient.connect(f"{api.base_url.replace('http', 'ws')}/signal?token={reg['access_token']}") as c:
            await c.send({"type": "ping"})
            await c.expect("pong")
    # The "not built yet" page is a document too.
    async with in_process_api(make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db2'}", web_dist=tmp_path / "none")) as api:
        r = await api.client.get("/")
        assert r.status_code == 503 and "frame-ancestors 'none'" in r.headers["content-security-policy"]


async def test_metrics_only_on_the_ops_port_unless_asked(make_settings, tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db'}"
    ops = free_port()
    async with in_process_api(make_settings(database_url=url, ops_port=ops)) as api:
        r = await api.client.get("/metrics")
        assert r.status_code == 404 and "codesync_" not in r.text
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{ops}/metrics")
            assert r.status_code == 200 and "codesync_http_requests_total" in r.text
            assert (await client.get(f"http://127.0.0.1:{ops}/healthz")).json()["status"] == "ok"
    async with in_process_api(make_settings(database_url=url)) as api:  # no ops port: no metrics at all
        assert (await api.client.get("/metrics")).status_code == 404
    async with in_process_api(make_settings(database_url=url, public_metrics=True)) as api:  # explicitly public
        r = await api.client.get("/metrics")
        assert r.status_code == 200 and "codesync_http_requests_total" in r.text


def test_the_built_client_needs_nothing_the_policy_forbids():
    """A cheap guard next to the browser test: no inline script, no eval in the bundle."""
    dist = ROOT / "web" / "dist"
    require("built web client", (dist / "index.html").is_file(), "run `make web`")
    html = (dist / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> in index.html"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler in index.html"
    js = (dist / "assets" / "app.js").read_text()
    assert "eval(" not in js and "new Function" not in js
