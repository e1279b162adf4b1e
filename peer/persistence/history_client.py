"""Asking the persistence peer for a room's history from a Python peer (tests, benchmarks,
tools) — the same requests the web client sends (docs/protocol.md, "History").

    client = HistoryClient(room)                 # a started peer.Room
    timeline = await client.ask("timeline")
    version = await client.ask("version", seq=1234)
    doc = client.version_doc(version)            # a pycrdt Doc as it was
    await client.restore(version)                # a new edit on top (docs/history.md, "Restore")

Answers are taken only from a link the server stamped as the persistence service (a member
cannot answer in its place: docs/protocol.md, "The trust model").
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import itertools
import zlib
from typing import Any

import pycrdt

from peer import text as ptext
from peer.workspace import SOURCE_ID, text_name


class HistoryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HistoryClient:
    def __init__(self, room: Any) -> None:
        self.room = room
        self._ids = itertools.count(1)
        self._waiting: dict[Any, asyncio.Future] = {}
        self.changes: list[dict[str, Any]] = []  # history-changed notices received
        self.foreign_replies = 0  # replies from links that are not the persistence service
        room.on_app(self._on_app)

    def persistence_peer(self) -> str | None:
        for peer_id in self.room.connected_peers:
            principal = self.room.principal(peer_id)
            if principal is not None and principal.service == "persistence":
                return peer_id
        return None

    def _on_app(self, obj: dict[str, Any], peer_id: str) -> None:
        if obj.get("op") not in ("history-reply", "history-changed"):
            return
        principal = self.room.principal(peer_id)
        if principal is None or principal.service != "persistence":
            self.foreign_replies += 1
            return
        if obj["op"] == "history-changed":
            self.changes.append(obj)
            return
        future = self._waiting.pop(obj.get("id"), None)
        if future is not None and not future.done():
            future.set_result(obj)

    async def request(self, q: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """The raw answer (``ok`` true or false)."""
        peer_id = self.persistence_peer()
        if peer_id is None:
            raise HistoryError("unavailable", "no persistence peer connected")
        req_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = future
        try:
            if not await self.room.send_app(peer_id, {"op": "history", "id": req_id, "q": q, **args}):
                raise HistoryError("unavailable", "could not send to the persistence peer")
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(req_id, None)

    async def ask(self, q: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """The answer of a successful request; raises HistoryError otherwise."""
        reply = await self.request(q, timeout, **args)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise HistoryError(str(error.get("code")), str(error.get("message")))
        return reply

    @staticmethod
    def version_doc(version: dict[str, Any], name: str = "main") -> pycrdt.Doc:
        data = base64.b64decode(version["docs"][name])
        if version.get("encoding") == "deflate":
            data = zlib.decompress(data)
        doc = pycrdt.Doc()
        doc.apply_update(data)
        return doc

    async def export(self) -> str:
        """The whole export (JSON lines), page by page."""
        out: list[str] = []
        cursor = None
        while True:
            page = await self.ask("export", cursor=cursor) if cursor else await self.ask("export")
            out.append(page["lines"])
            cursor = page.get("next")
            if not cursor:
                return "".join(out)

    def restore(self, version: dict[str, Any], file_id: str = SOURCE_ID) -> int:
        """Make one file (default: the first, v1's ``source``) equal the version's, as one new
        edit on top (peers merge it like any change; nothing is rewritten). Returns the number
        of patches."""
        key = text_name(file_id)
        target = str(self.version_doc(version).get(key, type=pycrdt.Text))
        return apply_text(self.room.doc.get(key, type=pycrdt.Text), target)


def text_patches(current: str, target: str) -> list[tuple[int, int, str]]:
    """``(position, delete, insert)`` in code points, applied from the end backwards."""
    ops = difflib.SequenceMatcher(None, current, target, autojunk=False).get_opcodes()
    return [(i1, i2 - i1, target[j1:j2]) for tag, i1, i2, j1, j2 in reversed(ops) if tag != "equal"]


def apply_text(ytext: pycrdt.Text, target: str) -> int:
    """Edit ``ytext`` into ``target`` in one transaction (a minimal diff, not a rewrite: the
    characters both share keep their identity, so their authors stay)."""
    current = str(ytext)
    patches = text_patches(current, target)
    with ytext.doc.transaction():
        for pos, delete, insert in patches:
            if delete:
                ptext.delete_codepoints(ytext, pos, delete, current)
                current = current[:pos] + current[pos + delete :]
            if insert:
                ptext.insert_codepoints(ytext, pos, insert, current)
                current = current[:pos] + insert + current[pos:]
    return len(patches)
