"""A real OpenID provider for the OAuth tests, and a browser that signs in through it.

The provider is the npm ``oidc-provider`` package (tests/oidc/provider.mjs) in a child process
on loopback; fixture ``oidc_provider`` (module scope) starts it, ``oauth_env`` configures
CodeSync's providers "local" (generic OIDC) and "github" (GitHub's code path, local endpoints)
to use it. :class:`Browser` walks the redirects and the provider's forms with httpx.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urljoin

import httpx
import pytest

from codesync.settings import Settings
from tests.helpers.api import Api
from tests.helpers.components import ROOT, free_port, require
from tests.helpers.processes import stop_process

OIDC_DIR = ROOT / "tests" / "oidc"
LOCAL = {"client_id": "codesync-local", "client_secret": secrets.token_urlsafe(24)}
GITHUB = {"client_id": "codesync-github", "client_secret": secrets.token_urlsafe(24)}


# ----------------------------------------------------------------------------- the provider


@dataclass
class Provider:
    issuer: str
    signaling_port: int  # the port every test's signaling app listens on (the registered redirect URIs)
    proc: subprocess.Popen


def _ensure_installed() -> None:
    require("node", shutil.which("node") is not None, "install nodejs (scripts/system-deps.sh)")
    require("npm", shutil.which("npm") is not None, "install npm (scripts/system-deps.sh)")
    installed = OIDC_DIR / "node_modules" / ".package-lock.json"  # npm's record of what it installed
    if installed.exists() and installed.stat().st_mtime >= (OIDC_DIR / "package-lock.json").stat().st_mtime:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=OIDC_DIR, capture_output=True, text=True, timeout=300
    )
    require("oidc-provider (npm)", done.returncode == 0, f"`npm ci` in tests/oidc failed:\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory) -> Iterator[Provider]:
    _ensure_installed()
    port, signaling_port = free_port(), free_port()
    base = f"http://127.0.0.1:{signaling_port}/api/auth/oauth"
    config = {
        "port": port,
        "clients": [
            {**LOCAL, "redirect_uris": [f"{base}/local/callback"]},
            {
                **GITHUB,
                "redirect_uris": [f"{base}/github/callback"],
                "token_endpoint_auth_method": "client_secret_post",
            },
        ],
    }
    log_path = tmp_path_factory.mktemp("oidc") / "provider.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        ["node", "provider.mjs", json.dumps(config)],
        cwd=OIDC_DIR,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    log.close()
    # The provider prints "ready <issuer>" once it listens; a watchdog bounds the wait.
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline().decode().strip() if proc.stdout else ""
    finally:
        watchdog.cancel()
    if not line.startswith("ready "):
        proc.kill()
        raise AssertionError(f"oidc-provider did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield Provider(issuer=line.split(" ", 1)[1], signaling_port=signaling_port, proc=proc)
    finally:
        stop_process(proc)


@pytest.fixture
def oauth_env(oidc_provider: Provider, monkeypatch) -> Provider:
    """Configure the providers "local" (generic OIDC) and "github" (GitHub code path, local endpoints)."""
    import os

    for key in list(os.environ):
        if key.startswith("CODESYNC_OAUTH_"):
            monkeypatch.delenv(key)
    issuer = oidc_provider.issuer
    monkeypatch.setenv("CODESYNC_OAUTH_LOCAL_CLIENT_ID", LOCAL["client_id"])
    monkeypatch.setenv("CODESYNC_OAUTH_LOCAL_CLIENT_SECRET", LOCAL["client_secret"])
    monkeypatch.setenv("CODESYNC_OAUTH_LOCAL_ISSUER", issuer)
    monkeypatch.setenv("CODESYNC_OAUTH_LOCAL_LABEL", "Local IdP")
    monkeypatch.setenv("CODESYNC_OAUTH_GITHUB_CLIENT_ID", GITHUB["client_id"])
    monkeypatch.setenv("CODESYNC_OAUTH_GITHUB_CLIENT_SECRET", GITHUB["client_secret"])
    monkeypatch.setenv("CODESYNC_OAUTH_GITHUB_AUTHORIZE_URL", f"{issuer}/auth")
    monkeypatch.setenv("CODESYNC_OAUTH_GITHUB_TOKEN_URL", f"{issuer}/token")
    monkeypatch.setenv("CODESYNC_OAUTH_GITHUB_API_URL", issuer)
    return oidc_provider


def settings_for(make_settings, provider: Provider, **overrides) -> Settings:
    return make_settings(public_url=f"http://127.0.0.1:{provider.signaling_port}", **overrides)


# ----------------------------------------------------------------------------- the browser


class Browser:
    """One browser (one cookie jar) walking the redirects and the provider's HTML forms."""

    def __init__(self, api: Api):
        self.api = api
        self.http = httpx.AsyncClient(timeout=15, follow_redirects=False)

    async def __aenter__(self) -> "Browser":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def start(self, provider: str = "local", **query: str) -> str:
        """Open the start URL; return the provider URL it redirects to."""
        r = await self.http.get(f"{self.api.settings.base_url}/api/auth/oauth/{provider}/start", params=query)
        assert r.status_code == 302, r.text
        return r.headers["location"]

    async def authorize(self, url: str, login: str, abort: bool = False) -> str:
        """Walk the provider's pages (login, consent) until it redirects back to CodeSync."""
        callback_prefix = f"{self.api.settings.base_url}/api/auth/oauth/"
        for _ in range(12):
            if url.startswith(callback_prefix):
                return url
            r = await self.http.get(url)
            if r.status_code in (302, 303):
                url = urljoin(url, r.headers["location"])
                continue
            assert r.status_code == 200, f"{url}: {r.status_code} {r.text[:500]}"
            prompt = re.search(r'name="prompt" value="(\w+)"', r.text)
            action = re.search(r'<form[^>]*action="([^"]+)"', r.text)
            assert prompt and action, f"no interaction form at {url}: {r.text[:500]}"
            if abort:
                url = urljoin(url, action.group(1).rstrip("/") + "/abort")
                continue
            data = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                data.update(login=login, password="any password")
            r = await self.http.post(urljoin(url, action.group(1)), data=data)
            assert r.status_code in (302, 303), f"{r.status_code} {r.text[:500]}"
            url = urljoin(url, r.headers["location"])
        raise AssertionError("the provider never redirected back")

    async def finish(self, callback_url: str) -> dict[str, str]:
        """Open the callback URL; return the parameters CodeSync put in the web client's fragment."""
        r = await self.http.get(callback_url)
        assert r.status_code == 302, r.text
        return client_fragment(self.api, r.headers["location"])

    async def sign_in(self, login: str, provider: str = "local") -> dict[str, str]:
        return await self.finish(await self.authorize(await self.start(provider), login))


def client_fragment(api: Api, location: str) -> dict[str, str]:
    prefix = f"{api.settings.base_url}/#/oauth?"
    assert location.startswith(prefix), location
    return {k: v[0] for k, v in parse_qs(location[len(prefix):]).items()}
