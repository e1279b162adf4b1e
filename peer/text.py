"""Text positions: pycrdt 0.14 ``Text`` counts UTF-8 bytes, Yjs counts UTF-16 code units.

Browsers (Yjs, CodeMirror) report cursor and edit positions in UTF-16 units; Python
strings index code points; pycrdt's ``Text.insert``/``del text[a:b]`` take UTF-8 byte
offsets. A Python peer editing at a position must convert, or a single ``é`` or emoji
before the cursor puts its edit in the wrong place (or inside a character).
"""

from __future__ import annotations

from pycrdt import Text


def _check(pos: int, limit: int, unit: str) -> None:
    if pos < 0 or pos > limit:
        raise IndexError(f"{unit} position {pos} outside 0..{limit}")


def codepoint_to_utf8(s: str, pos: int) -> int:
    _check(pos, len(s), "code point")
    if s.isascii():  # O(1) in CPython: the common case for code costs nothing
        return pos
    return len(s[:pos].encode("utf-8"))


def utf8_to_codepoint(s: str, pos: int) -> int:
    raw = s.encode("utf-8")
    _check(pos, len(raw), "UTF-8")
    try:
        return len(raw[:pos].decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IndexError(f"UTF-8 position {pos} is inside a character") from exc


def codepoint_to_utf16(s: str, pos: int) -> int:
    _check(pos, len(s), "code point")
    if s.isascii():
        return pos
    return pos + sum(1 for ch in s[:pos] if ord(ch) > 0xFFFF)


def utf16_to_codepoint(s: str, pos: int) -> int:
    """Code-point index of a UTF-16 offset (an offset between surrogates is refused)."""
    if pos < 0:
        raise IndexError(f"UTF-16 position {pos} is negative")
    if s.isascii():
        _check(pos, len(s), "UTF-16")
        return pos
    units = 0
    for i, ch in enumerate(s):
        if units == pos:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > pos:
            raise IndexError(f"UTF-16 position {pos} is inside a surrogate pair")
    if units == pos:
        return len(s)
    raise IndexError(f"UTF-16 position {pos} outside 0..{units}")


def utf16_to_utf8(s: str, pos: int) -> int:
    return codepoint_to_utf8(s, utf16_to_codepoint(s, pos))


def utf8_to_utf16(s: str, pos: int) -> int:
    return codepoint_to_utf16(s, utf8_to_codepoint(s, pos))


def utf16_length(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def insert_utf16(text: Text, pos: int, value: str) -> None:
    """Insert ``value`` at a Yjs (UTF-16) position."""
    text.insert(utf16_to_utf8(str(text), pos), value)


def delete_utf16(text: Text, pos: int, length: int) -> None:
    """Delete ``length`` UTF-16 units starting at a Yjs position."""
    if length <= 0:
        return
    current = str(text)
    start = utf16_to_utf8(current, pos)
    end = utf16_to_utf8(current, pos + length)
    del text[start:end]


def insert_codepoints(text: Text, pos: int, value: str, current: str | None = None) -> None:
    """Insert at a Python (code point) index; pass ``current`` to skip re-reading the text."""
    s = str(text) if current is None else current
    text.insert(codepoint_to_utf8(s, pos), value)


def delete_codepoints(text: Text, pos: int, length: int, current: str | None = None) -> None:
    if length <= 0:
        return
    s = str(text) if current is None else current
    start = codepoint_to_utf8(s, pos)
    end = codepoint_to_utf8(s, pos + length)
    del text[start:end]
