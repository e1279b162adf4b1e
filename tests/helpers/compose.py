"""The production stack (compose.yaml) started for real, in a private dockerd — test helpers.

Used by tests/test_deploy_compose_up.py (opt-in, ``CODESYNC_TEST_COMPOSE=1``); the pieces are
also what tests/test_deploy_images.py and tests/test_deploy_compose.py share:

- :func:`compose_cli` — the Compose implementation installed here (``docker compose`` v2, else
  Debian's ``docker-compose`` 1.29);
- :func:`import_base_image` — the Debian base every image is built from: runner/image.py's
  debootstrap rootfs, ``docker import``-ed, plus the host's CA bundle (pip/npm behind a
  TLS-intercepting proxy);
- :func:`env_file` — ``.env.example`` with test values, so the example itself is what is run;
- :func:`create_network` — the project's network: a bridge on a free 10.231.N.0/24 with IP
  forwarding off on the bridge, so nothing a container sends can leave this machine (the
  private dockerd runs ``--iptables=false``: Docker adds no NAT and no isolation rules);
- :func:`compose_stack` — all of it: lock, dockerd, base image, network, ``compose build``;
  yields a :class:`ComposeProject` and removes every container, image, volume, the network
  and the dockerd's data dir afterwards, whatever happened.

Network layout (DESIGN.md's rule: no internet, WebRTC only on addresses we configure): the
test's own aiortc peers use the bridge's host address (``.1``) as ``CODESYNC_ICE_HOSTS``; the
persistence peer and the runner have fixed addresses (``.10``, ``.11``) and use those
(tests/compose/compose.test.yaml); coturn (host network, as in production) is reached on ``.1``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.smtp import smtp_server
from tests.helpers.components import ROOT, free_port

COMPOSE_FILE = ROOT / "compose.yaml"
DEBIAN_IMAGES_FILE = ROOT / "deploy" / "compose.debian-images.yaml"
TEST_FILE = ROOT / "tests" / "compose" / "compose.test.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
LOCK = Path("/tmp/codesync-compose-test.lock")
TURN_PORT = 3478  # deploy/turnserver.conf; coturn runs with host networking, as in production
PERSISTENCE_HOST = 10  # fixed addresses inside the test /24 (compose.test.yaml)
RUNNER_HOST = 11
ONE_SHOTS = ("migrate", "run-image")


class ComposeError(AssertionError):
    """A compose command failed; the message carries its output (and the stack's state)."""


# ------------------------------------------------------------------------------ the CLI
def compose_cli() -> list[str] | None:
    """``docker compose`` (v2) when the plugin answers, else ``docker-compose`` (v1), else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_version(cli: list[str]) -> str:
    out = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, timeout=60)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


# ------------------------------------------------------------------------------ base image
def import_base_image(client: Any, tag: str) -> str:
    """Import the debootstrap bookworm rootfs (runner/image.py, cached) as ``tag``.

    The host's CA bundle is layered on top and named in ``NODE_EXTRA_CA_CERTS`` / ``PIP_CERT``,
    so npm and pip inside the builds trust what the host trusts.
    """
    from runner.image import rootfs_tarball

    repository, _, version = tag.partition(":")
    raw = f"{repository}:{version or 'latest'}-raw"
    # A file path (not a stream): dockerd 20.10 rejects the SDK's chunked upload (runner/image.py).
    client.api.import_image(src=str(rootfs_tarball()), repository=repository, tag=raw.split(":")[1])
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = (
            f"FROM {raw}\n"
            "COPY host-ca.crt /usr/local/share/host-ca.crt\n"
            "ENV NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca.crt PIP_CERT=/usr/local/share/host-ca.crt\n"
        ).encode()
        for name, data in (("Dockerfile", dockerfile), ("host-ca.crt", HOST_CA.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    client.images.remove(raw)  # only the tag; the layers stay under ``tag``
    return tag


# ------------------------------------------------------------------------------ .env
def env_file(path: Path, **overrides: str) -> Path:
    """``.env.example`` with ``overrides`` applied (keys it lacks are appended)."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in overrides:
            line = f"{key}={overrides.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------ network
@dataclass
class TestNetwork:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network

    def host(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    @property
    def gateway(self) -> str:
        """The host's own address on the bridge: the test's peers and coturn use it."""
        return self.host(1)

    def forwarding(self) -> str:
        return Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding").read_text().strip()


def _routed_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if word not in ("default", "broadcast", "local", "unreachable"):
                nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def create_network(client: Any, name: str) -> TestNetwork:
    """A bridge on a free 10.231.N.0/24, IP forwarding off on it before any container joins.

    Dynamic addresses come from the upper half (.128/25), so the fixed ones stay free.
    Raises AssertionError with dockerd's exact error when the bridge cannot be created.
    """
    import docker.errors
    import docker.types

    used = _routed_ipv4_networks()
    for n in range(7, 250):
        subnet = ipaddress.ip_network(f"10.231.{n}.0/24")
        if not any(subnet.overlaps(u) for u in used):
            break
    else:  # pragma: no cover - 243 busy /24s
        raise AssertionError("no free 10.231.N.0/24 for the compose test network")
    bridge = f"cscompose{n}"
    net = TestNetwork(name, bridge, subnet)
    ipam = docker.types.IPAMConfig(
        pool_configs=[
            docker.types.IPAMPool(subnet=str(subnet), iprange=f"{net.host(128)}/25", gateway=net.gateway)
        ]
    )
    try:
        client.networks.create(
            name, driver="bridge", ipam=ipam, options={"com.docker.network.bridge.name": bridge}
        )
    except docker.errors.APIError as exc:
        raise AssertionError(
            f"cannot create a bridge network in the private dockerd ({exc.explanation or exc}); "
            "docs/deployment.md says what to do"
        ) from None
    sysctl = Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding")
    sysctl.write_text("0\n")
    assert net.forwarding() == "0", f"could not turn IP forwarding off on {bridge}"
    return net


def remove_network(client: Any, net: TestNetwork) -> None:
    with contextlib.suppress(Exception):
        client.networks.get(net.name).remove()
    if Path(f"/sys/class/net/{net.bridge}").exists():  # dockerd died before removing it
        subprocess.run(["ip", "link", "del", net.bridge], check=False, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------------------ project
@dataclass
class ComposeProject:
    """One compose project in the private dockerd, driven through the real CLI."""

    cli: list[str]
    name: str
    files: tuple[Path, ...]
    env_path: Path
    daemon: Any  # tests.dockerd.Dockerd
    network: TestNetwork
    http_port: int
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    mail: Any = None  # tests.smtp.MailSink: the SMTP server CODESYNC_SMTP_URL points the nodes at

    # ---- the CLI
    @property
    def base_command(self) -> list[str]:
        files = [arg for f in self.files for arg in ("-f", str(f))]
        return [*self.cli, "-p", self.name, "--env-file", str(self.env_path), *files]

    def environ(self) -> dict[str, str]:
        """Only what compose needs: no stray CODESYNC_* or DOCKER_* of the caller."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.workdir),
            "DOCKER_HOST": self.daemon.url,
            "LANG": "C.UTF-8",
        }

    def run(self, *args: str, timeout: float = 300, check: bool = True, stdin: bytes | None = None,
            what: str | None = None) -> subprocess.CompletedProcess:
        """Run ``compose ARGS``; on failure raise ComposeError with its output and the stack's state."""
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [*self.base_command, *args], cwd=ROOT, env=self.environ(), input=stdin,
                capture_output=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise ComposeError(
                f"`compose {' '.join(args)}` did not finish within {timeout:.0f}s\n"
                f"{_tail(exc.stdout)}\n{_tail(exc.stderr)}\n{self.diagnostics()}"
            ) from None
        if what:
            self.timings[what] = self.timings.get(what, 0.0) + time.monotonic() - started
        if check and proc.returncode != 0:
            raise ComposeError(
                f"`compose {' '.join(args)}` failed ({proc.returncode}):\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}\n"
                f"{self.diagnostics()}"
            )
        return proc

    # ---- state through the Engine API (names differ between compose v1 and v2; labels do not)
    def client(self):
        return self.daemon.client()

    def containers(self, service: str | None = None, all: bool = True) -> list[Any]:
        labels = [f"com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self._list({"label": labels}, all)

    def sandboxes(self) -> list[dict]:
        """The runner's run containers (label ``codesync.runner``), as the Engine lists them."""
        client = self.client()
        try:
            return client.api.containers(all=True, filters={"label": "codesync.runner"})
        finally:
            client.close()

    def _list(self, filters: dict, all: bool) -> list[Any]:
        """Containers matching ``filters``; one removed between listing and inspecting is skipped."""
        import docker.errors

        client = self.client()
        try:
            found = []
            for summary in client.api.containers(all=all, filters=filters):
                with contextlib.suppress(docker.errors.NotFound):
                    found.append(client.containers.get(summary["Id"]))
            return found
        finally:
            client.close()

    def container(self, service: str) -> Any:
        found = self.containers(service)
        assert len(found) == 1, f"expected one container of {service}, found {[c.name for c in found]}"
        return found[0]

    def services(self) -> list[str]:
        return sorted({c.labels["com.docker.compose.service"] for c in self.containers()})

    def status(self) -> dict[str, str]:
        """service -> ``healthy`` / ``starting`` / ``unhealthy`` / ``exited(N)`` / ``running``."""
        out = {}
        for c in self.containers():
            state = c.attrs["State"]
            service = c.labels["com.docker.compose.service"]
            if state.get("Status") != "running":
                out[service] = f"{state.get('Status')}({state.get('ExitCode')})"
            elif state.get("Health"):
                out[service] = state["Health"]["Status"]
            else:
                out[service] = "running"
        return out

    def address(self, service: str) -> str:
        networks = self.container(service).attrs["NetworkSettings"]["Networks"]
        return networks[self.network.name]["IPAddress"]

    def logs(self, service: str, tail: int = 60) -> str:
        with contextlib.suppress(Exception):
            return self.container(service).logs(tail=tail).decode(errors="replace")
        return ""

    def secrets(self) -> dict[str, str]:
        """The secret values of the ``.env`` in use (they must never show up in a log)."""
        keys = ("CODESYNC_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "CODESYNC_TURN_SECRET")
        values = dict(line.split("=", 1) for line in self.env_path.read_text().splitlines() if "=" in line)
        return {k: values[k] for k in keys if values.get(k)}

    def diagnostics(self) -> str:
        """What a failure message needs: each container's state, health log and last lines."""
        lines = ["--- compose project state ---"]
        with contextlib.suppress(Exception):
            for c in sorted(self.containers(), key=lambda c: c.name):
                state = c.attrs["State"]
                health = state.get("Health") or {}
                lines.append(f"{c.name}: {state.get('Status')} exit={state.get('ExitCode')} health={health.get('Status')}")
                for probe in (health.get("Log") or [])[-2:]:
                    lines.append(f"    healthcheck exit={probe.get('ExitCode')}: {probe.get('Output', '').strip()[:300]}")
                if health.get("Status") not in (None, "healthy") or state.get("Status") != "running":
                    tail = c.logs(tail=15).decode(errors="replace")
                    lines += ["    | " + line[:300] for line in tail.splitlines()]
        return "\n".join(lines)

    async def wait_healthy(self, timeout: float = 180.0, what: str | None = None) -> dict[str, str]:
        """Every long-running service healthy and every one-shot exited 0 (fails at once otherwise)."""
        import asyncio

        started = time.monotonic()
        deadline = started + timeout
        while True:
            status = self.status()
            bad = {s: v for s, v in status.items() if v == "unhealthy" or (v.startswith("exited(") and s not in ONE_SHOTS)}
            bad.update({s: v for s, v in status.items() if s in ONE_SHOTS and v.startswith("exited(") and v != "exited(0)"})
            if bad:
                raise ComposeError(f"{what or 'waiting for health'}: failed {bad}\n{self.diagnostics()}")
            pending = {s: v for s, v in status.items() if v not in ("healthy", "exited(0)")}
            if status and not pending:
                if what:
                    self.timings[what] = time.monotonic() - started
                return status
            if time.monotonic() > deadline:
                raise ComposeError(
                    f"{what or 'waiting for health'}: still {pending} after {timeout:.0f}s\n{self.diagnostics()}"
                )
            await asyncio.sleep(0.5)  # polling Docker's health state; there is no event to wait on

    @property
    def url(self) -> str:
        """The proxy, as a user reaches it: the published port."""
        return f"http://127.0.0.1:{self.http_port}"


def _tail(data: bytes | str | None, limit: int = 4000) -> str:
    if not data:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text[-limit:]


# ------------------------------------------------------------------------------ the whole thing
@contextlib.contextmanager
def _exclusive_lock() -> Iterator[None]:
    """One compose test per machine: coturn's port and the lock-step are machine-wide."""
    with open(LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise AssertionError(f"another compose test holds {LOCK} (pid {handle.read().strip() or '?'})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def compose_stack(cli: list[str]) -> Iterator[ComposeProject]:
    """Lock, private dockerd, base image, network, ``.env``, ``compose build`` — then clean up.

    The caller runs ``up``; teardown runs ``down -v`` and removes the dockerd with its data
    dir, so no container, image, volume, build cache or network outlives the test.
    """
    from tests.helpers.dockerd import start_dockerd, stop_dockerd

    timings: dict[str, float] = {}
    with _exclusive_lock():
        assert _port_free(TURN_PORT), (
            f"port {TURN_PORT} (TURN, host networking) is in use on this machine; the compose test needs it"
        )
        workdir = Path(tempfile.mkdtemp(prefix="codesync-compose-"))
        started = time.monotonic()
        daemon = start_dockerd()
        timings["start dockerd"] = time.monotonic() - started
        client = daemon.client()
        client.api.timeout = 1200
        project: ComposeProject | None = None
        network: TestNetwork | None = None
        stack_exit = contextlib.ExitStack()
        try:
            started = time.monotonic()
            base = import_base_image(client, "codesync-test-base:bookworm")
            timings["import the debootstrap base"] = time.monotonic() - started
            network = create_network(client, f"codesync-compose-{secrets.token_hex(3)}")
            # A real SMTP server on the host's bridge address: the nodes send account mails
            # (verification links) there, as to the operator's mail server.
            mail = stack_exit.enter_context(smtp_server(host=network.gateway))
            port = free_port()
            env_path = env_file(
                workdir / "test.env",
                CODESYNC_SECRET_KEY=secrets.token_urlsafe(48),
                POSTGRES_PASSWORD=secrets.token_urlsafe(18),
                REDIS_PASSWORD=secrets.token_urlsafe(18),
                CODESYNC_TURN_SECRET=secrets.token_urlsafe(18),
                CODESYNC_PUBLIC_URL=f"http://127.0.0.1:{port}",
                CODESYNC_HTTP_BIND="127.0.0.1",
                CODESYNC_HTTP_PORT=str(port),
                CODESYNC_SMTP_URL=mail.url,
                TURN_HOST=network.gateway,
                TURN_EXTERNAL_IP=network.gateway,
                DOCKER_GID=str(daemon.socket.stat().st_gid),
                DOCKER_SOCKET=str(daemon.socket),
                DEBIAN_IMAGE=base,
                # The test's bridge stands in for compose.yaml's default network: the signaling
                # nodes trust its X-Forwarded-For (CODESYNC_TRUSTED_PROXIES) as in production.
                NETWORK_SUBNET=str(network.subnet),
                CODESYNC_TEST_NETWORK=network.name,
                CODESYNC_TEST_PERSISTENCE_IP=network.host(PERSISTENCE_HOST),
                CODESYNC_TEST_RUNNER_IP=network.host(RUNNER_HOST),
            )
            project = ComposeProject(
                cli=cli,
                name=f"cstest{secrets.token_hex(3)}",
                files=(COMPOSE_FILE, DEBIAN_IMAGES_FILE, TEST_FILE),
                env_path=env_path,
                daemon=daemon,
                network=network,
                http_port=port,
                workdir=workdir,
                timings=timings,
                mail=mail,
            )
            project.run("config", "-q", timeout=120)
            project.run("build", timeout=1800, what="compose build (every image)")
            yield project
        finally:
            started = time.monotonic()
            if project is not None:
                with contextlib.suppress(Exception):
                    project.run("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
            stack_exit.close()  # the SMTP server
            if network is not None:
                remove_network(client, network)
            client.close()
            stop_dockerd(daemon)  # removes every container left, then the data root (images, volumes, cache)
            shutil.rmtree(workdir, ignore_errors=True)
            timings["clean up (down -v, dockerd and its data removed)"] = time.monotonic() - started
