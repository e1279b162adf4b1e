"""The languages the runner knows: file name, compile and run commands, Docker image.

A small table rather than code, so a deployment can add a language (or change a compiler
flag, or point one language at its own image) with a JSON file — ``CODESYNC_RUNNER_LANGUAGES``
— of the form::

    {"ruby": {"file": "main.rb", "run": ["ruby", "main.rb"], "image": "my-ruby:3"},
     "c": {"file": "main.c", "compile": ["gcc", "-O2", "-o", "main", "main.c", "-lm"], "run": ["./main"]}}

Entries in the file replace built-in ones of the same name; ``"aliases"`` adds other names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox.base import Limits, RunSpec

MAX_SOURCE_BYTES = 256 * 1024


class LanguageError(ValueError):
    """Unknown language, or a bad languages file (message says which)."""


@dataclass(frozen=True)
class Language:
    name: str
    file: str
    run: list[str]
    compile: list[str] | None = None
    image: str | None = None  # None: the backend's default (CODESYNC_RUNNER_IMAGE)
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def spec(self, source: str | bytes, limits: Limits | None = None, image: str | None = None) -> RunSpec:
        data = source.encode() if isinstance(source, str) else source
        if len(data) > MAX_SOURCE_BYTES:
            raise LanguageError(f"source is larger than {MAX_SOURCE_BYTES} bytes")
        return RunSpec(
            files={self.file: data},
            run=list(self.run),
            compile=list(self.compile) if self.compile else None,
            image=image or self.image,
            limits=limits or Limits(),
        )


BUILTIN: tuple[Language, ...] = (
    Language("python", "main.py", ["python3", "-u", "main.py"], aliases=("py", "python3")),
    Language("javascript", "main.js", ["node", "main.js"], aliases=("js", "node", "nodejs")),
    Language("bash", "main.sh", ["bash", "main.sh"], aliases=("sh", "shell")),
    Language(
        "c",
        "main.c",
        ["./main"],
        compile=["gcc", "-O1", "-std=c17", "-Wall", "-o", "main", "main.c", "-lm"],
    ),
)


class LanguageTable:
    def __init__(self, languages: tuple[Language, ...] | list[Language] = BUILTIN) -> None:
        self._by_name: dict[str, Language] = {}
        for lang in languages:
            self.add(lang)

    def add(self, lang: Language) -> None:
        # Drop aliases of a language being replaced so they do not point at the old entry.
        old = self._by_name.get(lang.name)
        if old is not None:
            for key in [k for k, v in self._by_name.items() if v is old]:
                del self._by_name[key]
        self._by_name[lang.name] = lang
        for alias in lang.aliases:
            self._by_name.setdefault(alias, lang)

    def get(self, name: str) -> Language:
        lang = self._by_name.get((name or "").strip().lower())
        if lang is None:
            raise LanguageError(f"unsupported language {name!r} (known: {', '.join(self.names)})")
        return lang

    @property
    def names(self) -> list[str]:
        return sorted({lang.name for lang in self._by_name.values()})

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

    if not isinstance(entry, dict):
        raise LanguageError(f"{path}: {name} must be an object")
    file = entry.get("file")
    if not isinstance(file, str) or not file or "/" in file:
        raise LanguageError(f"{path}: {name}.file must be a plain file name")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise LanguageError(f"{path}: {name}.aliases must be a list of strings")
    image = entry.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise LanguageError(f"{path}: {name}.image must be a string")
    return Language(
        name=name.lower(),
        file=file,
        run=argv(entry.get("run"), "run"),
        compile=argv(entry["compile"], "compile") if entry.get("compile") is not None else None,
        image=image,
        aliases=tuple(a.lower() for a in aliases),
    )
