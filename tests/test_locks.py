"""The hashed lock files (``make lock``) cover pyproject.toml's dependencies and agree with each
other; the npm lock files agree with their package.json. Nothing here reaches a registry."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.helpers.components import ROOT

NPM_PROJECTS = ["web", "tests/js", "tests/oidc"]


def _locked(name: str) -> dict[str, str]:
    """package -> version, checking every entry carries at least one sha256 hash."""
    text = (ROOT / name).read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.M)
    assert len(entries) == len(pins), f"{name}: an entry without a hash"
    return {_norm(n): v for n, v, _ in entries}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}


def test_the_locks_cover_pyproject_and_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    run, full = _locked("requirements-run.lock"), _locked("requirements.lock")
    assert _requirement_names(project["dependencies"]) <= set(run), "make lock: pyproject has a dependency the lock lacks"
    assert _requirement_names(project["optional-dependencies"]["test"]) <= set(full), "make lock"
    differ = {n: (v, full.get(n)) for n, v in run.items() if full.get(n) != v}
    assert differ == {}, f"requirements-run.lock and requirements.lock disagree (make lock): {differ}"


@pytest.mark.parametrize("project", NPM_PROJECTS)
def test_npm_locks_are_in_step_with_package_json(project: str) -> None:
    package = json.loads((ROOT / project / "package.json").read_text())
    lock = json.loads((ROOT / project / "package-lock.json").read_text())
    root = lock["packages"][""]
    for field in ("dependencies", "devDependencies"):
        assert root.get(field, {}) == package.get(field, {}), f"{project}: npm install to refresh package-lock.json"
    for name in {**package.get("dependencies", {}), **package.get("devDependencies", {})}:
        assert f"node_modules/{name}" in lock["packages"], f"{project}: {name} is not locked"
