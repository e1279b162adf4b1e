"""One way to choose a backend (codesync/backends.py): a registry per concern, the settings pick,
callers only see the interface."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from codesync.backends import Backends, shared_or
from codesync.settings import Settings
from tests.helpers.components import ROOT


def settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path, secret_key="k" * 48, **kw)


def test_a_registry_builds_what_the_settings_choose(tmp_path) -> None:
    made: list[tuple[str, tuple]] = []
    things: Backends[str] = Backends("thing", shared_or("local"))

    @things.register("local")
    def _local(s: Settings, *args) -> str:
        made.append(("local", args))
        return "L"

    @things.register("redis")
    def _redis(s: Settings, *args) -> str:
        made.append(("redis", args))
        return "R"

    assert things.names == ["local", "redis"]
    assert things.create(settings(tmp_path), 1) == "L"
    assert things.create(settings(tmp_path, redis_url="redis://127.0.0.1:6379/0"), 2) == "R"
    assert made == [("local", (1,)), ("redis", (2,))]
    with pytest.raises(ValueError, match="registered twice"):
        things.register("local")(_local)


def test_an_unknown_backend_is_a_clear_error(tmp_path) -> None:
    only: Backends[str] = Backends("sandbox", lambda s: "nonesuch")
    only.register("bubblewrap")(lambda s: "b")
    with pytest.raises(ValueError, match="no sandbox backend 'nonesuch'; known: bubblewrap"):
        only.create(settings(tmp_path))


def test_every_concern_has_its_registry_and_rule(tmp_path) -> None:
    from peer.persistence.lease import LEASE_BACKENDS as LEASES
    from runner.service import SANDBOXES
    from signaling.oauth import FLOW_STORES
    from signaling.ratelimit import LIMITERS
    from signaling.ws.server import HUBS

    local, shared = settings(tmp_path), settings(tmp_path, redis_url="redis://127.0.0.1:6379/0")
    assert [r.chosen(local) for r in (HUBS, LEASES, LIMITERS, FLOW_STORES)] == ["memory", "database", "memory", "memory"]
    assert [r.chosen(shared) for r in (HUBS, LEASES, LIMITERS, FLOW_STORES)] == ["redis"] * 4
    assert SANDBOXES.chosen(local) == "bubblewrap"
    assert SANDBOXES.chosen(settings(tmp_path, sandbox="docker")) == "docker"


def test_the_bubblewrap_backend_is_built_from_the_settings(tmp_path) -> None:
    from runner.sandbox.base import Sandbox
    from runner.service import make_sandbox

    box = make_sandbox(settings(tmp_path, runner_require_cgroups=False))
    assert isinstance(box, Sandbox) and box.name == "bubblewrap"


def _sources(*packages: str):
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            yield path.relative_to(ROOT), path.read_text(encoding="utf-8")


def test_callers_never_look_behind_the_sandbox_interface() -> None:
    """Outside runner/sandbox/, nothing tests a backend's name or class or digs into it."""
    wrong = []
    for rel, text in _sources("runner", "signaling", "peer", "codesync"):
        if rel.parts[:2] == ("runner", "sandbox"):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"getattr\(\s*(self\.)?sandbox|sandbox\.name\s*[=!]=|\.bwrap\b|isinstance\([^)]*(Docker|Bubblewrap)Sandbox", line):
                wrong.append(f"{rel}:{n}: {line.strip()}")
    assert wrong == [], "\n".join(wrong)


def test_only_the_registries_read_which_backend_is_configured() -> None:
    """``settings.sandbox`` is read by the sandbox registry alone; the Redis-or-not choice of a
    backend by the registries (other code may still use Redis when it is configured)."""
    readers = []
    for rel, text in _sources("runner", "signaling", "peer", "codesync"):
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr == "sandbox" and getattr(node.value, "id", "") == "settings":
                readers.append(str(rel))
    assert readers == ["runner/service.py"]
    service = (ROOT / "runner" / "service.py").read_text()
    assert service.count("settings.sandbox") == 1 and 'Backends("sandbox", lambda settings: settings.sandbox)' in service
