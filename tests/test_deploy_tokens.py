"""The deployment's service tokens and admin CLI, with the real ``codesync`` processes.

Service tokens expire (``codesync token``: 30 days; renewed by the running service over HTTP),
so the compose stack needs three things these tests hold it to:

- ``codesync token --check FILE|TOKEN`` tells a token signaling accepts (exit 0) from one it
  refuses — missing, expired, revoked, unknown, forged, of another scope (exit 1) — and says
  why; deploy/bootstrap.sh replaces exactly those (tests/test_deploy_compose.py);
- a running service writes each renewed token back to ``CODESYNC_SERVICE_TOKEN_FILE``
  (deploy/with-service-token.sh names the file it read), so restarting it after the token it
  was first given expired still works;
- ``codesync user create`` without a terminal: a clear error, or the password from stdin.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from tests.helpers.components import ROOT, free_port
from tests.helpers.processes import Service, child_env
from tests.helpers.wait import wait_for, wait_http_ok

pytestmark = pytest.mark.timeout(180)

VENV_BIN = str(Path(sys.executable).parent)  # where `codesync` is installed (the entry points use PATH)


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


class Cli:
    """``codesync ...`` as an operator runs it next to one database and key."""

    def __init__(self, tmp: Path, secret: str | None = None, database_url: str | None = None) -> None:
        self.secret = secret or secrets.token_urlsafe(48)
        self.env = {
            "CODESYNC_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{tmp / 'codesync.db'}",
            "CODESYNC_SECRET_KEY": self.secret,
            "CODESYNC_DATA_DIR": str(tmp / "data"),
            "CODESYNC_LOG_LEVEL": "WARNING",
        }
        self.cwd = tmp

    def __call__(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "codesync.cli", *args], env=child_env(**self.env, **env), cwd=self.cwd,
            input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )
        assert "Traceback" not in proc.stderr, proc.stderr  # a clear line, never a traceback
        return proc

    def signed(self, **extra) -> str:
        """A service token signed with this deployment's key, claims as given."""
        now = int(time.time())
        body = {"typ": "service", "sub": "service:runner", "scope": "runner", "aud": "codesync",
                "iat": now, "exp": now + 3600, **extra}
        return jwt.encode(body, self.secret, algorithm="HS256")


def test_token_check_accepts_only_a_token_signaling_would(tmp_path: Path):
    cli = Cli(tmp_path)
    made = cli("token", "--scope", "runner", "--name", "check")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    token_id = claims(token)["jti"]
    token_file = tmp_path / "runner"
    token_file.write_text(token + "\n")

    for what in (token, str(token_file)):
        ok = cli("token", "--check", what)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(f"valid runner service token {token_id}, expires "), ok.stdout
    assert cli("token", "--check", str(token_file), "--scope", "runner").returncode == 0

    (tmp_path / "empty").write_text("")
    refused = {
        "another scope": ((str(token_file), "--scope", "persistence"), "a runner token, not a persistence one"),
        "a missing file": ((str(tmp_path / "missing"),), "no token file"),
        "an empty file": ((str(tmp_path / "empty"),), "is empty"),
        "not a token": (("garbage",), "not a valid service token"),
        "expired": ((cli.signed(jti=token_id, iat=int(time.time()) - 120, exp=int(time.time()) - 60),), "expired"),
        "signed with another key": (
            (jwt.encode({**claims(token)}, secrets.token_urlsafe(48), algorithm="HS256"),), "not a valid service token"),
        "unknown to the database": ((cli.signed(jti="0" * 32),), "unknown to this database"),
        "a user's access token": ((cli.signed(typ="access", sub="u1", jti="x"),), "not a valid service token"),
    }
    for what, (args, message) in refused.items():
        check = cli("token", "--check", *args)
        assert check.returncode == 1 and message in check.stderr, (what, check.returncode, check.stderr)
        assert check.stdout == "", what

    # Revoked — by the file, as deploy/bootstrap.sh does it, with the scope it expects there.
    wrong = cli("token", "revoke", str(token_file), "--scope", "persistence")
    assert wrong.returncode == 2 and "is a runner token, not a persistence one; not revoked" in wrong.stderr
    assert cli("token", "--check", str(token_file)).returncode == 0
    revoked = cli("token", "revoke", str(token_file), "--scope", "runner")
    assert revoked.returncode == 0 and token_id in revoked.stdout, revoked.stderr
    check = cli("token", "--check", str(token_file))
    assert check.returncode == 1 and f"service token {token_id} was revoked" in check.stderr, check.stderr

    # Not a token problem but the operator's: exit 2 with a clear line.
    unreadable = cli("token", "--check", str(tmp_path))  # a directory
    assert unreadable.returncode == 2 and "cannot read" in unreadable.stderr, unreadable.stderr
    mixed = cli("token", "list", "--check", token)
    assert mixed.returncode == 2 and "usage: codesync token --check" in mixed.stderr, mixed.stderr


def test_user_create_without_a_terminal(tmp_path: Path):
    """Found by the compose test: no terminal and no password was an EOFError traceback."""
    cli = Cli(tmp_path)
    email = "no-tty@example.com"
    refused = cli("user", "create", email)  # stdin: /dev/null, no CODESYNC_PASSWORD
    assert refused.returncode == 2, refused
    assert "no password: pass --password, set CODESYNC_PASSWORD, pipe it on standard input" in refused.stderr
    assert refused.stdout == ""
    # Nothing was made: the same account can still be created — here from a piped password.
    made = cli("user", "create", email, "--name", "Piped", stdin="a piped password\n")
    assert made.returncode == 0, made.stderr
    assert len(made.stdout.strip()) == 32
    again = cli("user", "create", email, stdin="a piped password\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    short = cli("user", "create", "other@example.com", stdin="short\n")
    assert short.returncode == 2 and "password must be" in short.stderr


def _entrypoint(scope: str, command: str, env: dict[str, str], log: Path) -> Service:
    """deploy/with-service-token.sh SCOPE COMMAND, as the compose service runs it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "with-service-token.sh"), scope, command],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    return Service(command, proc, log, env=env)


async def test_a_renewed_token_is_written_back_and_survives_a_restart(tmp_path: Path):
    """The persistence peer starts (through the compose entry point) with a 4 s token;
    signaling hands out 60 s ones in exchange. The renewed token lands in the token file (same
    credential, mode 0600); after the first token has expired the peer restarts from the file
    and is connected again."""
    from tests.helpers.stack import signaling_stack

    async with signaling_stack(tmp_path, CODESYNC_SERVICE_TOKEN_TTL="60") as stack:
        cli = Cli(tmp_path, stack.secret, stack.database_url)
        tokens = tmp_path / "tokens"
        tokens.mkdir(mode=0o700)
        first = cli("token", "--scope", "persistence", "--ttl", "4").stdout.strip()
        token_file = tokens / "persistence"
        token_file.write_text(first + "\n")
        token_file.chmod(0o600)
        ops = free_port()
        env = child_env(
            **{**stack.env, "CODESYNC_SECRET_KEY": ""},  # a service never needs the signing key
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            CODESYNC_TOKEN_DIR=str(tokens),
            CODESYNC_SIGNALING_URL=stack.url,
            CODESYNC_OPS_PORT=str(ops),
            CODESYNC_ICE_HOSTS="127.0.0.1",
        )

        async def healthy(service: Service) -> None:
            await wait_http_ok(f"http://127.0.0.1:{ops}/healthz", service, timeout=60)
            async with httpx.AsyncClient(timeout=5) as http:
                await wait_for(lambda: _signaling_ok(http, ops), timeout=30, what="the peer connected to signaling")

        persist = _entrypoint("persistence", "persist", env, tmp_path / "persist-1.log")
        try:
            await healthy(persist)
            await wait_for(lambda: token_file.read_text().strip() != first, timeout=30,
                           what="the renewed token written to the token file")
        finally:
            persist.stop()
        assert persist.proc.returncode == 0, persist.log()[-3000:]
        renewed = token_file.read_text().strip()
        assert claims(renewed)["jti"] == claims(first)["jti"] and claims(renewed)["exp"] > claims(first)["exp"]
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert [p.name for p in tokens.iterdir()] == ["persistence"], "no temporary file left behind"

        # The token it was first given is dead now; the restart reads the renewed one.
        await wait_for(lambda: cli("token", "--check", first).returncode == 1, timeout=30, interval=1,
                       what="the first token to expire")
        assert cli("token", "--check", str(token_file), "--scope", "persistence").returncode == 0
        again = _entrypoint("persistence", "persist", env, tmp_path / "persist-2.log")
        try:
            await healthy(again)
        finally:
            again.stop()
        assert again.proc.returncode == 0, again.log()[-3000:]


async def _signaling_ok(http: httpx.AsyncClient, port: int) -> bool:
    health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
    return health["checks"].get("signaling") == "ok"
