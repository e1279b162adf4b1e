"""compose.yaml, Dockerfile and .env.example, checked by a real Compose implementation.

``docker-compose config`` (Debian's docker-compose) parses, validates and interpolates the
file exactly as ``docker-compose up`` would; the assertions then check the shape the
deployment promises (README, "Deployment"): every long-running service has a healthcheck,
two signaling nodes behind the proxy, secrets only from the environment, the Docker socket
for the runner, coturn with the shared TURN secret.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, require

pytestmark = pytest.mark.timeout(120)

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
ONE_SHOTS = {"migrate", "run-image"}
SECRETS = ("CODESYNC_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "CODESYNC_TURN_SECRET")


def _env_file(tmp_path: Path, **overrides: str) -> Path:
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in overrides:
            line = f"{key}={overrides.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    return commands


def _config(tmp_path: Path, command: list[str], env_file: Path) -> subprocess.CompletedProcess:
    # A clean environment: only the env file decides (no stray CODESYNC_* from the caller).
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> list[str]:
    commands = _compose_commands()
    require("docker-compose", bool(commands), "apt-get install docker-compose")
    return commands[0]


@pytest.fixture(scope="module")
def config(tmp_path_factory, compose: list[str]) -> dict:
    """One ``config`` run shared by the shape tests (docker-compose takes seconds to start)."""
    tmp_path = tmp_path_factory.mktemp("compose")
    env_file = _env_file(
        tmp_path,
        CODESYNC_SECRET_KEY="k-" + "a" * 40,
        POSTGRES_PASSWORD="pg-pass-123",
        REDIS_PASSWORD="redis-pass-456",
        CODESYNC_TURN_SECRET="turn-secret-789",
        TURN_HOST="turn.test.example",
    )
    result = _config(tmp_path, compose, env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_every_long_running_service_has_a_healthcheck(config: dict):
    services = config["services"]
    assert {"postgres", "redis", "migrate", "proxy", "persistence", "runner", "turn"} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_two_signaling_nodes_behind_a_websocket_proxy(config: dict):
    services = config["services"]
    nodes = sorted(n for n in services if n.startswith("signaling-"))
    assert len(nodes) >= 2
    for node in nodes:
        svc = services[node]
        assert svc["command"] == ["signaling"]
        assert svc["environment"]["CODESYNC_REDIS_URL"] == "redis://:redis-pass-456@redis:6379/0"
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "8000/healthz" in " ".join(svc["healthcheck"]["test"])
    proxy = services["proxy"]
    assert {proxy["depends_on"][n]["condition"] for n in nodes} == {"service_healthy"}
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    for node in nodes:
        assert f"server {node}:8000" in nginx
    assert "proxy_set_header Upgrade $http_upgrade" in nginx
    # The peers reach signaling through the proxy, so they follow a node that goes away.
    for peer in ("persistence", "runner"):
        assert services[peer]["environment"]["CODESYNC_SIGNALING_URL"] == "http://proxy:80"
        assert services[peer]["environment"]["CODESYNC_OPS_PORT"] == "9100"
        assert "9100/healthz" in " ".join(services[peer]["healthcheck"]["test"])


def test_secrets_come_from_the_environment(config: dict):
    text = COMPOSE.read_text()
    for value in ("pg-pass-123", "redis-pass-456", "turn-secret-789", "change-me"):
        assert value not in text
    env = config["services"]["signaling-1"]["environment"]
    assert env["CODESYNC_SECRET_KEY"] == "k-" + "a" * 40
    assert env["CODESYNC_DATABASE_URL"] == "postgresql://codesync:pg-pass-123@postgres:5432/codesync"
    assert env["CODESYNC_TURN_SECRET"] == "turn-secret-789"
    assert env["CODESYNC_TURN_URLS"].split(",") == [
        "turn:turn.test.example:3478?transport=udp",
        "turn:turn.test.example:3478?transport=tcp",
    ]
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-pass-123"
    turn = config["services"]["turn"]
    assert "--static-auth-secret=turn-secret-789" in turn["command"]
    assert turn["network_mode"] == "host"
    turn_conf = (ROOT / "deploy" / "turnserver.conf").read_text().splitlines()
    assert "use-auth-secret" in turn_conf and not any(line.startswith("static-auth-secret") for line in turn_conf)


def test_runner_uses_docker_through_the_mounted_socket(config: dict):
    runner = config["services"]["runner"]
    assert runner["environment"]["CODESYNC_SANDBOX"] == "docker"
    assert runner["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in runner["volumes"]]
    assert any(m.startswith("/var/run/docker.sock:/var/run/docker.sock") for m in mounts), mounts
    assert runner["depends_on"]["run-image"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("missing", SECRETS)
def test_a_missing_secret_is_refused_with_its_name(tmp_path: Path, compose: list[str], missing: str):
    values = {name: "x-value" for name in SECRETS}
    values[missing] = ""
    result = _config(tmp_path, compose, _env_file(tmp_path, TURN_HOST="t.example", **values))
    assert result.returncode != 0
    assert missing in result.stderr


def test_env_example_documents_every_variable_compose_reads():
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = {
        line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z0-9_]+=", line)
    }
    assert referenced - documented == set()
    assert set(SECRETS) <= documented


def test_dockerfile_stages_and_copied_paths_exist():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    assert {"web", "app", "proxy", "turn", "run-image"} <= stages
    compose = yaml.safe_load(COMPOSE.read_text())
    targets = {s["build"]["target"] for s in compose["services"].values() if isinstance(s.get("build"), dict)}
    assert targets <= stages
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
            assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"
    for script in ("deploy/bootstrap.sh", "deploy/with-service-token.sh"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_service_token_entrypoint(tmp_path: Path):
    """The peers' entry point takes the token from the environment, else from the token volume."""
    script = ROOT / "deploy" / "with-service-token.sh"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "codesync"  # stands in for the real CLI: prints what it would run with
    fake.write_text('#!/bin/sh\necho "token=$CODESYNC_SERVICE_TOKEN args=$*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "CODESYNC_TOKEN_DIR": str(tmp_path)}
    run = lambda **extra: subprocess.run(  # noqa: E731
        ["sh", str(script), "runner", "runner"], env={**env, **extra}, capture_output=True, text=True, timeout=10
    )
    missing = run()
    assert missing.returncode == 2 and "no service token" in missing.stderr
    (tmp_path / "runner").write_text("from-volume\n")
    assert run().stdout.strip() == "token=from-volume args=runner"
    assert run(CODESYNC_SERVICE_TOKEN="from-env").stdout.strip() == "token=from-env args=runner"


def test_bootstrap_migrates_and_makes_each_service_token_once(tmp_path: Path):
    """deploy/bootstrap.sh (the migrate service) with the real CLI on SQLite."""
    import secrets as _secrets
    import sys

    from signaling.tokens import TokenService

    secret = _secrets.token_urlsafe(48)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CODESYNC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'codesync.db'}",
        "CODESYNC_SECRET_KEY": secret,
        "CODESYNC_DATA_DIR": str(tmp_path / "data"),
        "CODESYNC_TOKEN_DIR": str(tokens),
    }
    run = lambda: subprocess.run(  # noqa: E731
        ["sh", str(ROOT / "deploy" / "bootstrap.sh")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    first = run()
    assert first.returncode == 0, first.stderr
    made = {scope: (tokens / scope).read_text().strip() for scope in ("persistence", "runner")}
    for scope, token in made.items():
        assert (tokens / scope).stat().st_mode & 0o077 == 0, "service tokens must not be readable by others"
        assert TokenService(secret).decode_service(token).scope == scope
    second = run()
    assert second.returncode == 0, second.stderr
    assert {scope: (tokens / scope).read_text().strip() for scope in made} == made
    assert "created" not in second.stdout


def test_compose_environment_is_what_settings_reads(config: dict, monkeypatch, tmp_path: Path):
    """Every CODESYNC_* variable compose sets is a real setting (a typo would be ignored silently)."""
    import os

    from signaling.settings import Settings

    monkeypatch.chdir(tmp_path)  # no stray .env file of the working directory

    fields = {f"CODESYNC_{name.upper()}" for name in Settings.model_fields}
    for name, service in config["services"].items():
        if service.get("image") != "codesync:latest":
            continue
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("CODESYNC_") and k not in fields and not k.startswith("CODESYNC_OAUTH_")}
        assert not unknown, f"{name}: not settings: {unknown}"
        for key in list(os.environ):
            if key.startswith("CODESYNC_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings(_env_file=None)
        assert settings.effective_database_url.startswith("postgresql+asyncpg://codesync:")
        assert settings.redis_url == "redis://:redis-pass-456@redis:6379/0"
        assert settings.turn_url_list and settings.turn_secret == "turn-secret-789"
        assert settings.oauth_providers() == {}  # empty client ids in .env.example disable providers
        if name in ("persistence", "runner"):
            assert settings.ops_port == 9100 and settings.ops_host == "0.0.0.0"
            assert settings.http_signaling_url == "http://proxy:80"
        if name == "runner":
            assert settings.sandbox == "docker"
