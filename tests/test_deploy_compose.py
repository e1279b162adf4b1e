"""compose.yaml, Dockerfile and .env.example, checked by a real Compose implementation.

``docker-compose config`` (Debian's docker-compose) parses, validates and interpolates the
file exactly as ``docker-compose up`` would; the assertions then check the shape the
deployment promises (README, "Deployment"): every long-running service has a healthcheck,
two signaling nodes behind the proxy, secrets only from the environment, the Docker socket
for the runner, coturn with the shared TURN secret.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.compose import DEBIAN_IMAGES_FILE, TEST_FILE, compose_cli, env_file
from tests.helpers.components import ROOT, require

pytestmark = pytest.mark.timeout(120)

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
ONE_SHOTS = {"migrate", "run-image"}
SECRETS = ("CODESYNC_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "CODESYNC_TURN_SECRET")


def _env_file(tmp_path: Path, **overrides: str) -> Path:
    return env_file(tmp_path / "test.env", **overrides)


def _config(
    tmp_path: Path, command: list[str], env_file: Path, files: tuple[Path, ...] = (COMPOSE,)
) -> subprocess.CompletedProcess:
    # A clean environment: only the env file decides (no stray CODESYNC_* from the caller).
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [*command, "--env-file", str(env_file), *(a for f in files for a in ("-f", str(f))), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cli = compose_cli()
    require("docker-compose", cli is not None, "apt-get install docker-compose")
    assert cli is not None
    return cli


TEST_VALUES = dict(
    CODESYNC_SECRET_KEY="k-" + "a" * 40,
    POSTGRES_PASSWORD="pg-pass-123",
    REDIS_PASSWORD="redis-pass-456",
    CODESYNC_TURN_SECRET="turn-secret-789",
    TURN_HOST="turn.test.example",
)
# What tests/helpers/compose.py adds for the opt-in test (tests/compose/compose.test.yaml).
STACK_TEST_VALUES = dict(
    CODESYNC_TEST_NETWORK="codesync-compose-x",
    CODESYNC_TEST_PERSISTENCE_IP="10.231.9.10",
    CODESYNC_TEST_RUNNER_IP="10.231.9.11",
)


def _load_config(tmp_path: Path, compose: list[str], files: tuple[Path, ...], **extra: str) -> dict:
    result = _config(tmp_path, compose, _env_file(tmp_path, **TEST_VALUES, **extra), files)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory, compose: list[str]) -> dict:
    """One ``config`` run shared by the shape tests (docker-compose takes seconds to start)."""
    return _load_config(tmp_path_factory.mktemp("compose"), compose, (COMPOSE,))


@pytest.fixture(scope="module")
def config_debian_images(tmp_path_factory, compose: list[str]) -> dict:
    """compose.yaml with deploy/compose.debian-images.yaml (no registry: every image built here)."""
    return _load_config(tmp_path_factory.mktemp("compose-debian"), compose, (COMPOSE, DEBIAN_IMAGES_FILE))


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
        # /metrics moved off the public port: scrapers use the ops port, the proxy never serves it.
        assert svc["environment"]["CODESYNC_OPS_PORT"] == "9100"
        assert svc["environment"]["CODESYNC_OPS_HOST"] == "0.0.0.0"
        assert "CODESYNC_PUBLIC_METRICS" not in svc["environment"]
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


def _stage_text(name: str) -> str:
    """One stage of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages = re.split(r"^(?=FROM )", text, flags=re.M)
    found = [stage for stage in stages if re.match(rf"FROM \S+ AS {re.escape(name)}\s*$", stage.splitlines()[0])]
    assert len(found) == 1, f"no single stage {name}"
    return found[0]


def test_the_dockerfile_run_image_is_runner_image_py_s():
    """Two builds of the runner's sandbox image — runner/image.py (debootstrap, no registry) and
    the Dockerfile's run-image stage (compose) — read one package list and one prune list, and
    both carry the vendored npm toolchains where the sandboxes look (/opt/codesync)."""
    from runner import image
    from runner.languages import TSC

    listed = lambda name: [w for line in (ROOT / "runner" / name).read_text().splitlines()  # noqa: E731
                           for w in line.split("#", 1)[0].split()]
    packages, prune = listed("run-image.packages"), listed("run-image.prune")
    assert list(image.PACKAGES) == packages and list(image.PRUNE) == prune
    printed = subprocess.run([sys.executable, "-m", "runner.image", "--print-packages"], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
    assert printed.stdout.split() == packages
    # python3: the Docker sandbox loads its seccomp filter with it (runner/sandbox/docker.py).
    assert {"python3", "nodejs", "gcc", "g++", "golang-go", "rustc", "default-jdk-headless", "ruby"} <= set(packages)

    stage = _stage_text("run-image")
    assert re.search(r"^COPY runner/run-image\.packages runner/run-image\.prune /tmp/$", stage, re.M), stage
    installs = re.findall(r"apt-get install ([^&|;]*)", stage)
    assert installs and all(not [w for w in words.split() if not w.startswith("-")] for words in installs), (
        "the run-image stage installs only the listed packages (no literal package names)")
    assert "sed 's/#.*//' /tmp/run-image.packages | xargs apt-get install" in stage
    assert "$(sed 's/#.*//' /tmp/run-image.prune)" in stage and "rm -rf $path" in stage
    copied = re.findall(r"^COPY --from=(\S+) (\S+) (\S+)$", stage, re.M)
    assert copied == [("run-toolchains", "/src/toolchains/", image.SANDBOX_TOOLCHAINS + "/")], copied

    tools = _stage_text("run-toolchains")
    assert "COPY runner/toolchains/ /src/toolchains/" in tools
    assert "npm ci --no-audit --no-fund --ignore-scripts --omit=dev" in tools  # as runner/image.py installs them
    for project in image.npm_toolchains():
        assert (project / "package-lock.json").exists()
    # The TypeScript compiler the languages table runs is inside one of those toolchains.
    relative = TSC.removeprefix(image.SANDBOX_TOOLCHAINS + "/").split("/")[0]
    assert relative in {p.name for p in image.npm_toolchains()}, TSC


def test_the_app_image_installs_and_copies_every_python_package():
    """Every package pyproject.toml installs gets a stub for the dependency layer and its
    sources copied (the app image lacked codesync/ after the platform package moved there)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages >= {"codesync", "signaling", "peer", "runner"}
    stage = _stage_text("app")
    # The locked, hashed dependency set first (Makefile `lock`), then CodeSync without resolving.
    stubs = re.search(
        r"mkdir -p ([\w ]+?) && touch ([\w/. ]+?) && pip install --require-hashes -r requirements-run\.lock"
        r"\s+&&\s+pip install --no-deps -e \.", stage)
    assert stubs, stage
    assert set(stubs.group(1).split()) == packages
    assert set(stubs.group(2).split()) == {f"{p}/__init__.py" for p in packages}
    for package in packages:
        assert re.search(rf"^COPY {package}/ {package}/$", stage, re.M), f"the app image does not copy {package}/"
        assert (ROOT / package / "__init__.py").exists()


def test_service_token_entrypoint(tmp_path: Path):
    """The peers' entry point takes the token from the environment, else from the token volume."""
    script = ROOT / "deploy" / "with-service-token.sh"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "codesync"  # stands in for the real CLI: prints what it would run with
    fake.write_text('#!/bin/sh\necho "token=$CODESYNC_SERVICE_TOKEN file=${CODESYNC_SERVICE_TOKEN_FILE:-} args=$*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "CODESYNC_TOKEN_DIR": str(tmp_path)}
    run = lambda **extra: subprocess.run(  # noqa: E731
        ["sh", str(script), "runner", "runner"], env={**env, **extra}, capture_output=True, text=True, timeout=10
    )
    missing = run()
    assert missing.returncode == 2 and "no service token" in missing.stderr
    (tmp_path / "runner").write_text("from-volume\n")
    # From the volume: the service is told the file, and writes its renewed tokens there.
    assert run().stdout.strip() == f"token=from-volume file={tmp_path / 'runner'} args=runner"
    # From the environment (.env): nothing to write back to.
    assert run(CODESYNC_SERVICE_TOKEN="from-env").stdout.strip() == "token=from-env file= args=runner"


def test_bootstrap_keeps_accepted_tokens_and_replaces_refused_ones(tmp_path: Path):
    """deploy/bootstrap.sh (the migrate service, on every `up`) with the real CLI on SQLite:
    makes both tokens once; then keeps a token signaling accepts (the peers renew theirs in the
    file) and replaces — revoking its credential — one that was revoked, expired, is unknown
    to the database or was signed with another key."""
    import secrets as _secrets
    import sys
    import time

    import jwt

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
        "CODESYNC_LOG_LEVEL": "WARNING",
    }

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run(["sh", str(ROOT / "deploy" / "bootstrap.sh")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def files() -> dict[str, str]:
        return {scope: (tokens / scope).read_text().strip() for scope in ("persistence", "runner")}

    def token_list() -> str:
        listed = subprocess.run([sys.executable, "-m", "codesync.cli", "token", "list"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        return listed.stdout

    first = run()
    made = files()
    assert "created the persistence service token" in first.stdout and "created the runner service token" in first.stdout
    for scope, token in made.items():
        assert (tokens / scope).stat().st_mode & 0o077 == 0, "service tokens must not be readable by others"
        assert TokenService(secret).decode_service(token).scope == scope
    second = run()
    assert files() == made and "created" not in second.stdout

    # A renewed token (what a running peer writes back): same credential, kept as it is.
    renewed = TokenService(secret).issue_service(jwt.decode(made["runner"], options={"verify_signature": False})["jti"],
                                                 "runner", 600)
    (tokens / "runner").write_text(renewed + "\n")
    assert "created" not in run().stdout and files()["runner"] == renewed

    def jti(token: str) -> str:
        return jwt.decode(token, options={"verify_signature": False})["jti"]

    now = int(time.time())

    def expired(token_id: str) -> str:
        return jwt.encode({"typ": "service", "sub": "service:runner", "scope": "runner", "aud": "codesync",
                           "iat": now - 120, "exp": now - 60, "jti": token_id}, secret, algorithm="HS256")

    # what -> (the bad token made from the runner's current one, whether that credential is revoked)
    refused = {
        "revoked": (None, True),  # revoked through the CLI below
        "expired": (expired, True),
        "signed with another key": (lambda i: TokenService(_secrets.token_urlsafe(48)).issue_service(i, "runner", 600), True),
        "unknown to the database": (lambda i: TokenService(secret).issue_service("f" * 32, "runner", 600), False),
        "of another scope": (lambda i: made["persistence"], False),
    }
    ended = set()
    for what, (make_bad, revokes) in refused.items():
        before = files()
        current = jti(before["runner"])
        if make_bad is None:
            subprocess.run([sys.executable, "-m", "codesync.cli", "token", "revoke", before["runner"]], env=env,
                           cwd=tmp_path, capture_output=True, timeout=120, check=True)
        else:
            (tokens / "runner").write_text(make_bad(current) + "\n")
        out = run().stdout
        assert "created the runner service token" in out and "created the persistence" not in out, (what, out)
        after = files()
        assert after["persistence"] == before["persistence"], what
        assert TokenService(secret).decode_service(after["runner"]).scope == "runner"
        assert jti(after["runner"]) != current, what
        if revokes:
            ended.add(current)
    listed = {line.split()[0]: line for line in token_list().splitlines()}
    # The credentials of the expired / forged tokens replaced were revoked (the renewal chain of
    # whoever still holds one ends); the persistence peer's, found in the runner's file, was not.
    assert all(" revoked " in listed[i] for i in ended), token_list()
    assert " active " in listed[jti(files()["persistence"])] and " active " in listed[jti(files()["runner"])]


# ------------------------------------------------------------------ least privilege, trusted proxies
# What each app service may be given: the runner runs other people's code, the persistence peer
# stores documents; neither ever needs the token-signing key (a service token is renewed over
# HTTP) or another service's secret (DESIGN.md, trust model; codesync/supervisor.py does the same).
SECRET_SETTINGS = {"CODESYNC_SECRET_KEY", "CODESYNC_TURN_SECRET", "CODESYNC_SMTP_URL"}  # (an SMTP URL may hold a password)


def test_the_peers_get_no_secret_they_do_not_use(config: dict):
    services = config["services"]
    for name in ("persistence", "runner"):
        env = services[name]["environment"]
        leaked = {k for k in env if k in SECRET_SETTINGS or k.startswith("CODESYNC_OAUTH_")}
        assert not leaked, f"{name} gets {sorted(leaked)}"
        assert all(v not in " ".join(map(str, env.values())) for v in ("k-" + "a" * 40, "turn-secret-789"))
    runner = services["runner"]["environment"]
    assert not {"CODESYNC_DATABASE_URL", "CODESYNC_REDIS_URL"} & set(runner), "the runner uses no database"
    assert "pg-pass-123" not in str(runner) and "redis-pass-456" not in str(runner)
    # Only the migrate one-shot (it mints the peers' tokens) and the signaling nodes sign tokens.
    signers = {n for n, s in services.items() if "CODESYNC_SECRET_KEY" in (s.get("environment") or {})}
    assert signers == {"migrate", "signaling-1", "signaling-2"}, signers
    # The token volume: only where tokens are made or used.
    holders = {n for n, s in services.items()
               if any(str(v).startswith("service-tokens:") or (isinstance(v, dict) and v.get("source") == "service-tokens")
                      for v in s.get("volumes") or [])}
    assert holders == {"migrate", "persistence", "runner"}, holders


def test_trusted_proxies_are_the_compose_network(config: dict, tmp_path: Path, compose: list[str]):
    """Behind nginx every request comes from the proxy: without CODESYNC_TRUSTED_PROXIES every
    user shares one login-throttling bucket. The nodes trust the compose network (a fixed subnet:
    the proxy, and the host's address on it where a TLS terminator on this host connects from)."""
    from signaling.clientaddr import parse_networks, resolve

    subnet = config["networks"]["default"]["ipam"]["config"][0]["subnet"]
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z0-9_]+=", line))
    assert subnet == example["NETWORK_SUBNET"]
    for node in ("signaling-1", "signaling-2"):
        assert config["services"][node]["environment"]["CODESYNC_TRUSTED_PROXIES"].split(",")[0] == subnet
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in nginx

    # What the nodes make of it (signaling.clientaddr, with the committed value): nginx appends
    # the address it got the connection from.
    import ipaddress
    from codesync.settings import Settings

    settings = Settings(trusted_proxies=config["services"]["signaling-1"]["environment"]["CODESYNC_TRUSTED_PROXIES"],
                        _env_file=None)
    trusted = parse_networks(tuple(settings.trusted_proxy_list))
    net = ipaddress.ip_network(subnet)
    proxy, gateway = str(net.network_address + 130), str(net.network_address + 1)
    assert resolve(proxy, ["198.51.100.7"], trusted) == "198.51.100.7"  # a client straight to nginx
    assert resolve(proxy, ["10.6.6.6, 198.51.100.7"], trusted) == "198.51.100.7"  # its spoof is ignored
    # A TLS terminator on this host (reaching nginx from the bridge's address) that appends too.
    assert resolve(proxy, ["10.6.6.6, 198.51.100.7, " + gateway], trusted) == "198.51.100.7"
    assert resolve("198.51.100.9", ["10.6.6.6"], trusted) == "198.51.100.9"  # not from the network: no header

    # Another subnet and an extra proxy (a load balancer on another host) go along.
    other = _load_config(tmp_path, compose, (COMPOSE,), NETWORK_SUBNET="10.77.0.0/24", EXTRA_TRUSTED_PROXIES="192.0.2.10")
    assert other["networks"]["default"]["ipam"]["config"][0]["subnet"] == "10.77.0.0/24"
    env = other["services"]["signaling-2"]["environment"]
    assert Settings(trusted_proxies=env["CODESYNC_TRUSTED_PROXIES"], _env_file=None).trusted_proxy_list == [
        "10.77.0.0/24", "192.0.2.10"]


# Variables of .env.example / compose.yaml that are compose's own (interpolated into other
# names, or into no container at all), though they look like settings.
COMPOSE_VARIABLES = {"CODESYNC_HTTP_BIND", "CODESYNC_HTTP_PORT", "CODESYNC_PERSISTENCE_TOKEN", "CODESYNC_RUNNER_TOKEN"}


def test_every_codesync_variable_is_a_setting_that_reaches_a_container(config: dict):
    """A CODESYNC_* name in .env.example or compose.yaml is either a real setting
    (codesync/settings.py) that compose passes to a container under that name, or one of
    compose's own variables; and every variable .env.example lists is used by compose.yaml.
    (.env is read by compose only: a setting added there but not passed on does nothing.)"""
    from codesync.settings import Settings

    fields = {f"CODESYNC_{name.upper()}" for name in Settings.model_fields}
    text = COMPOSE.read_text()
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z0-9_]+=", line)}
    # (A name ending in "_" is a pattern in a comment: CODESYNC_OAUTH_<NAME>_...)
    named = {n for n in re.findall(r"\b(CODESYNC_[A-Z0-9_]+)", text) if not n.endswith("_")}
    named |= {n for n in example if n.startswith("CODESYNC_")}
    passed = {k for s in config["services"].values() for k in (s.get("environment") or {})}
    for name in sorted(named):
        if name in COMPOSE_VARIABLES:
            assert name not in fields, f"{name} is a setting now: pass it on, or rename the compose variable"
            continue
        is_setting = name in fields or re.fullmatch(r"CODESYNC_OAUTH_[A-Z0-9]+_[A-Z_]+", name)
        assert is_setting, f"{name} is not a setting (codesync/settings.py) — a typo is ignored silently"
        assert name in passed, f"{name} is in .env.example or compose.yaml but no container gets it"
    unused = {n for n in example if not re.search(r"\$\{" + n + r"\b", text)}
    assert not unused, f".env.example lists variables compose.yaml never reads: {sorted(unused)}"


def test_compose_environment_is_what_settings_reads(config: dict, monkeypatch, tmp_path: Path):
    """Every CODESYNC_* variable compose sets is a real setting (a typo would be ignored silently)."""
    import os

    from codesync.settings import Settings

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
        if name != "runner":
            assert settings.effective_database_url.startswith("postgresql+asyncpg://codesync:")
        if name in ("signaling-1", "signaling-2", "persistence"):
            assert settings.redis_url == "redis://:redis-pass-456@redis:6379/0"
        if name.startswith("signaling-"):
            assert settings.turn_url_list and settings.turn_secret == "turn-secret-789"
            assert settings.oauth_providers() == {}  # empty client ids in .env.example disable providers
            assert settings.trusted_proxy_list and settings.ops_port == 9100 and not settings.public_metrics
        if name in ("persistence", "runner"):
            assert settings.ops_port == 9100 and settings.ops_host == "0.0.0.0"
            assert settings.http_signaling_url == "http://proxy:80"
            assert settings.secret_key is None and settings.turn_secret is None
        if name == "runner":
            assert settings.sandbox == "docker"
            assert settings.database_url is None and settings.redis_url is None


# ------------------------------------------------------------------ found by the first real start
# (tests/test_deploy_compose_up.py); each check below would have caught one of them without Docker.
# Which backing services each command writes to until its last moment (signaling: accounts,
# sessions, presence; persist: documents, room leases; the runner uses neither).
USES = {"signaling": {"postgres", "redis"}, "persist": {"postgres", "redis"}, "runner": set()}


def test_services_name_the_backing_services_they_use(config: dict):
    """compose stops a service only after those naming it in ``depends_on``: a service that
    reaches PostgreSQL only through ``migrate`` had PostgreSQL stopped under it (the persistence
    peer's final compaction failed on ``compose stop``)."""
    for name, service in config["services"].items():
        command = (service.get("command") or [None])[0]
        if service.get("image") != "codesync:latest" or command not in USES:
            continue
        missing = USES[command] - set(service.get("depends_on") or {})
        assert not missing, f"{name} ({command}) must name {sorted(missing)} in depends_on"


def test_nginx_logs_no_request_line_with_a_token():
    """nginx's error lines quote the request line, and /signal carries the (service) token in
    its query string: the error log stays at "crit"; the access log has no query string."""
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    levels = re.findall(r"^error_log\s+\S+\s+(\w+)\s*;", nginx, re.M)
    assert levels and all(level in ("crit", "alert", "emerg") for level in levels), levels
    log_format = re.search(r"log_format codesync_json[^;]*;", nginx, re.S).group(0)  # type: ignore[union-attr]
    leaky = re.findall(r"\$(?:request|request_uri|args|query_string|arg_\w+)(?!\w)", log_format)
    assert not leaky, f"the access log must not record the query string: {leaky}"


async def test_proxy_logs_carry_no_token(tmp_path: Path):
    """deploy/nginx.conf in a real nginx: a failed /signal?token=... and an invite accept
    (the token in the path) leave no token in its access log or its own error log."""
    import httpx

    from tests.helpers.components import free_port
    from tests.helpers.proxy import nginx_proxy

    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: nginx logs an upstream error
    async with nginx_proxy(tmp_path / "nginx", [dead, dead]) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            assert (await client.get(f"/signal?token={token}")).status_code == 502
            assert (await client.post(f"/api/invites/{token}/accept")).status_code == 502
    access = proxy.access_log.read_text()
    assert '"uri":"/signal"' in access and '"uri":"/api/invites/-/accept"' in access, access
    # stderr.log: where the committed `error_log stderr ...` goes (error.log is the harness's own).
    for log in (proxy.access_log, tmp_path / "nginx" / "stderr.log"):
        assert token not in log.read_text(), f"{log.name} holds a token"


def test_images_stop_on_sigterm():
    """A PID 1 without a SIGTERM handler ignores it (coturn: SIGKILLed after the grace period)."""
    stages = dockerfile_stages(ROOT / "Dockerfile")
    for name in ("app", "turn"):
        entry = stages[name].entrypoint or []
        assert entry[:1] == ["tini"], f"stage {name}: run under tini, not {entry}"
        assert "tini" in stages[name].packages


# ------------------------------------------------------------------ commands exist in their images
# Executables that healthchecks and entry points name -> the Debian package providing them.
PROVIDED_BY = {
    "python3": "python3", "curl": "curl", "tini": "tini", "nginx": "nginx", "turnserver": "coturn",
    "turnutils_stunclient": "coturn", "pg_isready": "postgresql-15", "redis-cli": "redis-tools",
    "redis-server": "redis-server", "codesync": "pip install -e .",
}
ESSENTIAL = {"sh", "grep", "timeout", "true", "cat", "test"}  # dash, grep, coreutils: in every Debian image


class Stage:
    def __init__(self, base: str) -> None:
        self.base = base
        self.packages: set[str] = set()
        self.copied: set[str] = set()
        self.entrypoint: list[str] | None = None
        self.workdir = "/"


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """Stages of a Dockerfile: apt packages installed, paths copied in, ENTRYPOINT (inherited)."""
    import json
    import posixpath

    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            stage = Stage(base.strip())
            parent = stages.get(base.strip())
            if parent is not None:
                stage.packages |= parent.packages
                stage.copied |= parent.copied
                stage.entrypoint, stage.workdir = parent.entrypoint, parent.workdir
            stages[name.strip() or base.strip()] = stage
        elif stage is None:
            continue
        elif word == "RUN":
            for install in re.findall(r"apt-get install ([^&;]+)", rest):
                stage.packages |= {w for w in install.split() if not w.startswith("-")}
            if re.search(r"pip install (--no-deps )?-e \.", rest):
                stage.packages.add("pip install -e .")
        elif word == "WORKDIR":
            stage.workdir = posixpath.join(stage.workdir, rest.strip())
        elif word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            *sources, dest = parts
            dest = posixpath.join(stage.workdir, dest)
            for source in sources:
                target = posixpath.join(dest, posixpath.basename(source.rstrip("/"))) if dest.endswith("/") else dest
                stage.copied.add(target.rstrip("/"))
        elif word == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
    return stages


def _executables(service: dict, stage: Stage) -> dict[str, str]:
    """Executable -> where it is named (healthcheck, entrypoint, command)."""
    found: dict[str, str] = {}
    test = (service.get("healthcheck") or {}).get("test") or []
    if test[:1] == ["CMD"]:
        found[test[1]] = "healthcheck"
    elif test[:1] == ["CMD-SHELL"]:
        for segment in re.split(r"\|\||&&|[|;]", test[1]):
            words = [w for w in segment.split() if not re.match(r"^[A-Z_]+=", w)]
            if words:
                found[words[0]] = "healthcheck"
    entry = service.get("entrypoint") or stage.entrypoint
    if entry:
        found[entry[0]] = "entrypoint"
        if entry[0] == "tini" and "--" in entry:
            found[entry[entry.index("--") + 1]] = "entrypoint"
    elif service.get("command"):
        found[service["command"][0]] = "command"
    return found


def test_healthchecks_and_entry_points_exist_in_their_images(config_debian_images: dict):
    """Every executable a healthcheck or entry point names is installed (or copied) in the
    image compose builds for it — a typo or a missing package is found here, not by the
    first self-hoster whose service never becomes healthy."""
    checked = 0
    for name, service in config_debian_images["services"].items():
        build = service.get("build")
        if not isinstance(build, dict):
            continue
        dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
        stage = dockerfile_stages(dockerfile)[build["target"]]
        for exe, where in _executables(service, stage).items():
            checked += 1
            if exe.startswith("/"):
                assert exe in stage.copied, f"{name}: {where} {exe} is not copied into stage {build['target']}"
            elif exe not in ESSENTIAL:
                assert exe in PROVIDED_BY, f"{name}: {where} runs {exe!r}; add its package to PROVIDED_BY"
                assert PROVIDED_BY[exe] in stage.packages, (
                    f"{name}: {where} runs {exe!r} but stage {build['target']} of {dockerfile.name} "
                    f"does not install {PROVIDED_BY[exe]}"
                )
    assert checked >= 20, checked


# ------------------------------------------------------------------ the override files
def _without(service: dict, *keys: str) -> dict:
    return {k: v for k, v in service.items() if k not in keys}


def test_debian_images_override_changes_only_the_database_images(config: dict, config_debian_images: dict):
    """deploy/compose.debian-images.yaml swaps the PostgreSQL and Redis images, nothing else:
    environment, volumes, commands and healthchecks stay the production ones."""
    base, local = config["services"], config_debian_images["services"]
    assert set(base) == set(local)
    assert base["postgres"]["image"].startswith("postgres:") and base["redis"]["image"].startswith("redis:")
    for name in ("postgres", "redis"):
        assert local[name]["image"] == f"codesync-{name}:bookworm"
        assert local[name]["build"]["target"] == name
        assert Path(local[name]["build"]["context"]) == ROOT / "deploy" / "debian-images"
        assert _without(local[name], "image", "build") == _without(base[name], "image")
    for name in set(base) - {"postgres", "redis"}:
        assert local[name] == base[name], name


def test_compose_test_override_only_confines_the_stack(tmp_path: Path, compose: list[str], config_debian_images: dict):
    """tests/compose/compose.test.yaml: the test network, the peers' fixed addresses with their
    ICE restriction, and host networking for builds — every other setting is production's."""
    from codesync.settings import Settings

    tested = _load_config(tmp_path, compose, (COMPOSE, DEBIAN_IMAGES_FILE, TEST_FILE), **STACK_TEST_VALUES)
    assert "ice_hosts" in Settings.model_fields  # CODESYNC_ICE_HOSTS, the one setting it adds
    assert tested["networks"]["default"] == {"external": True, "name": "codesync-compose-x"}
    for name, ip in (("persistence", "10.231.9.10"), ("runner", "10.231.9.11")):
        service = tested["services"][name]
        assert service["environment"]["CODESYNC_ICE_HOSTS"] == ip
        assert service["networks"]["default"]["ipv4_address"] == ip
    for name, production in config_debian_images["services"].items():
        service = dict(tested["services"][name])
        if "build" in production:
            assert service["build"] == {**production["build"], "network": "host"}, name
            service["build"] = production["build"]
        if name in ("persistence", "runner"):
            service["environment"] = _without(service["environment"], "CODESYNC_ICE_HOSTS")
        service.pop("networks", None)
        assert service == _without(production, "networks"), name


def test_deploy_scripts_are_valid_sh():
    scripts = sorted((ROOT / "deploy").rglob("*.sh"))
    assert len(scripts) >= 3
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        check = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"


# ------------------------------------------------------------------ the Debian PostgreSQL image's entry point
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


async def test_debian_postgres_entrypoint_initialises_like_the_official_image():
    """deploy/debian-images/postgres-entrypoint.sh with this machine's PostgreSQL binaries, as
    the image runs it (user postgres): first start creates POSTGRES_USER / _PASSWORD / _DB, the
    compose healthcheck (`pg_isready -U codesync -d codesync`) passes, network clients need the
    password, a restart keeps the data and does not initialise again, SIGINT (the image's
    STOPSIGNAL) stops it cleanly; no password: refused with a clear message."""
    import asyncio
    import os
    import pwd
    import shutil
    import signal
    import tempfile

    import asyncpg

    from tests.helpers.components import free_port
    from tests.helpers.wait import wait_for

    bindir = _postgres_bin()
    require("PostgreSQL server binaries", bindir is not None, "apt-get install postgresql")
    require("root (to run the entry point as the postgres user)", os.geteuid() == 0)
    assert bindir is not None
    user = pwd.getpwnam("postgres")
    # Not under pytest's tmp_path: its 0700 parents keep the postgres user out.
    work = Path(tempfile.mkdtemp(prefix="cs-pgentry-"))
    os.chown(work, user.pw_uid, user.pw_gid)
    port = free_port()
    # A copy the postgres user can read wherever the checkout is (CI's clone sits in a 0700 dir).
    script = work / "postgres-entrypoint.sh"
    shutil.copyfile(ROOT / "deploy" / "debian-images" / "postgres-entrypoint.sh", script)
    os.chmod(script, 0o644)
    # setpriv execs (runuser would stay the parent and keep signals from reaching postgres).
    as_postgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]

    def start(password: str = "s3cret pass") -> subprocess.Popen:
        env = {
            "PATH": f"{bindir}:/usr/bin:/bin", "PGDATA": str(work / "data"), "PGPORT": str(port),
            "POSTGRES_USER": "codesync", "POSTGRES_PASSWORD": password, "POSTGRES_DB": "codesync",
        }
        # The server's own -c listen_addresses comes last and wins: loopback only, here.
        return subprocess.Popen(
            [*as_postgres, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
             "sh", str(script), "postgres", "-c", "listen_addresses=127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def healthcheck() -> bool:
        probe = subprocess.run(
            [*as_postgres, "env", f"PGPORT={port}", f"{bindir}/pg_isready", "-U", "codesync", "-d", "codesync"],
            capture_output=True,
        )
        return probe.returncode == 0

    async def stop(proc: subprocess.Popen) -> str:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 30)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert code == 0, out
        return out

    try:
        refused = start(password="")
        assert refused.wait(30) == 2
        assert b"POSTGRES_PASSWORD is empty" in (refused.stdout.read() if refused.stdout else b"")

        first = start()
        try:
            await wait_for(lambda: first.poll() is not None or healthcheck(), timeout=60, interval=0.05,
                           what="the compose healthcheck to pass")
            # Healthy means the real server: not the initialising one (socket only, about to stop).
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user="codesync", password="s3cret pass", database="codesync")
            try:
                row = await conn.fetchrow("select current_user, current_database(), "
                                          "(select rolsuper from pg_roles where rolname = current_user) as su")
                assert tuple(row) == ("codesync", "codesync", True)
                await conn.execute("create table kept (v text); insert into kept values ('still here')")
            finally:
                await conn.close()
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(host="127.0.0.1", port=port, user="codesync", password="wrong", database="codesync")
        finally:
            out = await stop(first) if first.poll() is None else ""
        assert "initialised" in out

        again = start(password="another one")  # ignored: the data directory exists
        try:
            await wait_for(lambda: again.poll() is not None or healthcheck(), timeout=60, interval=0.2, what="restart")
            conn = await asyncpg.connect(host="127.0.0.1", port=port, user="codesync", password="s3cret pass", database="codesync")
            try:
                assert await conn.fetchval("select v from kept") == "still here"
            finally:
                await conn.close()
        finally:
            out = await stop(again) if again.poll() is None else ""
        assert "initialised" not in out
    finally:
        # Whatever failed (even mid-initialisation): no server outlives the test.
        subprocess.run([*as_postgres, f"{bindir}/pg_ctl", "-D", str(work / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
