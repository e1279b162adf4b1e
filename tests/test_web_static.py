"""The signaling server serves the built web client at ``/`` (signaling/webclient.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.api import in_process_api
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(60)


def _fake_dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>CodeSync test</title><div id=app></div>")
    (dist / "assets" / "app.js").write_text("console.log('app')")
    (tmp_path / "secret.txt").write_text("not for the web")
    return dist


async def test_serves_index_assets_and_fallback(make_settings, tmp_path):
    dist = _fake_dist(tmp_path)
    async with in_process_api(make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", web_dist=dist)) as api:
        r = await api.client.get("/")
        assert r.status_code == 200 and "CodeSync test" in r.text
        assert r.headers["content-type"].startswith("text/html")
        r = await api.client.get("/assets/app.js?v=abc")
        assert r.status_code == 200 and "console.log" in r.text
        assert "immutable" in r.headers["cache-control"]
        # Deep links get the client (it routes on the fragment).
        r = await api.client.get("/room/abc")
        assert r.status_code == 200 and "CodeSync test" in r.text
        # A missing asset is a 404, not the page.
        assert (await api.client.get("/assets/nope.js")).status_code == 404
        # The API keeps its JSON errors; the catch-all never shadows it.
        r = await api.client.get("/api/does-not-exist")
        assert r.status_code == 404 and r.json()["error"]["code"]
        assert (await api.client.get("/healthz")).status_code == 200
        # No escaping the dist folder.
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt"):
            r = await api.client.get(path)
            assert "not for the web" not in r.text, path


async def test_missing_dist_says_how_to_build(make_settings, tmp_path):
    async with in_process_api(make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", web_dist=tmp_path / "nothing")) as api:
        r = await api.client.get("/")
        assert r.status_code == 503
        assert "make web" in r.text


async def test_real_build_is_served(make_settings, tmp_path):
    dist = ROOT / "web" / "dist"
    require("built web client", (dist / "index.html").is_file(), "run `make web`")
    async with in_process_api(make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")) as api:
        r = await api.client.get("/")
        assert r.status_code == 200
        import re

        script = re.search(r'src="([^"]+\.js[^"]*)"', r.text)
        assert script, r.text
        js = await api.client.get("/" + script.group(1))
        assert js.status_code == 200 and len(js.content) > 10_000
