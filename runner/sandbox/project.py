"""A run's project: relative paths to file contents, checked before anything is written.

A run gets a whole project (``dict[path, bytes]``, folders as ``/`` in the path) and both
backends write it into the sandbox work directory. Every path is checked *here*, once, before
any byte reaches a sandbox, so a backend never has to think about ``..`` or absolute paths:

- relative POSIX paths only: no leading ``/``, no ``\\``, no empty, ``.`` or ``..`` part, no NUL
  or other control characters, each part at most ``MAX_PART`` bytes, the whole at most
  ``MAX_PATH`` bytes and ``MAX_DEPTH`` parts;
- no Windows device names (``CON``, ``NUL``, ``COM1``, ``LPT1``… with any extension) — the same
  tree is downloaded as a zip and must unpack anywhere;
- a path may not be both a file and a folder (``a`` and ``a/b``);
- ``.codesync/`` is the runner's build directory (compiled programs, caches): reserved;
- at most ``MAX_FILES`` files, ``MAX_FILE_BYTES`` per file and ``MAX_TOTAL_BYTES`` in all.

Symbolic links, hard links and device files cannot be expressed in ``dict[path, bytes]``;
they can in an uploaded archive, so ``from_zip`` / ``from_tar`` refuse any entry that is not a
regular file or a folder — the whole upload, before anything is written.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from collections.abc import Mapping

from peer.workspace import CONTROL_CHARS, DEVICE_NAME, LIMITS

# A run holds what a room's tree may hold (peer.workspace.Limits: one set of numbers).
MAX_FILES = LIMITS.files
MAX_FILE_BYTES = LIMITS.file_bytes
MAX_TOTAL_BYTES = LIMITS.total_bytes
MAX_PATH = LIMITS.path_bytes
MAX_PART = LIMITS.name_bytes
MAX_DEPTH = LIMITS.depth
BUILD_DIR = ".codesync"


class ProjectError(ValueError):
    """The project cannot be run as given; the message says which path and why."""


def check_path(path: object) -> str:
    """Return ``path`` if it is a safe relative file path, else raise ``ProjectError``."""
    if not isinstance(path, str) or not path:
        raise ProjectError("a file path must be a non-empty string")
    shown = repr(path[:80])
    if CONTROL_CHARS.search(path):
        raise ProjectError(f"file path {shown} contains a control character")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise ProjectError(f"file path {shown} is absolute; paths are relative to the project folder")
    if "\\" in path:
        raise ProjectError(f"file path {shown} contains a backslash; use / between folders")
    if len(path.encode()) > MAX_PATH:
        raise ProjectError(f"file path {shown} is longer than {MAX_PATH} bytes")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise ProjectError(f"file path {shown} is nested deeper than {MAX_DEPTH} folders")
    for part in parts:
        if part in ("", ".", ".."):
            raise ProjectError(f"file path {shown} has an empty, '.' or '..' part")
        if len(part.encode()) > MAX_PART:
            raise ProjectError(f"file path {shown} has a name longer than {MAX_PART} bytes")
        if DEVICE_NAME.match(part) or part.endswith((" ", ".")):
            raise ProjectError(f"file path {shown} uses a reserved device name")
    if parts[0] == BUILD_DIR:
        raise ProjectError(f"file path {shown}: {BUILD_DIR}/ is reserved for the runner's build output")
    return path


def check_project(files: Mapping[str, bytes | str], entry: str | None = None) -> dict[str, bytes]:
    """Validate a whole project (and its entry file); return it as ``dict[str, bytes]``."""
    if not isinstance(files, Mapping):
        raise ProjectError("a project is a mapping of file path to content")
    if len(files) > MAX_FILES:
        raise ProjectError(f"the project has {len(files)} files; at most {MAX_FILES} can run")
    checked: dict[str, bytes] = {}
    total = 0
    for path, content in files.items():
        check_path(path)
        data = content.encode() if isinstance(content, str) else content
        if not isinstance(data, (bytes, bytearray)):
            raise ProjectError(f"file {path!r}: content must be bytes or text")
        if len(data) > MAX_FILE_BYTES:
            raise ProjectError(f"file {path!r} is larger than {MAX_FILE_BYTES // 1024} KiB")
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise ProjectError(f"the project is larger than {MAX_TOTAL_BYTES // (1024 * 1024)} MiB")
        checked[path] = bytes(data)
    folders = {"/".join(p.split("/")[:i]) for p in checked for i in range(1, p.count("/") + 1)}
    clash = sorted(folders & checked.keys())
    if clash:
        raise ProjectError(f"{clash[0]!r} is both a file and a folder")
    if entry is not None and entry not in checked:
        raise ProjectError(f"the entry file {str(entry)[:80]!r} is not in the project")
    return checked


def from_zip(data: bytes) -> dict[str, bytes]:
    """The regular files of a zip upload, checked; any link or special entry refuses it all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ProjectError(f"not a readable zip file: {exc}") from exc
    if len(infos) > MAX_FILES * 2:
        raise ProjectError(f"the archive has {len(infos)} entries; at most {MAX_FILES} files can run")
    wanted = []
    total = 0
    for info in infos:
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.is_dir():
            continue
        if kind not in (0, stat.S_IFREG):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise ProjectError(f"archive entry {info.filename[:80]!r} is {what}; only files and folders are accepted")
        check_path(info.filename)
        total += info.file_size
        if info.file_size > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
            raise ProjectError(f"archive entry {info.filename[:80]!r} makes the project too large")
        wanted.append(info)
    files = {}
    for info in wanted:
        # Read at most the declared size + 1: a lying header cannot make us inflate a bomb.
        with archive.open(info) as member:
            content = member.read(MAX_FILE_BYTES + 1)
        if len(content) != info.file_size:
            raise ProjectError(f"archive entry {info.filename[:80]!r} does not match its declared size")
        files[info.filename] = content
    return check_project(files)


def from_tar(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar upload (any compression), checked; links refuse it all."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ProjectError(f"not a readable tar file: {exc}") from exc
    files: dict[str, bytes] = {}
    total = 0
    for member in members:
        if member.isdir():
            continue
        if not member.isreg():
            what = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "not a regular file"
            raise ProjectError(f"archive entry {member.name[:80]!r} is {what}; only files and folders are accepted")
        name = member.name[2:] if member.name.startswith("./") else member.name
        check_path(name)
        total += member.size
        if len(files) >= MAX_FILES or member.size > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
            raise ProjectError(f"archive entry {name[:80]!r} makes the project too large")
        extracted = archive.extractfile(member)
        files[name] = extracted.read() if extracted is not None else b""
    return check_project(files)
