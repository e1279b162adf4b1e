"""One large Yjs update as several bounded ones, for peers that cannot take chunks.

A stock y-webrtc client cannot receive a data-channel message above its SCTP limit
(Chromium: 256 KiB) and knows nothing of CodeSync's chunk messages (type 100), so a
document whose SyncStep2 is larger could never reach it. A Yjs update is a list of structs
per client plus a delete set, and an update carrying only some of the structs is still a
valid update: the receiver integrates what it can and keeps the rest pending until the
structs it depends on arrive (Yjs and Yrs both do). So the SyncStep2 can travel as a
sequence of updates, each below the limit, in the original order; applied together they
give exactly the original.

The format is Yjs' update encoding v1 (docs: peer/persistence/yupdate.py)::

    varUint clients; per client: varUint structs, varUint client, varUint clock, structs...
    then the delete set: varUint clients; per client: varUint client, varUint ranges,
    (varUint clock, varUint length) per range.

Structs are copied byte for byte (each carries absolute ids); a segment restarts a client's
run with the clock of its first struct. A single struct above the limit is split the way
Yjs splits items itself: a string at UTF-16 positions (never inside a surrogate pair), an
Any/JSON array between elements; the second part's left origin is the first part's last
clock and it keeps the right origin. Only a single binary, embed, format, type or
sub-document value above the limit cannot be split (``split_update`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["split_update"]

_MAX_DEPTH = 64
_HEADER = 32  # bytes a segment's own varUints take at most, besides its structs


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("update truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def var_uint(self) -> int:
        num = shift = 0
        while True:
            b = self.u8()
            num |= (b & 0x7F) << shift
            if b < 0x80:
                return num
            shift += 7
            if shift > 63:
                raise ValueError("varUint too long")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("update truncated")
        self.pos += n

    def var_bytes(self) -> bytes:
        n = self.var_uint()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos]

    def count(self) -> int:
        n = self.var_uint()
        if n > len(self.data) - self.pos:
            raise ValueError("count larger than the update")
        return n

    def any(self, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError("value nested too deeply")
        tag = self.u8()
        if tag in (127, 126, 121, 120):
            return
        if tag == 125:  # varInt
            while self.u8() & 0x80:
                pass
        elif tag == 124:
            self.skip(4)
        elif tag in (123, 122):
            self.skip(8)
        elif tag in (119, 116):
            self.var_bytes()
        elif tag == 118:
            for _ in range(self.count()):
                self.var_bytes()
                self.any(depth + 1)
        elif tag == 117:
            for _ in range(self.count()):
                self.any(depth + 1)
        else:
            raise ValueError(f"unknown value tag {tag}")


def _uint(num: int) -> bytes:
    out = bytearray()
    while num > 0x7F:
        out.append(0x80 | (num & 0x7F))
        num >>= 7
    out.append(num)
    return bytes(out)


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


@dataclass
class _Struct:
    client: int
    clock: int
    length: int
    raw: bytes  # the struct's bytes as encoded


@dataclass
class _Item:
    """What splitting one item needs: its header fields and its content, decoded."""

    info: int
    right: bytes | None  # the right origin's two varUints, raw
    head: bytes  # info byte + origins + parent info: what the first part keeps
    ref: int
    elements: list[bytes] | str  # Any/JSON: raw elements; String: the text


def _read_struct(cur: _Cursor, client: int, clock: int) -> tuple[_Struct, _Item | None] | int:
    """One struct at the cursor; a Skip returns its length (an int) instead."""
    start = cur.pos
    info = cur.u8()
    ref = info & 0x1F
    if ref in (0, 10):  # GC, Skip
        length = cur.var_uint()
        if ref == 10:
            return length
        return _Struct(client, clock, length, cur.data[start : cur.pos]), None
    right = None
    if info & 0x80:
        cur.var_uint()
        cur.var_uint()
    if info & 0x40:
        r0 = cur.pos
        cur.var_uint()
        cur.var_uint()
        right = cur.data[r0 : cur.pos]
    if not info & 0xC0:
        if cur.var_uint() == 1:
            cur.var_bytes()
        else:
            cur.var_uint()
            cur.var_uint()
        if info & 0x20:
            cur.var_bytes()
    head = cur.data[start : cur.pos]
    item: _Item | None = None
    if ref == 1:  # Deleted
        length = cur.var_uint()
    elif ref == 4:  # String
        raw = cur.var_bytes()
        text = raw.decode("utf-8", errors="surrogatepass")
        length = _utf16_len(text)
        item = _Item(info, right, head, ref, text)
    elif ref in (2, 8):  # JSON, Any: count, then elements
        n = cur.count()
        elements = []
        for _ in range(n):
            e0 = cur.pos
            if ref == 2:
                cur.var_bytes()
            else:
                cur.any()
            elements.append(cur.data[e0 : cur.pos])
        length = n
        item = _Item(info, right, head, ref, elements)
    elif ref in (3, 5):  # Binary, Embed
        cur.var_bytes()
        length = 1
    elif ref == 6:  # Format
        cur.var_bytes()
        cur.var_bytes()
        length = 1
    elif ref == 7:  # Type
        if cur.var_uint() in (3, 5):
            cur.var_bytes()
        length = 1
    elif ref == 9:  # Doc
        cur.var_bytes()
        cur.any()
        length = 1
    else:
        raise ValueError(f"unknown content ref {ref}")
    return _Struct(client, clock, length, cur.data[start : cur.pos]), item


def _split_item(struct: _Struct, item: _Item, budget: int) -> list[_Struct] | None:
    """``struct`` as consecutive items each within ``budget`` bytes (None: cannot)."""
    parts: list[_Struct] = []
    clock = struct.clock
    first = True
    room = budget - 64  # the header of a continuation: info, two ids, counts
    if room <= 0:
        return None
    pieces: list[tuple[bytes, int]] = []  # (encoded content, length in clocks)
    if isinstance(item.elements, str):
        text, size = item.elements, 0
        buf: list[str] = []
        for ch in text:
            b = ch.encode("utf-8", errors="surrogatepass")
            if size + len(b) > room and buf:
                piece = "".join(buf)
                pieces.append((_uint(size) + piece.encode("utf-8", errors="surrogatepass"), _utf16_len(piece)))
                buf, size = [], 0
            buf.append(ch)
            size += len(b)
        if buf:
            piece = "".join(buf)
            pieces.append((_uint(size) + piece.encode("utf-8", errors="surrogatepass"), _utf16_len(piece)))
    else:
        group: list[bytes] = []
        size = 0
        for element in item.elements:
            if len(element) > room:
                return None
            if size + len(element) > room and group:
                pieces.append((_uint(len(group)) + b"".join(group), len(group)))
                group, size = [], 0
            group.append(element)
            size += len(element)
        if group:
            pieces.append((_uint(len(group)) + b"".join(group), len(group)))
    for content, length in pieces:
        if first:
            head = item.head
            first = False
        else:  # a continuation: left origin = the previous part's last clock, no parent info
            info = 0x80 | (item.info & 0x40) | (item.info & 0x20) | item.ref
            head = bytes((info,)) + _uint(struct.client) + _uint(clock - 1) + (item.right or b"")
        parts.append(_Struct(struct.client, clock, length, head + content))
        clock += length
    return parts


def _read_delete_set(cur: _Cursor) -> list[tuple[int, list[tuple[int, int]]]]:
    out = []
    for _ in range(cur.count()):
        client = cur.var_uint()
        ranges = [(cur.var_uint(), cur.var_uint()) for _ in range(cur.count())]
        out.append((client, ranges))
    return out


def _encode(groups: list[tuple[int, int, list[bytes]]], ds: list[tuple[int, list[tuple[int, int]]]]) -> bytes:
    out = [_uint(len(groups))]
    for client, clock, raws in groups:
        out += [_uint(len(raws)), _uint(client), _uint(clock), *raws]
    out.append(_uint(len(ds)))
    for client, ranges in ds:
        out += [_uint(client), _uint(len(ranges))]
        for clock, length in ranges:
            out += [_uint(clock), _uint(length)]
    return b"".join(out)


def split_update(update: bytes, max_bytes: int) -> list[bytes] | None:
    """``update`` as updates of at most ``max_bytes`` each, to be applied in order (``[update]``
    when it fits). None when one value cannot be split that small. ValueError on a malformed
    update (ours come from pycrdt: never expected)."""
    if len(update) <= max_bytes:
        return [update]
    budget = max_bytes - _HEADER
    if budget < 256:
        raise ValueError(f"max_bytes {max_bytes} is too small to split into")
    cur = _Cursor(update)
    structs: list[_Struct] = []
    for _ in range(cur.count()):
        n = cur.count()
        client = cur.var_uint()
        clock = cur.var_uint()
        for _ in range(n):
            read = _read_struct(cur, client, clock)
            if isinstance(read, int):
                clock += read
                continue
            struct, item = read
            clock += struct.length
            if len(struct.raw) <= budget:
                structs.append(struct)
                continue
            parts = _split_item(struct, item, budget) if item is not None else None
            if parts is None:
                return None
            structs.extend(parts)
    ds = _read_delete_set(cur)

    segments: list[bytes] = []
    groups: list[tuple[int, int, list[bytes]]] = []
    size = 0
    next_clock: dict[int, int] = {}
    for struct in structs:
        cost = len(struct.raw) + 12  # and maybe a new group's header
        if size + cost > budget and groups:
            segments.append(_encode(groups, []))
            groups, size = [], 0
        if groups and groups[-1][0] == struct.client and next_clock.get(struct.client) == struct.clock:
            groups[-1][2].append(struct.raw)
        else:
            groups.append((struct.client, struct.clock, [struct.raw]))
        next_clock[struct.client] = struct.clock + struct.length
        size += cost
    # the delete set: in the last segment while it fits, else in segments of its own
    pending_ds: list[tuple[int, list[tuple[int, int]]]] = []
    for client, ranges in ds:
        for i in range(0, len(ranges), 1000):
            chunk = ranges[i : i + 1000]
            cost = 24 + 20 * len(chunk)
            if size + cost > budget and (groups or pending_ds):
                segments.append(_encode(groups, pending_ds))
                groups, pending_ds, size = [], [], 0
            pending_ds.append((client, chunk))
            size += cost
    if groups or pending_ds or not segments:
        segments.append(_encode(groups, pending_ds))
    return segments
