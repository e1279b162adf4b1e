"""The skeleton: migrations on both databases, health, errors, CLI."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.components import ROOT
from tests.helpers.processes import child_env


async def test_healthz_reports_database(api):
    r = await api.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["checks"]["database"] == "ok"


async def test_unknown_api_route_is_json_error(api_sqlite):
    r = await api_sqlite.client.get("/api/no-such-thing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_cli_token_and_user_create(tmp_path):
    env = child_env(CODESYNC_DATA_DIR=str(tmp_path / "d"), CODESYNC_PASSWORD="a long password")
    run = lambda *a: subprocess.run([sys.executable, "-m", "codesync.cli", *a], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: E731
    tok = run("token", "--scope", "runner")
    assert tok.returncode == 0, tok.stderr
    assert tok.stdout.count(".") == 2  # a JWT
    made = run("user", "create", "Someone@Example.com")
    assert made.returncode == 0, made.stderr
    again = run("user", "create", "someone@example.com")
    assert again.returncode == 2
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


def test_the_repository_stands_on_its_own():
    """Nothing tracked points outside the checkout (issue: a fresh clone needs nothing beside it)."""
    from tests.helpers.traces import TRACES

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = []
    for name in files:
        path = ROOT / name
        if path.suffix in {".gz", ".png", ".ico"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text and name != "tests/test_foundation.py":
            outside.append(name)
    assert outside == [], f"these files refer to ../shared: {outside}"
    assert TRACES.resolve().is_relative_to(ROOT.resolve()) or "CODESYNC_TRACES" in __import__("os").environ
    for trace in ("rustcode", "sveltecomponent"):
        assert (ROOT / "tests" / "data" / "traces" / f"{trace}.json.gz").stat().st_size > 100_000
