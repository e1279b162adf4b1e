"""The private-network-namespace testbed for browser tests (DESIGN.md, "The WebRTC testbed").

Chromium never runs in the host network namespace. A browser test starts ONE driver script
(``tests/browser/*.py``) inside ``unshare --net``; the driver calls :func:`setup_interfaces`
(``lo`` up, ``rtc0`` dummy/ifb with 10.99.0.1/24, default route through it), refuses to go on
if any other interface is visible, starts the whole stack bound to 10.99.0.1
(:func:`namespace_stack`: tests/helpers/stack.py's ``Stack`` on ``NS_ADDR`` — signaling,
persistence peer, runner, with ``CODESYNC_ICE_HOSTS=10.99.0.1``),
drives Chromium with Playwright and prints its results as one JSON line prefixed ``RESULT ``.
The pytest side (:func:`run_driver`) only spawns the namespace and parses that line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.components import ROOT
from tests.helpers.stack import Stack

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


def step(res: dict[str, Any], name: str) -> dict[str, Any]:
    """One named step of a browser driver's result (``Steps`` in tests/browser/web_e2e.py): its
    details when it passed; otherwise the test fails with its error, the page console and the
    services' log tails."""
    import pytest

    if "driver" in res["steps"]:
        pytest.fail(f"driver crashed: {res['steps']['driver']}")
    got = res["steps"].get(name)
    assert got is not None, f"step {name} did not run: {sorted(res['steps'])}"
    assert got["ok"], (
        f"{name}: {got.get('error')}\n{got.get('trace', '')}\nconsole: {res.get('console')}\n"
        f"service logs: { {k: v[-1500:] for k, v in res.get('logs', {}).items()} }"
    )
    return got


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


def namespace_stack(workdir: Path, **kw: Any) -> Stack:
    """The stack a browser test drives: every process bound to the namespace's address."""
    return Stack(workdir, host=NS_ADDR, **kw)


def read_config() -> dict[str, Any]:
    raw = sys.stdin.read()
    return json.loads(raw) if raw.strip() else {}


def emit_result(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
