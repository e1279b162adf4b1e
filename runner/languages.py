"""The languages the runner knows: entry file, compile and run commands, limits, Docker image.

A small table rather than code, so a deployment can add a language (or change a compiler
flag, or point one language at its own image) with a JSON file — ``CODESYNC_RUNNER_LANGUAGES``
— of the form::

    {"zig": {"file": "main.zig", "extensions": [".zig"], "run": ["./.codesync/main"],
             "compile": ["zig", "build-exe", "-femit-bin=.codesync/main", "{entry}"]},
     "c": {"file": "main.c", "compile": ["gcc", "-O2", "-o", ".codesync/main", "{sources}", "-lm"],
           "run": ["./.codesync/main"], "limits": {"memory_bytes": 536870912}}}

Entries in the file replace built-in ones of the same name; ``"aliases"`` adds other names.

**Projects.** A run gets a whole project (``dict[path, bytes]``) and an entry file; the
commands name them with placeholders, replaced per run:

- ``{entry}`` — the entry file (``pkg/main.py``); ``{entry_dir}`` — its folder (``./pkg``);
  ``{entry_base}`` — the entry without its extension (``pkg/main``); ``{main_class}`` — Java's
  ``package.Class`` of the entry file;
- ``{sources}`` (a whole argument) — every project file with one of the language's
  ``extensions``, sorted (C compiles every ``.c``, Java every ``.java``).

A path starting with ``-`` gets ``./`` in front so it is never taken for an option. The working directory
is the project root (``/work``); build output goes to ``.codesync/`` (reserved). A command
without placeholders (an older languages file) runs as written.

**Limits.** ``limits`` raises fields of the runner's per-run ``Limits`` for a language whose
toolchain needs more (JVM, rustc, go, tsc: memory, threads, wall clock); the rest keep the
runner's tight defaults. ``probe()`` asks the sandbox which toolchains it really has and drops
the languages it lacks (one log line), so the runner advertises only what can run.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath

from .image import SANDBOX_TOOLCHAINS
from .sandbox.base import BUILD_DIR, Limits, RunSpec
from .sandbox.project import ProjectError, check_project

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 256 * 1024  # the single-file form (``spec``); projects: sandbox/project.py
MB = 1024 * 1024

# Toolchains that start many threads and need more memory than an interpreter: the JVM (javac
# and the program), rustc (+ cc/ld), go build (compile + link, GOMAXPROCS threads each), tsc.
# Threads count against the pids limit, so they get more processes too.
TOOLCHAIN_LIMITS: dict[str, int | float] = {
    "memory_bytes": 512 * MB,
    "processes": 128,
    "wall_seconds": 20.0,
    "cpu_seconds": 10,
}
TSC = f"{SANDBOX_TOOLCHAINS}/typescript/node_modules/typescript/bin/tsc"
TYPE_ROOTS = f"{SANDBOX_TOOLCHAINS}/typescript/node_modules/@types"
# JVM flags for a small sandbox: explicit heap (under bubblewrap the JVM sees no cgroup and
# would size its heap from the host's memory), serial GC and one active CPU (few threads),
# C1 only (fast start), no perf-data file in /tmp, the class-data archive when present.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:ActiveProcessorCount=1", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
             "-Xshare:auto", "-XX:ReservedCodeCacheSize=64m", "-XX:MaxMetaspaceSize=128m",
             "-XX:CompressedClassSpaceSize=64m")

_LIMIT_FIELDS = {f.name for f in fields(Limits)}
_PACKAGE = re.compile(rb"^\s*package\s+([A-Za-z_$][\w$]*(?:\s*\.\s*[A-Za-z_$][\w$]*)*)\s*;", re.MULTILINE)


class LanguageError(ValueError):
    """Unknown language, a bad languages file, or a project this language cannot run."""


@dataclass(frozen=True)
class Language:
    name: str
    file: str  # the entry file of the single-file form
    run: list[str]
    compile: list[str] | None = None
    image: str | None = None  # None: the backend's default (CODESYNC_RUNNER_IMAGE)
    aliases: tuple[str, ...] = field(default_factory=tuple)
    extensions: tuple[str, ...] = ()  # source files: the entry's and ``{sources}``'s
    env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int | float] = field(default_factory=dict)  # raised over the runner's
    requires: tuple[str, ...] = ()  # more than the commands' first words (probe)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # added when the project lacks them

    # ------------------------------------------------------------------ run specs
    def spec(self, source: str | bytes, limits: Limits | None = None, image: str | None = None) -> RunSpec:
        """The single-file form: ``source`` as the language's default entry file."""
        data = source.encode() if isinstance(source, str) else source
        if len(data) > MAX_SOURCE_BYTES:
            raise LanguageError(f"source is larger than {MAX_SOURCE_BYTES} bytes")
        return self.project_spec({self.file: data}, self.file, limits, image)

    def project_spec(
        self,
        files: dict[str, bytes | str],
        entry: str,
        limits: Limits | None = None,
        image: str | None = None,
    ) -> RunSpec:
        """A whole project (relative paths, folders allowed) run from ``entry``."""
        try:
            checked = check_project(files, entry)
        except ProjectError as exc:
            raise LanguageError(str(exc)) from exc
        if self.extensions and not entry.endswith(self.extensions):
            raise LanguageError(
                f"the entry file {entry!r} is not a {self.name} file ({', '.join(self.extensions)})")
        for path, content in self.extra_files.items():
            checked.setdefault(path, content)
        values = self._placeholders(checked, entry)
        return RunSpec(
            files=checked,
            run=_expand(self.run, values),
            compile=_expand(self.compile, values) if self.compile else None,
            image=image or self.image,
            limits=self.limits_for(limits or Limits()),
            env=dict(self.env),
        )

    def limits_for(self, base: Limits) -> Limits:
        """``base`` with this language's fields raised to what its toolchain needs."""
        raised = {key: max(getattr(base, key), value) for key, value in self.limits.items()}
        return replace(base, **raised) if raised else base

    def _placeholders(self, files: dict[str, bytes], entry: str) -> dict[str, str | list[str]]:
        path = PurePosixPath(entry)
        parent = str(path.parent)
        values: dict[str, str | list[str]] = {
            "entry": _arg(entry),
            "entry_dir": "." if parent == "." else f"./{parent}",  # go build needs the ./
            "entry_base": str(path.with_suffix("")),
            "sources": [_arg(p) for p in sorted(files) if self.extensions and p.endswith(self.extensions)],
        }
        if entry.endswith(".java"):
            found = _PACKAGE.search(files[entry])
            package = re.sub(rb"\s", b"", found.group(1)).decode() if found else ""
            values["main_class"] = f"{package}.{path.stem}" if package else path.stem
        return values

    # ------------------------------------------------------------------ probing
    def commands(self) -> list[str]:
        """What a sandbox must have for this language: the commands' first words (not the
        program the compile step builds) and ``requires``."""
        needed = [argv[0] for argv in (self.compile, self.run) if argv and not argv[0].startswith((".", "{"))]
        return list(dict.fromkeys([*needed, *self.requires]))


def _arg(path: str) -> str:
    """A project path as a command argument: never mistaken for an option."""
    return f"./{path}" if path.startswith("-") else path


def _expand(argv: list[str], values: dict[str, str | list[str]]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if arg == "{sources}":
            out.extend(values["sources"])  # type: ignore[arg-type]
            continue
        if "{" in arg:
            for key, value in values.items():
                if isinstance(value, str):
                    arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


BUILTIN: tuple[Language, ...] = (
    Language(
        "python", "main.py", ["python3", "-u", "{entry}"], aliases=("py", "python3"), extensions=(".py",),
        # The project root on sys.path too (``import pkg.util`` from any entry); sys.path[0]
        # is the entry's folder, so siblings import as usual.
        env={"PYTHONPATH": "/work"},
    ),
    Language("javascript", "main.js", ["node", "{entry}"], aliases=("js", "node", "nodejs"),
             extensions=(".js", ".mjs", ".cjs")),
    Language("bash", "main.sh", ["bash", "{entry}"], aliases=("sh", "shell"), extensions=(".sh", ".bash")),
    Language(
        "c",
        "main.c",
        # stdbuf: stdout line-buffered and stdin unbuffered, so glibc flushes a prompt before
        # scanf reads — what a terminal gives (no pty here; docs/runner.md).
        ["stdbuf", "-i0", "-oL", f"./{BUILD_DIR}/main"],
        compile=["gcc", "-O1", "-std=c17", "-Wall", "-I.", "-o", f"{BUILD_DIR}/main", "{sources}", "-lm"],
        extensions=(".c",),
    ),
    Language(
        "cpp",
        "main.cpp",
        ["stdbuf", "-i0", "-oL", f"./{BUILD_DIR}/main"],
        compile=["g++", "-O1", "-std=c++17", "-Wall", "-I.", "-o", f"{BUILD_DIR}/main", "{sources}", "-lm"],
        aliases=("c++", "cxx", "cc"),
        extensions=(".cpp", ".cc", ".cxx", ".c++"),
    ),
    Language(
        "typescript",
        "main.ts",
        ["node", f"{BUILD_DIR}/ts/{{entry_base}}.js"],
        # Type-checked (strict), Node's types, only the ES library (no DOM: half the time),
        # library .d.ts files trusted (--skipLibCheck: a second off every compile).
        compile=["node", TSC, "--strict", "--skipLibCheck", "--noEmitOnError", "--target", "es2022",
                 "--lib", "es2022", "--module", "commonjs", "--moduleResolution", "node", "--esModuleInterop",
                 "--types", "node", "--typeRoots", TYPE_ROOTS, "--rootDir", ".", "--outDir", f"{BUILD_DIR}/ts",
                 "{entry}"],
        aliases=("ts",),
        extensions=(".ts",),
        limits=TOOLCHAIN_LIMITS,
        requires=(TSC,),
    ),
    Language(
        "go",
        "main.go",
        [f"./{BUILD_DIR}/main"],
        # The entry's folder is the main package (every .go file in it); a project without
        # go.mod gets ``module app`` (imports of its own packages: "app/util").
        compile=["go", "build", "-o", f"{BUILD_DIR}/main", "{entry_dir}"],
        aliases=("golang",),
        extensions=(".go",),
        env={"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOPROXY": "off", "GOTOOLCHAIN": "local",
             "GOCACHE": f"/work/{BUILD_DIR}/go-cache", "GOPATH": f"/work/{BUILD_DIR}/go"},
        limits=TOOLCHAIN_LIMITS,
        extra_files={"go.mod": b"module app\n\ngo 1.19\n"},
    ),
    Language(
        "rust",
        "main.rs",
        [f"./{BUILD_DIR}/main"],
        # ``mod util;`` finds util.rs next to the entry (rustc's own module lookup).
        compile=["rustc", "--edition", "2021", "-C", "debuginfo=0", "-o", f"{BUILD_DIR}/main", "{entry}"],
        aliases=("rs",),
        extensions=(".rs",),
        limits=TOOLCHAIN_LIMITS,
        requires=("cc",),  # rustc links with cc
    ),
    Language(
        "java",
        "Main.java",
        ["java", "-Xmx256m", "-Xss8m", *JVM_FLAGS, "-cp", f"{BUILD_DIR}/classes", "{main_class}"],
        compile=["javac", "-J-Xmx256m", *(f"-J{flag}" for flag in JVM_FLAGS), "-encoding", "UTF-8",
                 "-d", f"{BUILD_DIR}/classes", "{sources}"],
        extensions=(".java",),
        limits=TOOLCHAIN_LIMITS,
    ),
    Language(
        "ruby",
        "main.rb",
        # $stdout.sync: Ruby buffers stdout on a pipe (prompts would wait for the exit).
        # $0 is the entry's absolute path, as __FILE__ is, so ``if __FILE__ == $0`` holds.
        ["ruby", "-e", "$stdout.sync = true; $0 = File.expand_path(ARGV.shift); load $0", "{entry}"],
        aliases=("rb",),
        extensions=(".rb",),
    ),
)


class LanguageTable:
    def __init__(self, languages: tuple[Language, ...] | list[Language] = BUILTIN) -> None:
        self._by_name: dict[str, Language] = {}
        self.missing: dict[str, list[str]] = {}  # left out by probe(): name -> missing commands
        for lang in languages:
            self.add(lang)

    def add(self, lang: Language) -> None:
        # Drop aliases of a language being replaced so they do not point at the old entry.
        self.remove(lang.name)
        self._by_name[lang.name] = lang
        for alias in lang.aliases:
            self._by_name.setdefault(alias, lang)

    def remove(self, name: str) -> None:
        old = self._by_name.get(name)
        if old is not None:
            for key in [k for k, v in self._by_name.items() if v is old]:
                del self._by_name[key]

    def get(self, name: str) -> Language:
        lang = self._by_name.get((name or "").strip().lower())
        if lang is None:
            if name in self.missing:
                raise LanguageError(f"{name} is not installed in this runner's sandbox")
            raise LanguageError(f"unsupported language {name!r} (known: {', '.join(self.names)})")
        return lang

    @property
    def names(self) -> list[str]:
        return sorted({lang.name for lang in self._by_name.values()})

    @property
    def languages(self) -> list[Language]:
        return sorted({lang.name: lang for lang in self._by_name.values()}.values(), key=lambda lang: lang.name)

    async def probe(self, sandbox, limits: Limits | None = None, image: str | None = None) -> list[str]:
        """Keep only the languages whose toolchain the sandbox has (asked once, at start);
        log one line naming what was left out; return the names that remain. With
        ``limits``, also pre-start the sandbox for each distinct per-language limit set."""
        by_image: dict[str | None, list[Language]] = {}
        for lang in self.languages:
            by_image.setdefault(lang.image, []).append(lang)
        for lang_image, langs in by_image.items():
            wanted = sorted({command for lang in langs for command in lang.commands()})
            absent = await sandbox.probe(wanted, lang_image or image)
            for lang in langs:
                lacking = [command for command in lang.commands() if command in absent]
                if lacking:
                    self.missing[lang.name] = lacking
                    self.remove(lang.name)
        if self.missing:
            log.warning("%s sandbox lacks toolchains; not offered: %s", sandbox.name,
                        "; ".join(f"{name} (no {', '.join(cmds)})" for name, cmds in sorted(self.missing.items())))
        if limits is not None:
            seen = {limits}
            for lang in self.languages:
                raised = lang.limits_for(limits)
                if raised not in seen:
                    seen.add(raised)
                    await sandbox.prewarm(raised, lang.image or image)
        return self.names

    @classmethod
    def load(cls, path: Path | str | None = None) -> "LanguageTable":
        table = cls()
        if path:
            table.extend_from_file(Path(path))
        return table

    def extend_from_file(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LanguageError(f"cannot read languages file {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise LanguageError(f"{path}: expected an object of language name -> entry")
        for name, entry in raw.items():
            self.add(_parse(str(name), entry, path))


def _parse(name: str, entry: object, path: Path) -> Language:
    def argv(value: object, what: str) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            raise LanguageError(f"{path}: {name}.{what} must be a non-empty list of strings")
        return value

    def strings(value: object, what: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise LanguageError(f"{path}: {name}.{what} must be a list of strings")
        return value

    if not isinstance(entry, dict):
        raise LanguageError(f"{path}: {name} must be an object")
    file = entry.get("file")
    if not isinstance(file, str) or not file or "/" in file:
        raise LanguageError(f"{path}: {name}.file must be a plain file name")
    aliases = strings(entry.get("aliases", []), "aliases")
    image = entry.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise LanguageError(f"{path}: {name}.image must be a string")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) and isinstance(v, str)
            for k, v in env.items()):
        raise LanguageError(f"{path}: {name}.env must map variable names to strings")
    limits = entry.get("limits", {})
    if not isinstance(limits, dict) or not all(
            k in _LIMIT_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for k, v in limits.items()):
        raise LanguageError(f"{path}: {name}.limits must map Limits fields ({', '.join(sorted(_LIMIT_FIELDS))}) "
                            "to positive numbers")
    return Language(
        name=name.lower(),
        file=file,
        run=argv(entry.get("run"), "run"),
        compile=argv(entry["compile"], "compile") if entry.get("compile") is not None else None,
        image=image,
        aliases=tuple(a.lower() for a in aliases),
        extensions=tuple(strings(entry.get("extensions", []), "extensions")),
        env=dict(env),
        limits=dict(limits),
        requires=tuple(strings(entry.get("requires", []), "requires")),
    )
