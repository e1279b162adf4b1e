"""Which Yjs client-id clock ranges an update adds — read from the update's struct headers.

Why parse at all: attribution (docs/history.md) records, for every stored update, the
``(client, start, end)`` clock ranges it inserted, so that every character of the document
can later be traced to the update (and so to the user) that created it. pycrdt offers no
struct-level API, and ``pycrdt.get_state(update)`` only counts clients whose structs start at
clock 0 (Yjs semantics), so it says nothing about an incremental update. Diffing the live
document's state vector before and after each update would work, but costs a decode of the
*whole* state vector (one entry per client id the room ever saw) on every keystroke; this
walks only the update itself (a keystroke: one struct, a few microseconds).

The format is Yjs' update encoding v1 (``UpdateEncoderV1``), which y-protocols and pycrdt
use on the wire::

    varUint clients; per client: varUint structs, varUint client, varUint clock, structs...
    struct: uint8 info; GC (0) / Skip (10): varUint length;
            Item: [left origin id] [right origin id] [only without origins: parent info
            (varUint 1 + varString key | varUint 0 + id), varString parentSub] content
            (ref = info & 0x1F)
    ... then the delete set (not needed here).

Content lengths: Deleted = varUint; String = its UTF-16 length; JSON, Any = element count;
everything else 1. Every read is bounds-checked; anything unexpected raises ``ValueError``
(the caller then records the update without ranges — it was already accepted by pycrdt).
"""

from __future__ import annotations

_MAX_ANY_DEPTH = 64


class _Cursor:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    def u8(self) -> int:
        if self.pos >= self.end:
            raise ValueError("update truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def var_uint(self) -> int:
        data, pos, end = self.data, self.pos, self.end
        num = shift = 0
        while True:
            if pos >= end:
                raise ValueError("update truncated")
            b = data[pos]
            pos += 1
            num |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return num
            shift += 7
            if shift > 63:
                raise ValueError("varUint too long")

    def var_int(self) -> None:
        # lib0 varInt: 6 value bits + sign in the first byte, then 7-bit groups
        b = self.u8()
        while b & 0x80:
            b = self.u8()

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise ValueError("update truncated")
        self.pos += n

    def var_bytes(self) -> bytes:
        n = self.var_uint()
        start = self.pos
        self.skip(n)
        return self.data[start : self.pos]

    def skip_var_bytes(self) -> None:
        self.skip(self.var_uint())

    def any(self, depth: int = 0) -> None:
        if depth > _MAX_ANY_DEPTH:
            raise ValueError("value nested too deeply")
        tag = self.u8()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:
            self.var_int()
        elif tag == 124:
            self.skip(4)
        elif tag in (123, 122):
            self.skip(8)
        elif tag in (119, 116):  # string, Uint8Array
            self.skip_var_bytes()
        elif tag == 118:  # object
            for _ in range(self._count()):
                self.skip_var_bytes()
                self.any(depth + 1)
        elif tag == 117:  # array
            for _ in range(self._count()):
                self.any(depth + 1)
        else:
            raise ValueError(f"unknown value tag {tag}")

    def _count(self) -> int:
        n = self.var_uint()
        if n > self.end - self.pos:  # every element takes at least one byte
            raise ValueError("count larger than the update")
        return n


def _utf16_length(raw: bytes) -> int:
    if raw.isascii():
        return len(raw)
    text = raw.decode("utf-8", errors="replace")
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _content_length(cur: _Cursor, ref: int) -> int:
    if ref == 1:  # Deleted
        return cur.var_uint()
    if ref == 4:  # String
        return _utf16_length(cur.var_bytes())
    if ref == 2:  # JSON: count, then one string per element
        n = cur._count()
        for _ in range(n):
            cur.skip_var_bytes()
        return n
    if ref == 8:  # Any
        n = cur._count()
        for _ in range(n):
            cur.any()
        return n
    if ref in (3, 5):  # Binary, Embed
        cur.skip_var_bytes()
        return 1
    if ref == 6:  # Format: key, value
        cur.skip_var_bytes()
        cur.skip_var_bytes()
        return 1
    if ref == 7:  # Type: type ref, and a name for XmlElement (3) / XmlHook (5)
        if cur.var_uint() in (3, 5):
            cur.skip_var_bytes()
        return 1
    if ref == 9:  # Doc: guid, options
        cur.skip_var_bytes()
        cur.any()
        return 1
    raise ValueError(f"unknown content ref {ref}")


Range = tuple[int, int, int]
"""``(client, start_clock, end_clock)``: the update adds clocks ``start <= clock < end``."""


def inserted_ranges(update: bytes) -> list[Range]:
    """The clock ranges (per client id) whose structs ``update`` carries, in update order.

    Skip structs (gaps inside a client's section) split a range. Delete-only updates give [].
    """
    cur = _Cursor(update)
    out: list[Range] = []
    for _ in range(cur._count()):
        structs = cur._count()
        client = cur.var_uint()
        clock = cur.var_uint()
        start = clock
        for _ in range(structs):
            info = cur.u8()
            ref = info & 0x1F
            if ref == 0 or ref == 10:  # GC, Skip
                length = cur.var_uint()
                if ref == 10:
                    if clock > start:
                        out.append((client, start, clock))
                    clock += length
                    start = clock
                    continue
                clock += length
                continue
            if info & 0x80:  # left origin
                cur.var_uint()
                cur.var_uint()
            if info & 0x40:  # right origin
                cur.var_uint()
                cur.var_uint()
            if not info & 0xC0:  # no origins: the parent (and map key) is written
                if cur.var_uint() == 1:
                    cur.skip_var_bytes()  # root type key
                else:
                    cur.var_uint()
                    cur.var_uint()
                if info & 0x20:
                    cur.skip_var_bytes()  # parentSub (map key)
            clock += _content_length(cur, ref)
        if clock > start:
            out.append((client, start, clock))
    return out


def encode_ranges(ranges: list[Range]) -> bytes:
    """Compact storage form: varUint triplets ``client, start, length``."""
    out = bytearray()
    for client, start, end in ranges:
        for num in (client, start, end - start):
            while num > 0x7F:
                out.append(0x80 | (num & 0x7F))
                num >>= 7
            out.append(num)
    return bytes(out)


def decode_ranges(data: bytes | None) -> list[Range]:
    if not data:
        return []
    cur = _Cursor(bytes(data))
    out: list[Range] = []
    while cur.pos < cur.end:
        client = cur.var_uint()
        start = cur.var_uint()
        out.append((client, start, start + cur.var_uint()))
    return out


def key_client(ranges: list[Range]) -> int | None:
    """The client that added the most clocks (ties: the first) — whose update this mostly is."""
    best: int | None = None
    best_len = 0
    totals: dict[int, int] = {}
    for client, start, end in ranges:
        totals[client] = totals.get(client, 0) + end - start
        if totals[client] > best_len:
            best, best_len = client, totals[client]
    return best
