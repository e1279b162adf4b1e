"""Serving a room's history to its members over the data channel (app messages, type 101).

docs/protocol.md ("History") is the wire contract, docs/history.md the feature. A member's
peer sends ``{"op": "history", "id", "q", ...}`` to the persistence peer that owns the room;
the answer is ``{"op": "history-reply", "id", "q", "ok": true, ...}`` or ``{..., "ok": false,
"error": {"code", "message"}}`` (chunked by the peer library like any large message). The
content never touches the signaling server.

Rights (``history_rights``) are decided on ``room.principal(peer_id)`` — the server-stamped
principal with its live role — when the request is taken and again just before the answer
goes out (a demotion or removal in between gets ``forbidden``; a removed member's link is
closed by the peer library anyway).

Bounds, so that no member can make the persistence peer hold much or work much:

- per link: a token bucket of requests, at most ``per_link_inflight`` requests being
  answered, and nothing new while more than ``max_buffered`` bytes wait in its data channel
  (a peer that stops reading cannot pile up answers);
- per process: at most ``heavy_slots`` expensive requests (versions, export, delete) at once
  and ``heavy_waiting`` queued behind them (more: ``busy``); versions are rebuilt on the one
  history thread (peer/persistence/history.py);
- per answer: ``max_version_bytes`` for a version, ``page_bytes`` for a page of updates or of
  an export, ``MAX_TIMELINE`` bursts, ``MAX_AUTHOR_CLIENTS`` client ids per ``authors``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from codesync.models import MAIN_DOC, new_id
from peer.ratelimit import TokenBucket

from ..workspace import SOURCE_ID, valid_entry_id
from . import history
from .attribution import Attribution
from .history_rights import OWNER, QUERIES, history_refusal
from .store import DocumentStore, now_ms
from .timeline import sessions
from .writer import RoomWriter
from .yupdate import key_client

log = logging.getLogger("codesync.persistence.history")

REQUESTS = Counter("codesync_persist_history_requests_total", "history requests answered, by query and result",
                   ["q", "result"])

MAX_ID = 64
MAX_TIMELINE = 500  # bursts per timeline page
MAX_UPDATES = 2000  # rows per updates page
MAX_AUTHOR_CLIENTS = 5000
MAX_CHECKPOINT_NAME = 100
MAX_CHECKPOINTS = 1000
MAX_INT = 2**53
HEAVY = frozenset({"version", "export", "delete"})


@dataclass
class HistoryLimits:
    """Shared by every room of one persistence process."""

    heavy_slots: int = 2
    heavy_waiting: int = 16
    per_link_rate: float = 5.0  # requests per second ...
    per_link_burst: float = 20.0  # ... with this burst
    per_link_inflight: int = 2
    max_buffered: int = 8 * 1024 * 1024
    max_version_bytes: int = 24 * 1024 * 1024
    page_bytes: int = 512 * 1024
    _heavy: asyncio.Semaphore | None = field(default=None, repr=False)
    _waiting: int = 0

    @property
    def heavy(self) -> asyncio.Semaphore:
        if self._heavy is None:
            self._heavy = asyncio.Semaphore(self.heavy_slots)
        return self._heavy


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HistoryServer:
    """Answers history requests in one room (the persistence peer owns the room)."""

    def __init__(
        self,
        room: Any,
        store: DocumentStore,
        attribution: Attribution,
        writers: dict[str, RoomWriter],
        *,
        limits: HistoryLimits,
        viewers_default: bool = False,
        viewers_read: bool | None = None,
    ) -> None:
        self.room = room
        self.room_id: str = room.room_id
        self.store = store
        self.attribution = attribution
        self.writers = writers  # "" (main) and named documents
        self.limits = limits
        self.viewers_default = viewers_default
        self.viewers_read = viewers_read  # the room's own policy (None: the default)
        self._buckets: dict[str, TokenBucket] = {}
        self._inflight: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def viewers_allowed(self) -> bool:
        return self.viewers_default if self.viewers_read is None else self.viewers_read

    def start(self) -> None:
        self._unsubscribe = self.room.on_app(self._on_app)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ intake
    def _on_app(self, obj: dict[str, Any], peer_id: str) -> None:
        if obj.get("op") != "history":
            return
        req_id = obj.get("id")
        if not isinstance(req_id, (int, str)) or isinstance(req_id, bool) or len(str(req_id)) > MAX_ID:
            REQUESTS.labels("?", "bad_request").inc()
            return  # nothing to answer to
        q = obj.get("q")
        q = q if isinstance(q, str) and q in QUERIES else None
        bucket = self._buckets.get(peer_id)
        if bucket is None:
            if len(self._buckets) > 1000:
                self._buckets.clear()
            bucket = self._buckets[peer_id] = TokenBucket(self.limits.per_link_rate, self.limits.per_link_burst)
        if not bucket.take():
            self._reply_soon(peer_id, req_id, q, error=("busy", "too many history requests; slow down"))
            return
        if self._inflight.get(peer_id, 0) >= self.limits.per_link_inflight:
            self._reply_soon(peer_id, req_id, q, error=("busy", "wait for the previous answers"))
            return
        if self.room.buffered_amount(peer_id) > self.limits.max_buffered:
            self._reply_soon(peer_id, req_id, q, error=("busy", "the previous answers are still being sent"))
            return
        self._inflight[peer_id] = self._inflight.get(peer_id, 0) + 1
        task = asyncio.create_task(self._handle(peer_id, req_id, q, obj), name=f"history:{self.room_id}:{q}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply_soon(self, peer_id: str, req_id: Any, q: str | None, *, error: tuple[str, str]) -> None:
        REQUESTS.labels(q or "?", error[0]).inc()
        task = asyncio.create_task(self._send(peer_id, _error(req_id, q, *error)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, peer_id: str, req_id: Any, q: str | None, req: dict[str, Any]) -> None:
        try:
            if q is None:
                raise Refused("bad_request", f"q must be one of {', '.join(sorted(QUERIES))}")
            self._check(peer_id, q)
            if q in HEAVY:
                body = await self._heavy(q, peer_id, req)
            else:
                body = await self._run(q, peer_id, req)
            self._check(peer_id, q)  # still allowed now that the answer is ready
            REQUESTS.labels(q, "ok").inc()
            await self._send(peer_id, {"op": "history-reply", "id": req_id, "q": q, "ok": True, **body})
        except Refused as exc:
            REQUESTS.labels(q or "?", exc.code).inc()
            await self._send(peer_id, _error(req_id, q, exc.code, exc.message))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one request's trouble must not end the room
            log.exception("room %s: history %s failed", self.room_id, q)
            REQUESTS.labels(q or "?", "internal").inc()
            await self._send(peer_id, _error(req_id, q, "internal", "the history could not be read; try again"))
        finally:
            left = self._inflight.get(peer_id, 1) - 1
            if left <= 0:
                self._inflight.pop(peer_id, None)
            else:
                self._inflight[peer_id] = left

    def _check(self, peer_id: str, q: str) -> None:
        refusal = history_refusal(self.room.principal(peer_id), q, self.viewers_allowed)
        if refusal is not None:
            message = {
                "viewer_policy": "viewers may not read this room's history (the owner can allow it)",
                "role": "only the owner may do that" if q in OWNER else "only editors and the owner may do that",
            }.get(refusal, "not allowed")
            raise Refused("forbidden", message)

    async def _heavy(self, q: str, peer_id: str, req: dict[str, Any]) -> dict[str, Any]:
        limits = self.limits
        if limits.heavy.locked() and limits._waiting >= limits.heavy_waiting:
            raise Refused("busy", "the history is busy; try again in a moment")
        limits._waiting += 1
        try:
            await limits.heavy.acquire()
        finally:
            limits._waiting -= 1
        try:
            self._check(peer_id, q)  # the wait may have been long
            return await self._run(q, peer_id, req)
        finally:
            limits.heavy.release()

    async def _send(self, peer_id: str, obj: dict[str, Any]) -> None:
        try:
            if not await self.room.send_app(peer_id, obj):
                log.debug("room %s: history answer to %s not sent (link gone)", self.room_id, peer_id)
        except Exception:  # noqa: BLE001
            log.exception("room %s: sending a history answer failed", self.room_id)

    # ------------------------------------------------------------------ queries
    async def _run(self, q: str, peer_id: str, req: dict[str, Any]) -> dict[str, Any]:
        engine = self.store.engine
        if q == "timeline":
            before = _opt_int(req, "before")
            limit = _opt_int(req, "limit", 1, MAX_TIMELINE) or 200
            bursts, more = await history.bursts(engine, self.room_id, before=before, limit=limit)
            bounds = await history.bounds(engine, self.room_id)
            checkpoints = await history.checkpoints(engine, self.room_id, MAX_CHECKPOINTS)
            used: set[int] = set()

            def burst_json(b) -> dict[str, Any]:
                author = self.attribution.author_for(b.client, b.via)
                if author is not None:
                    used.add(author)
                return {"start_seq": b.start_seq, "end_seq": b.end_seq, "start_at": b.start_at, "end_at": b.end_at,
                        "author": author, "updates": b.updates, "inserted": b.inserted}

            out_sessions = [
                {"start_seq": s.bursts[0].start_seq, "end_seq": s.bursts[-1].end_seq, "start_at": s.start_at,
                 "end_at": s.end_at, "bursts": [burst_json(b) for b in s.bursts]}
                for s in sessions(bursts)
            ]
            used.update(c.author for c in checkpoints if c.author is not None)
            return {
                "bounds": bounds.__dict__,
                "sessions": out_sessions,
                "more": more,
                "checkpoints": [c.as_json() for c in checkpoints],
                "authors": self._authors(used),
                "policy": {"viewers_read": self.viewers_allowed, "room": self.viewers_read},
            }
        if q == "version":
            seq = _opt_int(req, "seq")
            at = _opt_int(req, "at")
            if seq is None and at is None:
                raise Refused("bad_request", "give seq or at")
            if seq is None:
                seq = await history.seq_at(engine, self.room_id, at)
            fmt = req.get("format", "ydoc")
            if fmt not in ("ydoc", "text"):
                raise Refused("bad_request", "format is ydoc (Yjs updates, to play on from) or text")
            file_id = req.get("file", SOURCE_ID)
            if fmt == "text" and not (isinstance(file_id, str) and valid_entry_id(file_id)):
                raise Refused("bad_request", "file is a file id of the room's tree")
            encoding = req.get("encoding", "none")
            if encoding not in ("none", "deflate"):
                raise Refused("bad_request", "encoding is none or deflate")
            try:
                version = await history.version(engine, self.room_id, seq, max_bytes=self.limits.max_version_bytes)
            except history.NotKept as exc:
                raise Refused("not_kept", str(exc)) from None
            except ValueError as exc:
                raise Refused("too_large", str(exc)) from None
            head = {"seq": version.seq, "at": version.at, "exact": version.exact}
            if fmt == "text":  # what a version view needs: one file's code, not the CRDT's structure
                text, exists = await asyncio.get_running_loop().run_in_executor(
                    history.EXECUTOR, history.file_text, version.docs[MAIN_DOC], file_id)
                return {**head, "file": file_id, "exists": exists, "text": text}
            if encoding == "deflate":  # a Yjs update deflates ~4x: a quarter of the bytes to send
                loop = asyncio.get_running_loop()
                packed = {name: await loop.run_in_executor(history.EXECUTOR, zlib.compress, data, 1)
                          for name, data in version.docs.items()}
                head["encoding"] = "deflate"
            else:
                packed = version.docs
            return {**head, "docs": {("main" if name == MAIN_DOC else name): base64.b64encode(data).decode()
                                     for name, data in packed.items()}}
        if q == "updates":
            after = _opt_int(req, "after") or 0
            until = _opt_int(req, "until")
            limit = _opt_int(req, "limit", 1, MAX_UPDATES) or 500
            rows, more = await history.updates(engine, self.room_id, after, limit=limit,
                                               max_bytes=self.limits.page_bytes, until=until)
            used = set()
            out = []
            for r in rows:
                author = self.attribution.author_for(key_client(r.ranges), r.via)
                if author is not None:
                    used.add(author)
                out.append([r.seq, r.at, "main" if r.doc == MAIN_DOC else r.doc, author,
                            base64.b64encode(r.data).decode()])
            return {"updates": out, "more": more, "authors": self._authors(used)}
        if q == "authors":
            clients = req.get("clients")
            if not isinstance(clients, list) or len(clients) > MAX_AUTHOR_CLIENTS or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < MAX_INT for c in clients
            ):
                raise Refused("bad_request", f"clients must be a list of at most {MAX_AUTHOR_CLIENTS} client ids")
            owners = {c: self.attribution.owner(c) for c in clients}
            return {"clients": {str(c): a for c, a in owners.items() if a is not None},
                    "authors": self._authors({a for a in owners.values() if a is not None})}
        if q == "checkpoint":
            name = _clean_name(req.get("name"))
            for writer in self.writers.values():
                await writer.flush()
            seq = max(w.last_seq for w in self.writers.values())
            if seq == 0:
                raise Refused("bad_request", "nothing to name yet")
            author = self.attribution.author_of(self.room.principal(peer_id))
            checkpoint = history.Checkpoint(new_id(), seq, now_ms(), name, author)
            if not await history.add_checkpoint(engine, self.room_id, checkpoint, max_per_room=MAX_CHECKPOINTS):
                raise Refused("too_large", f"a room keeps at most {MAX_CHECKPOINTS} named versions")
            # the author must be stored for the checkpoint to name them: commit it now
            await self.writers[MAIN_DOC].store_attribution()
            await self._changed("checkpoint")
            return {"checkpoint": checkpoint.as_json(), "authors": self._authors({author} if author else set())}
        if q == "export":
            cursor = req.get("cursor")
            if cursor is not None and (not isinstance(cursor, str) or len(cursor) > 64):
                raise Refused("bad_request", "bad cursor")
            try:
                lines, next_cursor = await history.export_page(engine, self.room_id, cursor,
                                                               max_bytes=self.limits.page_bytes,
                                                               attribution=self.attribution)
            except ValueError:
                raise Refused("bad_request", "bad cursor") from None
            return {"lines": lines, "next": next_cursor}
        if q == "delete":
            if req.get("confirm") is not True:
                raise Refused("bad_request", "deleting the history needs confirm: true")
            upto = await self._delete()
            await self._changed("deleted")
            return {"deleted": {"upto_seq": upto}}
        if q == "policy":
            value = req.get("viewers_read", "missing")
            if value not in (True, False, None):
                raise Refused("bad_request", "viewers_read must be true, false or null (the default)")
            await history.set_viewers_read(engine, self.room_id, value)
            self.viewers_read = value
            await self._changed("policy")
            return {"policy": {"viewers_read": self.viewers_allowed, "room": self.viewers_read}}
        raise Refused("bad_request", "unknown query")

    async def _delete(self) -> int:
        """Everything stored up to now becomes one snapshot per document (docs/history.md)."""
        writers = list(self.writers.values())
        result: dict[str, int] = {}

        async def job(i: int = 0) -> None:
            if i < len(writers):  # hold every writer of the room, one inside the other
                await writers[i].exclusive(lambda: job(i + 1))
                return
            upto = await history.last_seq(self.store.engine, self.room_id)
            pruned = await history.prune(self.store.engine, self.room_id, upto, daily=False)
            result["upto"] = pruned.upto_seq if pruned else upto

        await job()
        for writer in writers:
            writer.forget_bursts()
            await writer.refresh_stats()
        log.info("room %s: history deleted up to seq %d by the owner", self.room_id, result.get("upto", 0))
        return result.get("upto", 0)

    async def _changed(self, what: str) -> None:
        """Tell every member's open history panel to refresh (only from this, the persistence link)."""
        try:
            await self.room.broadcast_app({"op": "history-changed", "what": what})
        except Exception:  # noqa: BLE001 - cosmetic
            log.debug("room %s: history-changed not sent", self.room_id, exc_info=True)

    def _authors(self, nums: set[int]) -> dict[str, Any]:
        return {str(n): self.attribution.authors[n].as_json() for n in sorted(nums) if n in self.attribution.authors}


def _error(req_id: Any, q: str | None, code: str, message: str) -> dict[str, Any]:
    return {"op": "history-reply", "id": req_id, "q": q, "ok": False, "error": {"code": code, "message": message}}


def _opt_int(req: dict[str, Any], key: str, low: int = 0, high: int = MAX_INT) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refused("bad_request", f"{key} must be an integer from {low} to {high}")
    return value


def _clean_name(value: Any) -> str:
    if not isinstance(value, str):
        raise Refused("bad_request", "a named version needs a name")
    name = "".join(ch for ch in value if unicodedata.category(ch)[0] != "C").strip()
    if not name or len(name) > MAX_CHECKPOINT_NAME:
        raise Refused("bad_request", f"the name must have 1 to {MAX_CHECKPOINT_NAME} characters")
    return name
