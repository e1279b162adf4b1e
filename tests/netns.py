"""The private-network-namespace testbed for browser tests (DESIGN.md, "The WebRTC testbed").

Chromium never runs in the host network namespace. A browser test starts ONE driver script
(``tests/browser/*.py``) inside ``unshare --net``; the driver calls :func:`setup_interfaces`
(``lo`` up, ``rtc0`` dummy/ifb with 10.99.0.1/24, default route through it), refuses to go on
if any other interface is visible, starts the whole stack bound to 10.99.0.1
(:class:`Stack`: signaling, persistence peer, runner, with ``CODESYNC_ICE_HOSTS=10.99.0.1``),
drives Chromium with Playwright and prints its results as one JSON line prefixed ``RESULT ``.
The pytest side (:func:`run_driver`) only spawns the namespace and parses that line.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NS_ADDR = "10.99.0.1"
NS_IFACE = "rtc0"
CHROMIUM = "/usr/bin/chromium"
RESULT_PREFIX = "RESULT "


# ---------------------------------------------------------------------------------- host side
def unshare_command() -> list[str] | None:
    """The command prefix that enters a fresh network namespace, or None when impossible here."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    if os.geteuid() == 0:
        return ["unshare", "--net", "--"]
    return ["unshare", "--user", "--map-root-user", "--net", "--"]


def netns_works() -> bool:
    prefix = unshare_command()
    if prefix is None:
        return False
    probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=20)
    return probe.returncode == 0


def browser_stack_available() -> tuple[bool, str]:
    """(ok, why-not) for the components every browser test needs."""
    if not Path(CHROMIUM).exists():
        return False, f"{CHROMIUM} (Debian package chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False, "playwright for Python (pip install playwright)"
    if not (ROOT / "web" / "dist" / "index.html").is_file():
        return False, "the built web client (make web)"
    if not netns_works():
        return False, "network namespaces (unshare --net)"
    return True, ""


def run_driver(script: str, config: dict[str, Any], log_path: Path, timeout: float = 240) -> dict[str, Any]:
    """Run ``tests/browser/<script>`` inside a new network namespace; return its RESULT JSON."""
    prefix = unshare_command()
    assert prefix is not None, "unshare is not available"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODESYNC_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.run(
            [*prefix, sys.executable, str(ROOT / "tests" / "browser" / script)],
            input=json.dumps(config).encode(), stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env,
            timeout=timeout,
        )
    out = proc.stdout.decode(errors="replace")
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise AssertionError(
        f"driver {script} exited {proc.returncode} without a result.\nstdout:\n{out[-3000:]}\n"
        f"log ({log_path}):\n{log_path.read_text(errors='replace')[-6000:]}"
    )


# ------------------------------------------------------------------------- namespace side
def interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


def setup_interfaces() -> None:
    """lo up + rtc0 (dummy, or ifb where the kernel has no dummy driver) + default route."""
    if set(interfaces()) - {"lo"}:
        raise RuntimeError(f"refusing to run: not a fresh network namespace (interfaces: {interfaces()})")

    def ip(*args: str, check: bool = True) -> int:
        return subprocess.run(["ip", *args], capture_output=True, check=check).returncode

    ip("link", "set", "lo", "up")
    if ip("link", "add", NS_IFACE, "type", "dummy", check=False) != 0:
        ip("link", "add", NS_IFACE, "type", "ifb")
    ip("addr", "add", f"{NS_ADDR}/24", "dev", NS_IFACE)
    ip("link", "set", NS_IFACE, "up")
    ip("route", "add", "default", "dev", NS_IFACE)
    check_isolated()


def check_isolated() -> None:
    """Browser tests must only ever see lo and rtc0: anything else could reach a real network."""
    extra = set(interfaces()) - {"lo", NS_IFACE}
    if extra:
        raise RuntimeError(f"refusing to run browser tests: interfaces other than lo/{NS_IFACE} are visible: {sorted(extra)}")


def free_port(host: str = NS_ADDR) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _playwright_disabled_features() -> list[str]:
    """Playwright passes its own ``--disable-features`` list and a second switch replaces the
    first, so ours must repeat Playwright's list (read from its bundle) plus what we add."""
    import playwright

    base = Path(playwright.__file__).parent / "driver" / "package" / "lib"
    for path in [base / "coreBundle.js", *base.rglob("chromiumSwitches.js")]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        m = re.search(r"disabledFeatures\s*=\s*\[(.*?)\]\s*\.filter", text, re.S)
        if m:
            body = "\n".join(line.split("//")[0] for line in m.group(1).splitlines())
            return [f for f in re.findall(r'"([A-Za-z0-9_]+)"', body)]
    return []


def chromium_args() -> list[str]:
    features = [*_playwright_disabled_features(), "WebRtcHideLocalIpsWithMdns"]
    return [
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--allow-loopback-in-peer-connection",
        f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE {NS_ADDR} , EXCLUDE *.local",
        "--disable-features=" + ",".join(dict.fromkeys(features)),
    ]


async def launch_chromium(playwright):
    check_isolated()
    return await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=chromium_args())


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = 9) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Stack:
    """The CodeSync stack under test, inside the namespace, bound to 10.99.0.1."""

    workdir: Path
    port: int = 0
    access_ttl: int = 900  # seconds; short values exercise silent refresh and 4001 reconnects
    extra_env: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{NS_ADDR}:{self.port}"

    def base_env(self) -> dict[str, str]:
        if not self.env:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CODESYNC_")}
            env.update(
                CODESYNC_HOST=NS_ADDR, CODESYNC_PORT=str(self.port), CODESYNC_PUBLIC_URL=f"http://{NS_ADDR}:{self.port}",
                CODESYNC_DATA_DIR=str(self.workdir / "data"), CODESYNC_SECRET_KEY=secrets.token_urlsafe(48),
                CODESYNC_ICE_HOSTS=NS_ADDR, CODESYNC_SIGNALING_URL=f"ws://{NS_ADDR}:{self.port}/signal",
                CODESYNC_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
                CODESYNC_ACCESS_TOKEN_TTL=str(self.access_ttl),
                # Browser tests register and invite at once (the default is tested with its own env).
                CODESYNC_UNVERIFIED_ACCOUNTS="full",
            )
            env.update(self.extra_env)
            self.env = env
        return self.env

    def _spawn(self, name: str, args: list[str], extra: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = open(log, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "codesync.cli", *args], env={**self.base_env(), **(extra or {})},
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        fh.close()
        p = Proc(name, proc, log)
        self.procs[name] = p
        return p

    async def start_signaling(self, timeout: float = 30) -> None:
        p = self._spawn("signaling", ["signaling"])
        await wait_http(f"{self.url}/healthz", p, timeout)

    async def service_token(self, scope: str) -> str:
        """What ``codesync token --scope`` prints, made in-process (a CLI start costs seconds here)."""
        from signaling.admin import create_service_token
        from codesync.settings import Settings

        env = self.base_env()
        settings = Settings(
            data_dir=Path(env["CODESYNC_DATA_DIR"]), secret_key=env["CODESYNC_SECRET_KEY"],
            host=NS_ADDR, port=self.port,
        )
        return await create_service_token(settings, scope, f"browser-test-{scope}")

    async def start_service(self, command: str, scope: str, module: str) -> Proc:
        """`codesync persist` / `codesync runner` with a fresh service token; refuses early
        (RuntimeError) when the service's module is not in the tree yet."""
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise RuntimeError(f"{module} does not exist yet")
        return self._spawn(command, [command], {"CODESYNC_SERVICE_TOKEN": await self.service_token(scope)})

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.kill(15)


async def wait_http(url: str, proc: Proc | None = None, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def read_config() -> dict[str, Any]:
    raw = sys.stdin.read()
    return json.loads(raw) if raw.strip() else {}


def emit_result(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
