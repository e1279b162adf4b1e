"""The room's file tree (main document, schema v2; docs/workspace.md) — read and written in Python.

The same rules are in ``web/src/workspace.js``; ``tests/test_workspace_schema.py`` checks that
both resolve the same trees to the same paths. Pure functions on a pycrdt ``Doc`` (no I/O):
the runner builds a run's project from its own copy of the tree, the persistence peer migrates
v1 rooms, tests and benchmarks make trees.

The document (schema v2):

- ``files``: Y.Map ``id -> Y.Map {name, parent, kind, language?, text}``. ``kind`` is ``file`` or
  ``folder``; ``parent`` is ``""`` (top level) or a folder's id; ``language`` overrides the one
  the extension gives; ``text`` names the root Y.Text holding a file's content — always
  ``"source"`` for the entry with id ``source`` and ``"file:<id>"`` for every other file
  (readers derive it from the id and ignore any other value, so no two files share a text
  and no file can point at ``meta`` or ``files``).
- ``source``: the v1 text, now the content of the file with id ``source`` (a migrated v1 room's
  code, or a new room's first file) — a stock y-webrtc client binding ``getText('source')``
  edits that file.
- ``meta``: ``schema: 2``, ``language`` (the room's default, v1), ``title``, ``entry`` (the id
  of the file Run runs; absent = the file in view of whoever presses Run).

Reading is deterministic: every peer that holds the same document shows the same tree.
Entries with a bad id or kind are ignored; a bad name reads as ``unnamed``; a parent that is
missing, not a folder or deleted puts the entry at the top level (orphans); a parent cycle
(two concurrent moves) is cut at its entry with the smallest id, which goes to the top level;
names that clash in one folder keep the bare name for the smallest id and give the others
``name (2).ext``, ``name (3).ext``…
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pycrdt

SCHEMA = 2
SOURCE_ID = "source"  # the first file: the v1 ``source`` text
FILES = "files"
META = "meta"

# The first file's entry as one fixed Yjs update (client id 0): ``files.source = {kind: "file",
# parent: "", text: "source"}``. Every peer that needs the first file applies exactly these
# items, so two peers creating it at once create the *same* items and nothing conflicts;
# applied again (or after the file was deleted) it changes nothing. Its name is set by a
# normal edit afterwards (``main`` + the room language's extension). Made by Yjs and by
# pycrdt byte for byte (tests/test_workspace_schema.py); the same constant is in workspace.js.
INIT_UPDATE = base64.b64decode(
    "AQQAACcBBWZpbGVzBnNvdXJjZQEoAAAABGtpbmQBdwRmaWxlKAAAAAZwYXJlbnQBdwAoAAAABHRleHQBdwZzb3VyY2UA"
)


@dataclass(frozen=True)
class Limits:
    """What a room's tree may hold. The web client refuses edits beyond them with a message
    (web/src/workspace.js repeats them: tests/test_web_workspace_units.py compares); the runner
    refuses a run beyond them (runner/sandbox/project.py reads these, and the name rules below)."""

    files: int = 500
    folders: int = 500
    file_bytes: int = 2 * 1024 * 1024
    total_bytes: int = 8 * 1024 * 1024
    depth: int = 16  # folders in a path, the file included
    name_bytes: int = 100
    path_bytes: int = 240


LIMITS = Limits()

# Extension -> language id (the runner's names, runner/languages.py); anything else is plain text.
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".ts": "typescript", ".sh": "bash", ".bash": "bash", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".go": "go", ".rs": "rust", ".java": "java", ".rb": "ruby",
}
LANGUAGE_EXTENSION: dict[str, str] = {
    "python": ".py", "javascript": ".js", "typescript": ".ts", "bash": ".sh", "c": ".c", "cpp": ".cpp",
    "go": ".go", "rust": ".rs", "java": ".java", "ruby": ".rb",
}
PLAINTEXT = "plaintext"
KNOWN_LANGUAGES = frozenset([*LANGUAGE_EXTENSION, PLAINTEXT])

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Names no file may have, in a room or in a run (runner/sandbox/project.py uses them too).
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
DEVICE_NAME = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)(\..*)?$", re.IGNORECASE)
KINDS = ("file", "folder")
UNNAMED = "unnamed"


class WorkspaceError(ValueError):
    """A tree operation or a run's project that cannot be done; the message says why."""


# ------------------------------------------------------------------------------ names
def name_problem(name: object, limits: Limits = LIMITS) -> str | None:
    """Why ``name`` cannot be a file or folder name, or None. The runner's path rules
    (runner/sandbox/project.py) for one part, so every tree can run and unpack anywhere."""
    if not isinstance(name, str) or not name:
        return "a name cannot be empty"
    if name in (".", ".."):
        return "'.' and '..' are not names"
    if "/" in name or "\\" in name:
        return "a name cannot contain / or \\ (make folders instead)"
    if CONTROL_CHARS.search(name):
        return "a name cannot contain control characters"
    if len(name.encode("utf-8", errors="replace")) > limits.name_bytes:
        return f"a name is at most {limits.name_bytes} bytes"
    if DEVICE_NAME.match(name) or name.endswith((" ", ".")):
        return "reserved name (a Windows device name, or ending in a space or dot)"
    if name == ".codesync":
        return ".codesync is reserved for the runner's build output"
    return None


def suffixed(name: str, n: int) -> str:
    """``main.py`` -> ``main (2).py``; ``Makefile`` -> ``Makefile (2)``; ``.env`` -> ``.env (2)``."""
    dot = name.rfind(".")
    if dot > 0:
        return f"{name[:dot]} ({n}){name[dot:]}"
    return f"{name} ({n})"


def language_of(name: str, override: object = None) -> str:
    """A file's language: a known ``override``, else from the extension, else plain text."""
    if isinstance(override, str) and override in KNOWN_LANGUAGES:
        return override
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:].lower(), PLAINTEXT) if dot > 0 else PLAINTEXT


def valid_entry_id(entry_id: str) -> bool:
    """The shape every entry id of ``files`` has (what the tree accepts)."""
    return bool(_ID.fullmatch(entry_id))


def text_name(entry_id: str) -> str:
    """The root Y.Text holding a file's content (derived from the id; see the module doc)."""
    return "source" if entry_id == SOURCE_ID else f"file:{entry_id}"


def new_id() -> str:
    """Time-ordered (base36 ms, so an older entry usually keeps a clashing name) + random."""
    stamp = _base36(int(time.time() * 1000)).rjust(9, "0")
    return stamp + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


# ------------------------------------------------------------------------------ resolving
@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # "file" | "folder"
    name: str  # as shown: cleaned, and suffixed when it clashes
    parent: str  # resolved: "" or a folder id
    path: str
    language: str  # files: the effective language; folders: ""
    text: str  # files: the root Y.Text name; folders: ""
    stored_name: object = None  # what the document says (may differ from ``name``)
    override: str | None = None  # the stored language override, when valid


def resolve(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Entry]:
    """Resolve raw entries (``id -> {name, parent, kind, language}``) into the tree every peer
    shows. Deterministic: depends only on ``raw``, never on iteration order."""
    valid: dict[str, Mapping[str, Any]] = {}
    for entry_id, fields in raw.items():
        if isinstance(entry_id, str) and _ID.match(entry_id) and isinstance(fields, Mapping) \
                and fields.get("kind") in KINDS:
            valid[entry_id] = fields
    ids = sorted(valid)
    parent: dict[str, str] = {}
    for entry_id in ids:
        p = valid[entry_id].get("parent")
        ok = isinstance(p, str) and p != entry_id and p in valid and valid[p].get("kind") == "folder"
        parent[entry_id] = p if ok else ""  # type: ignore[assignment]
    # Cycles (concurrent moves): cut each at its smallest id, which goes to the top level.
    done: set[str] = set()
    for entry_id in ids:
        path: list[str] = []
        on_path: set[str] = set()
        cur = entry_id
        while cur and cur not in done:
            if cur in on_path:
                cycle = path[path.index(cur):]
                parent[min(cycle)] = ""
                break
            on_path.add(cur)
            path.append(cur)
            cur = parent[cur]
        done.update(path)
    # Names, clashes resolved per folder: the smallest id keeps the bare name.
    children: dict[str, list[str]] = {}
    for entry_id in ids:
        children.setdefault(parent[entry_id], []).append(entry_id)
    shown: dict[str, str] = {}
    for siblings in children.values():
        wanted: dict[str, str] = {}
        for entry_id in siblings:
            stored = valid[entry_id].get("name")
            wanted[entry_id] = stored if isinstance(stored, str) and name_problem(stored) is None else UNNAMED
        taken = set(wanted.values())
        first: dict[str, str] = {}
        for entry_id in siblings:
            first.setdefault(wanted[entry_id], entry_id)
        for entry_id in siblings:
            name = wanted[entry_id]
            if first[name] == entry_id:
                shown[entry_id] = name
                continue
            n = 2
            while suffixed(name, n) in taken:
                n += 1
            shown[entry_id] = suffixed(name, n)
            taken.add(shown[entry_id])
    out: dict[str, Entry] = {}
    paths: dict[str, str] = {}

    def path_of(entry_id: str) -> str:
        chain = []  # iterative: a malicious editor may nest a thousand folders
        cur = entry_id
        while cur and cur not in paths:
            chain.append(cur)
            cur = parent[cur]
        for i in reversed(chain):
            p = parent[i]
            paths[i] = f"{paths[p]}/{shown[i]}" if p else shown[i]
        return paths[entry_id]

    for entry_id in ids:
        fields = valid[entry_id]
        kind = fields["kind"]
        override = fields.get("language")
        override = override if isinstance(override, str) and override in KNOWN_LANGUAGES else None
        out[entry_id] = Entry(
            id=entry_id, kind=kind, name=shown[entry_id], parent=parent[entry_id], path=path_of(entry_id),
            language=language_of(shown[entry_id], override) if kind == "file" else "",
            text=text_name(entry_id) if kind == "file" else "",
            stored_name=fields.get("name"), override=override if kind == "file" else None,
        )
    return out


def raw_entries(doc: pycrdt.Doc) -> dict[str, dict[str, Any]]:
    """The ``files`` map as plain dicts (Y.Map values, or plain objects a stock client wrote)."""
    out: dict[str, dict[str, Any]] = {}
    files = _files(doc)
    if files is None:
        return out
    for key in list(files.keys()):
        value = files.get(key)
        if isinstance(value, pycrdt.Map):
            out[key] = {k: value.get(k) for k in ("name", "parent", "kind", "language", "text")}
        elif isinstance(value, dict):
            out[key] = dict(value)
    return out


def tree(doc: pycrdt.Doc) -> dict[str, Entry]:
    return resolve(raw_entries(doc))


def is_v2(doc: pycrdt.Doc) -> bool:
    """Does the document have a file tree (any entry, even an invalid one)?"""
    files = _files(doc)
    return files is not None and len(files) > 0


def _files(doc: pycrdt.Doc) -> pycrdt.Map | None:
    try:
        return doc.get(FILES, type=pycrdt.Map)
    except Exception:  # noqa: BLE001 - a root of another type under that name: no tree
        return None


def file_text(doc: pycrdt.Doc, entry: Entry) -> str:
    try:
        return str(doc.get(entry.text, type=pycrdt.Text))
    except Exception:  # noqa: BLE001 - a root of another type: reads as empty
        return ""


# ------------------------------------------------------------------------------ runs
def project(doc: pycrdt.Doc, entry: str | None = None, entry_path: str | None = None,
            limits: Limits = LIMITS) -> tuple[dict[str, bytes], str]:
    """The files of the tree (``path -> UTF-8 bytes``) and the entry file's path, as they are
    in ``doc`` now. ``entry`` is a file id (preferred); ``entry_path`` a path (used when no id is
    given). Raises WorkspaceError naming what is wrong (no such file, over a limit)."""
    entries = tree(doc)
    target: Entry | None = None
    if entry is not None:
        target = entries.get(entry) if isinstance(entry, str) else None
        if target is None or target.kind != "file":
            raise WorkspaceError("the entry file is not in the room's files (deleted or renamed meanwhile?)")
    elif entry_path is not None:
        target = next((e for e in entries.values() if e.kind == "file" and e.path == entry_path), None)
        if target is None:
            raise WorkspaceError(f"there is no file {str(entry_path)[:80]!r} in the room")
    else:
        raise WorkspaceError("no entry file given")
    files = [e for e in entries.values() if e.kind == "file"]
    if len(files) > limits.files:
        raise WorkspaceError(f"the room has {len(files)} files; at most {limits.files} can run")
    out: dict[str, bytes] = {}
    total = 0
    for e in files:
        data = file_text(doc, e).encode("utf-8", errors="replace")
        if len(data) > limits.file_bytes:
            raise WorkspaceError(f"{e.path!r} is larger than {limits.file_bytes // 1024} KiB")
        total += len(data)
        if total > limits.total_bytes:
            raise WorkspaceError(f"the room's files are larger than {limits.total_bytes // (1024 * 1024)} MiB")
        out[e.path] = data
    return out, target.path


# ------------------------------------------------------------------------------ writing
def ensure_first_file(doc: pycrdt.Doc, language: str = "python") -> None:
    """Apply the fixed first-file update and, if the first file is there without a name, name it
    ``main`` + the language's extension. Idempotent; a deleted first file stays deleted."""
    doc.apply_update(INIT_UPDATE)
    files = _files(doc)
    if files is None:
        return
    first = files.get(SOURCE_ID)
    if isinstance(first, pycrdt.Map) and not isinstance(first.get("name"), str):
        with doc.transaction():
            first["name"] = "main" + LANGUAGE_EXTENSION.get(language, ".txt")


def create(doc: pycrdt.Doc, kind: str, name: str, parent: str = "", content: str = "",
           language: str | None = None, entry_id: str | None = None) -> str:
    """Add a file or folder (one transaction). Checks the name and the folder; returns the id."""
    if kind not in KINDS:
        raise WorkspaceError(f"kind must be one of {KINDS}")
    problem = name_problem(name)
    if problem:
        raise WorkspaceError(problem)
    entries = tree(doc)
    if parent and (parent not in entries or entries[parent].kind != "folder"):
        raise WorkspaceError("no such folder")
    if any(e.parent == parent and e.name == name for e in entries.values()):
        raise WorkspaceError(f"{name!r} already exists there")
    entry_id = entry_id or new_id()
    files = doc.get(FILES, type=pycrdt.Map)
    with doc.transaction():
        fields: dict[str, Any] = {"name": name, "parent": parent, "kind": kind}
        if kind == "file":
            fields["text"] = text_name(entry_id)
            if language:
                fields["language"] = language
        files[entry_id] = pycrdt.Map(fields)
        if kind == "file" and content:
            doc.get(text_name(entry_id), type=pycrdt.Text).insert(0, content)
    return entry_id


def rename(doc: pycrdt.Doc, entry_id: str, name: str) -> None:
    problem = name_problem(name)
    if problem:
        raise WorkspaceError(problem)
    _entry_map(doc, entry_id)["name"] = name


def move(doc: pycrdt.Doc, entry_id: str, parent: str) -> None:
    """Move under ``parent`` ("" = top level); refuses a move into itself or its own subtree
    (as this peer sees it; concurrent moves can still make a cycle, which readers cut)."""
    entries = tree(doc)
    if parent:
        if parent not in entries or entries[parent].kind != "folder":
            raise WorkspaceError("no such folder")
        cur = parent
        while cur:
            if cur == entry_id:
                raise WorkspaceError("a folder cannot move into itself")
            cur = entries[cur].parent
    _entry_map(doc, entry_id)["parent"] = parent


def delete(doc: pycrdt.Doc, entry_id: str) -> list[str]:
    """Delete an entry and everything under it (as this peer sees the tree), clearing the
    files' texts, in one transaction. Returns the ids deleted."""
    entries = tree(doc)
    if entry_id not in entries:
        raise WorkspaceError("no such file or folder")
    doomed = [entry_id, *descendants(entries, entry_id)]
    files = doc.get(FILES, type=pycrdt.Map)
    with doc.transaction():
        for i in doomed:
            e = entries[i]
            if e.kind == "file":
                text = doc.get(e.text, type=pycrdt.Text)
                if len(text):
                    del text[0:len(text)]
            if i in files:
                del files[i]
    return doomed


def descendants(entries: Mapping[str, Entry], entry_id: str) -> list[str]:
    out: list[str] = []
    frontier = [entry_id]
    by_parent: dict[str, list[str]] = {}
    for e in entries.values():
        by_parent.setdefault(e.parent, []).append(e.id)
    while frontier:
        nxt = by_parent.get(frontier.pop(), [])
        out.extend(nxt)
        frontier.extend(nxt)
    return out


def _entry_map(doc: pycrdt.Doc, entry_id: str) -> pycrdt.Map:
    files = _files(doc)
    value = files.get(entry_id) if files is not None else None
    if not isinstance(value, pycrdt.Map):
        raise WorkspaceError("no such file or folder")
    return value


def paths(entries: Iterable[Entry]) -> dict[str, str]:
    """``path -> kind`` (handy for tests)."""
    return {e.path: e.kind for e in entries}
