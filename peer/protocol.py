"""y-protocols framing as y-webrtc speaks it on a data channel, plus CodeSync's extensions.

Pure functions, no I/O (DESIGN.md, "Data-channel protocol")::

    varUint messageType, then
      0 sync:      varUint syncType (0 step1 | 1 step2 | 2 update), varUint8Array payload
      1 awareness: varUint8Array awarenessUpdate
      3 query awareness (no payload)          4 BroadcastChannel peer id (ignored)
      100 chunk:   varUint messageId, varUint index, varUint count, varUint8Array part
      101 app:     varString JSON
      102 doc:     varString name, varUint syncType, varUint8Array payload (a named document)
      103 links:   varString JSON {"links": [peerId, ...]} (this peer's open links; caps ``mesh``)

The decoder is strict: every length is checked against the bytes present, integers are
bounded like lib0's (53 bits), and any violation raises :class:`ProtocolError` — a peer
drops that one message and carries on. pycrdt's own ``Decoder`` indexes past the end on a
truncated frame and its ``Encoder.write_var_string`` writes the character count instead
of the byte count, so awareness states with non-ASCII names are encoded here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3
MSG_BC_PEER_ID = 4
MSG_CHUNK = 100
MSG_APP = 101
MSG_DOC = 102
MSG_LINKS = 103
MSG_RELAYED = 104  # an Update a peer forwards (not its own): never forwarded again to peers with `relayed`

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

CAPS: tuple[str, ...] = ("chunk", "app", "docs", "roles", "mesh", "relayed")
"""What every CodeSync peer advertises in its ``announce`` and ``signal`` payloads: chunk (100),
app (101), docs (102, named documents), roles (it enforces the trust model on what it
receives, docs/protocol.md "The trust model"), mesh (103 links messages, the forward rule,
anti-entropy, refusals: docs/protocol.md "Room topology") and relayed (it takes forwarded
updates as type 104 and never forwards those again to a peer with ``relayed``)."""

MAX_LINKS_IDS = 1000  # a links message naming more peer ids is ignored (counted)
MAX_PEER_ID = 128  # bytes of one peer id in a links message

MAX_DOC_NAME = 64  # bytes; named documents are few and named by the protocol (``runs``)

_MAX_VARUINT_BITS = 53  # lib0 refuses larger integers too

EMPTY_UPDATE = b"\x00\x00"


class ProtocolError(ValueError):
    """A frame that does not follow the framing; the receiver drops it."""


def is_fatal(exc: BaseException) -> bool:
    """Exceptions a frame handler must let through. Anything else from decoding or pycrdt —
    including pyo3's PanicException, which derives from BaseException — only costs the frame."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit, MemoryError))


# ------------------------------------------------------------------ primitives
def write_var_uint(num: int) -> bytes:
    if num < 0:
        raise ValueError("varUint must not be negative")
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


def write_var_uint8array(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def write_var_string(text: str) -> bytes:
    return write_var_uint8array(text.encode("utf-8"))


class Reader:
    """A bounds-checked cursor over one frame."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview):
        self.data = bytes(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def var_uint(self) -> int:
        num = 0
        shift = 0
        data = self.data
        while True:
            if self.pos >= len(data):
                raise ProtocolError("truncated varUint")
            byte = data[self.pos]
            self.pos += 1
            num |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return num
            if shift >= _MAX_VARUINT_BITS:
                raise ProtocolError("varUint out of range")

    def var_uint8array(self) -> bytes:
        length = self.var_uint()
        if length > self.remaining:
            raise ProtocolError(f"declared length {length} exceeds the {self.remaining} bytes left")
        start = self.pos
        self.pos += length
        return self.data[start : self.pos]

    def var_string(self) -> str:
        try:
            return self.var_uint8array().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("varString is not UTF-8") from exc

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def decode_state_vector(data: bytes, max_clients: int = 100_000) -> dict[int, int]:
    """A Yjs state vector (what SyncStep1 carries) as ``{client: clock}``.

    lib0 encoding: varUint count, then (varUint client, varUint clock) pairs. Strict like
    ``Reader`` (raises ProtocolError, a ValueError): state vectors arrive from other peers.
    """
    reader = Reader(data)
    count = reader.var_uint()
    if count > max_clients:
        raise ProtocolError("state vector too large")
    return {reader.var_uint(): reader.var_uint() for _ in range(count)}


# ------------------------------------------------------------------ messages
@dataclass(frozen=True, slots=True)
class SyncMessage:
    step: int  # SYNC_STEP1 | SYNC_STEP2 | SYNC_UPDATE
    payload: bytes  # state vector (step1) or update (step2/update)
    relayed: bool = False  # a type-104 Update: forwarded by the link's peer, not its own


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    update: bytes


@dataclass(frozen=True, slots=True)
class QueryAwarenessMessage:
    pass


@dataclass(frozen=True, slots=True)
class IgnoredMessage:
    """Types we know and deliberately ignore (2 auth, 4 BroadcastChannel peer id)."""

    type: int


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    message_id: int
    index: int
    count: int
    part: bytes


@dataclass(frozen=True, slots=True)
class AppMessage:
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DocMessage:
    """Type 102: one sync message (same three steps as type 0) for the named document ``name``."""

    name: str
    step: int  # SYNC_STEP1 | SYNC_STEP2 | SYNC_UPDATE
    payload: bytes


@dataclass(frozen=True, slots=True)
class LinksMessage:
    """Type 103: the peer ids of the sender's open links (``None``: malformed or too large —
    the receiver counts and drops it; a links message never raises, it only fails to inform)."""

    links: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    type: int


Message = (
    SyncMessage
    | AwarenessMessage
    | QueryAwarenessMessage
    | IgnoredMessage
    | ChunkMessage
    | AppMessage
    | DocMessage
    | LinksMessage
    | UnknownMessage
)


def parse_message(frame: bytes | bytearray | memoryview) -> Message:
    """Decode one data-channel frame. Raises ProtocolError for anything malformed.

    Trailing bytes after a well-formed message are tolerated, like lib0's decoder does.
    """
    r = Reader(frame)
    kind = r.var_uint()
    if kind == MSG_SYNC:
        step = r.var_uint()
        if step not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
            raise ProtocolError(f"unknown sync step {step}")
        return SyncMessage(step, r.var_uint8array())
    if kind == MSG_AWARENESS:
        return AwarenessMessage(r.var_uint8array())
    if kind == MSG_QUERY_AWARENESS:
        return QueryAwarenessMessage()
    if kind in (MSG_AUTH, MSG_BC_PEER_ID):
        return IgnoredMessage(kind)
    if kind == MSG_CHUNK:
        message_id = r.var_uint()
        index = r.var_uint()
        count = r.var_uint()
        part = r.var_uint8array()
        if count == 0 or index >= count:
            raise ProtocolError(f"chunk index {index} of {count}")
        return ChunkMessage(message_id, index, count, part)
    if kind == MSG_APP:
        text = r.var_string()
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ProtocolError("app message is not JSON") from exc
        if not isinstance(body, dict):
            raise ProtocolError("app message must be a JSON object")
        return AppMessage(body)
    if kind == MSG_DOC:
        raw_name = r.var_uint8array()
        if not raw_name or len(raw_name) > MAX_DOC_NAME:
            raise ProtocolError(f"document name of {len(raw_name)} bytes")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("document name is not UTF-8") from exc
        step = r.var_uint()
        if step not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
            raise ProtocolError(f"unknown sync step {step}")
        return DocMessage(name, step, r.var_uint8array())
    if kind == MSG_LINKS:
        return LinksMessage(_links_payload(r))
    if kind == MSG_RELAYED:
        return SyncMessage(SYNC_UPDATE, r.var_uint8array(), relayed=True)
    return UnknownMessage(kind)


def _links_payload(r: Reader) -> frozenset[str] | None:
    """The ids of a type-103 payload; None for anything that is not ``{"links": [str, ...]}``
    within the bounds (the framing itself must still be sound: a broken varString raises)."""
    text = r.var_string()
    try:
        body = json.loads(text)
    except ValueError:
        return None
    ids = body.get("links") if isinstance(body, dict) else None
    if not isinstance(ids, list) or len(ids) > MAX_LINKS_IDS:
        return None
    if not all(isinstance(x, str) and 0 < len(x) <= MAX_PEER_ID for x in ids):
        return None
    return frozenset(ids)


def encode_sync_step1(state_vector: bytes) -> bytes:
    return bytes((MSG_SYNC, SYNC_STEP1)) + write_var_uint8array(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return bytes((MSG_SYNC, SYNC_STEP2)) + write_var_uint8array(update)


def encode_sync_update(update: bytes) -> bytes:
    return bytes((MSG_SYNC, SYNC_UPDATE)) + write_var_uint8array(update)


def encode_relayed_update(update: bytes) -> bytes:
    """Type 104: an Update we forward (docs/protocol.md "Room topology"), to peers with ``relayed``."""
    return bytes((MSG_RELAYED,)) + write_var_uint8array(update)


def encode_doc(name: str, step: int, payload: bytes) -> bytes:
    """Type 102 for the named document ``name``: ``step`` is SYNC_STEP1/SYNC_STEP2/SYNC_UPDATE."""
    return bytes((MSG_DOC,)) + write_var_string(name) + write_var_uint(step) + write_var_uint8array(payload)


def encode_links(peer_ids: Iterable[str]) -> bytes:
    """Type 103: the peer ids of our open links, sorted (stable bytes for equal sets)."""
    body = json.dumps({"links": sorted(peer_ids)}, separators=(",", ":"), ensure_ascii=False)
    return bytes((MSG_LINKS,)) + write_var_string(body)


def encode_awareness(awareness_update: bytes) -> bytes:
    return bytes((MSG_AWARENESS,)) + write_var_uint8array(awareness_update)


def encode_query_awareness() -> bytes:
    return bytes((MSG_QUERY_AWARENESS,))


def encode_chunk(message_id: int, index: int, count: int, part: bytes) -> bytes:
    return (
        bytes((MSG_CHUNK,))
        + write_var_uint(message_id)
        + write_var_uint(index)
        + write_var_uint(count)
        + write_var_uint8array(part)
    )


def encode_app(body: Mapping[str, Any]) -> bytes:
    return bytes((MSG_APP,)) + write_var_string(json.dumps(body, separators=(",", ":"), ensure_ascii=False))


# ------------------------------------------------------------------ awareness
@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: dict[str, Any] | None  # None: the client left


def encode_awareness_update(
    states: Mapping[int, dict[str, Any]], meta: Mapping[int, Mapping[str, Any]], client_ids: Iterable[int]
) -> bytes:
    """y-protocols ``encodeAwarenessUpdate`` with correct UTF-8 lengths (JSON ``null`` = gone)."""
    ids = list(client_ids)
    out = [write_var_uint(len(ids))]
    for cid in ids:
        clock = int(meta.get(cid, {}).get("clock", 0))
        state = states.get(cid)
        out.append(write_var_uint(cid))
        out.append(write_var_uint(clock))
        out.append(write_var_string(json.dumps(state, separators=(",", ":"), ensure_ascii=False)))
    return b"".join(out)


def decode_awareness_update(update: bytes, max_entries: int = 1024) -> list[AwarenessEntry]:
    """Validate an awareness update fully before anything applies it."""
    r = Reader(update)
    count = r.var_uint()
    if count > max_entries:
        raise ProtocolError(f"awareness update with {count} entries")
    entries = []
    for _ in range(count):
        cid = r.var_uint()
        clock = r.var_uint()
        text = r.var_string()
        try:
            state = json.loads(text) if text else None
        except ValueError as exc:
            raise ProtocolError("awareness state is not JSON") from exc
        if state is not None and not isinstance(state, dict):
            raise ProtocolError("awareness state must be an object or null")
        entries.append(AwarenessEntry(cid, clock, state))
    return entries
