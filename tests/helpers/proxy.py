"""The deployment's reverse proxy (deploy/nginx.conf) run by a real nginx on loopback.

The committed configuration is rewritten only where the test machine differs from compose
(:func:`render_nginx_conf`: loopback listener and upstreams, files under the test's
directory); :func:`nginx_proxy` runs it in front of the given signaling nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.components import ROOT, free_port, require
from tests.helpers.processes import stop_process
from tests.helpers.wait import wait_for

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


@dataclass
class Proxy:
    url: str
    access_log: Path
    proc: subprocess.Popen

    @property
    def ws_base(self) -> str:
        return self.url.replace("http://", "ws://")

    def upstreams_used(self) -> list[str]:
        return re.findall(r'"upstream":"([^"]*)"', self.access_log.read_text() if self.access_log.exists() else "")


def render_nginx_conf(text: str, workdir: Path, port: int, upstreams: list[str]) -> str:
    """deploy/nginx.conf with loopback addresses and private paths; fails if the file drifted."""

    def replace(pattern: str, repl: str, count: int = 1) -> None:
        nonlocal text
        text, n = re.subn(pattern, repl, text, flags=re.M)
        assert n == count, f"deploy/nginx.conf: expected {count} match(es) of {pattern!r}, found {n}"

    servers = re.findall(r"^\s*server signaling-\d+:8000[^;]*;\n", text, flags=re.M)
    assert len(servers) >= 2, "deploy/nginx.conf should balance over at least two signaling nodes"
    options = re.search(r"server signaling-\d+:8000([^;]*);", servers[0]).group(1)  # type: ignore[union-attr]
    lines = "".join(f"        server {u}{options};\n" for u in upstreams)
    text = text.replace(servers[0], lines, 1)
    for extra in servers[1:]:
        text = text.replace(extra, "", 1)
    replace(r"^worker_processes auto;", "worker_processes 1;")
    replace(r"^\s*listen 80;", f"        listen 127.0.0.1:{port};")
    replace(r"access_log /dev/stdout codesync_json;", f"access_log {workdir / 'access.log'} codesync_json;")
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    replace(r"^http \{\n", "http {\n" + temp)
    return text


@asynccontextmanager
async def nginx_proxy(workdir: Path, upstreams: list[str]) -> AsyncIterator[Proxy]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    require("nginx", binary is not None, "apt-get install nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), workdir, port, upstreams))
    globals_ = f"daemon off; pid {workdir / 'nginx.pid'}; error_log {workdir / 'error.log'} notice;"
    if os.geteuid() == 0:
        globals_ += " user root;"  # workers must write the test's private temp dirs
    proc = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(conf), "-g", globals_],  # type: ignore[list-item]
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "stderr.log", "wb"),
    )
    proxy = Proxy(f"http://127.0.0.1:{port}", workdir / "access.log", proc)
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def up() -> bool:
                assert proc.poll() is None, (workdir / "stderr.log").read_text() + read_text(workdir / "error.log")
                try:
                    return (await client.get(f"{proxy.url}/proxy-healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(up, timeout=15, what="nginx to listen")
        yield proxy
    finally:
        stop_process(proc)


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
