"""The direction of dependencies (README, "How it fits together"; ``codesync/__init__.py``).

Read from the source with ``ast`` — every ``import`` anywhere in a module counts, including
the ones inside functions — so a shortcut that would make a package depend on one above it
fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers.components import ROOT

# Test helper modules that moved into tests/helpers/ (docs/testing.md); importing one is an error.
REMOVED = {
    "tests.support", "tests.stack", "tests.netns", "tests.memory_peers", "tests.dockerd", "tests.smtp",
    "tests.compose_stack", "tests.fuzzing", "tests.csp_driver", "bench.traces",
}
# pytest loads conftest.py itself; importing it as a module runs it twice (its helpers are in tests/helpers/).
NOT_IMPORTED = REMOVED | {"tests.conftest"}

PACKAGES = ("codesync", "signaling", "peer", "runner")
PLATFORM = {
    "codesync.settings", "codesync.db", "codesync.models", "codesync.logs", "codesync.opsserver", "codesync.backends",
}
TOP = {"codesync.cli", "codesync.supervisor", "codesync.__main__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (resolved to the longest known module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def resolve(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            for alias in node.names:
                resolve(f"{stem}.{alias.name}")
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(module: str) -> str:
    if module in TOP:
        return "top"
    if module.startswith("codesync"):
        return "platform"
    if module.startswith("peer.persistence") or module == "peer.service":
        return "service"  # the persistence peer, and the lifecycle the service peers share
    if module.startswith("peer"):
        return "library"
    return "service"  # signaling, runner


def test_no_package_imports_one_above_it():
    rank = {"platform": 0, "library": 1, "service": 2, "top": 3}
    wrong = []
    for module, imports in _graph().items():
        for target in imports:
            if rank[_layer(target)] > rank[_layer(module)]:
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert wrong == [], "\n".join(sorted(wrong))


def test_services_do_not_import_each_other():
    def service(module: str) -> str | None:
        if _layer(module) != "service":
            return None
        if module.startswith("peer"):
            return "persistence"  # peer.service is shared by both service peers: see below
        return module.split(".")[0]

    wrong = []
    for module, imports in _graph().items():
        mine = service(module)
        for target in imports:
            theirs = service(target)
            if module == "peer.service" or target == "peer.service":
                continue  # the shared service lifecycle (persistence and runner build on it)
            if mine and theirs and mine != theirs:
                wrong.append(f"{module} imports {target}")
    assert wrong == [], "\n".join(sorted(wrong))


def test_the_platform_imports_no_other_project_package():
    wrong = [
        f"{module} imports {target}"
        for module, imports in _graph().items()
        if module in PLATFORM
        for target in imports
        if target not in PLATFORM
    ]
    assert wrong == [], "\n".join(sorted(wrong))


def test_no_two_files_import_each_other():
    """No import cycle between modules (of any length)."""
    graph = _graph()
    # Packages' __init__ re-export their modules; a module importing its own package's
    # __init__ is the normal "from . import x", not a cycle between two files of ours.
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph.items():
        for target in imports:
            if module.startswith(target + "."):
                continue
            edges[module].add(target)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "\n".join(cycles)


# ----------------------------------------------------------------------------- tests and bench
def _imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` counts as a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _test_side_files() -> dict[str, set[str]]:
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    return {str(f.relative_to(ROOT)): _imported_names(f) for f in files if "node_modules" not in f.parts}


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")


def test_bench_and_helpers_never_import_a_test_module():
    """Benchmarks and helpers build on tests/helpers/, never on a test_*.py file (nor the other way
    round: a helper importing bench would tie every test to the benchmarks)."""
    wrong = []
    for path, names in _test_side_files().items():
        if path.startswith(("bench/", "tests/helpers/")):
            wrong += [f"{path} imports {n}" for n in sorted(names) if _is_test_module(n)]
        if path.startswith("tests/helpers/"):
            wrong += [f"{path} imports {n}" for n in sorted(names) if n == "bench" or n.startswith("bench.")]
    assert wrong == [], "\n".join(wrong)


def test_test_modules_share_code_through_helpers_only():
    """A test module imports no other test module: what two of them share lives in tests/helpers/."""
    wrong = [
        f"{path} imports {n}"
        for path, names in _test_side_files().items()
        if path.startswith("tests/")
        for n in sorted(names)
        if _is_test_module(n) and not n.startswith(_module_of(path))
    ]
    assert wrong == [], "\n".join(wrong)


def _module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def test_nothing_imports_the_removed_helper_modules():
    every = {**_test_side_files(), **{str(p.relative_to(ROOT)): _imported_names(p) for p in _modules().values()}}
    wrong = [f"{path} imports {n}" for path, names in every.items() for n in sorted(names) if n in NOT_IMPORTED]
    for old in REMOVED:
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} is back: its code lives in tests/helpers/"
    assert wrong == [], "\n".join(wrong)
