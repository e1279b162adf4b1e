"""peer/segments.py: one large Yjs update as bounded ones, applied in order = the original.

Documents with every kind of struct a CodeSync room holds (text with deletions, emoji
(surrogate pairs) and one item larger than the limit, maps, arrays of values, a second
client's edits, a diff from a state vector); a stock Yjs client applying the segments is
tested in tests/test_stock_big_document.py (Chromium).
"""

from __future__ import annotations

import random

import pycrdt
import pytest

from peer.segments import split_update


def rich_doc(seed: int) -> pycrdt.Doc:
    """(pycrdt 0.14 Text positions are UTF-8 bytes: every cut here is at an ASCII character.)"""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    text.insert(0, "héllo 😀 wörld\n" * 4000)  # one item of ~70 KB with surrogate pairs
    for i in range(200):
        text.insert(0, f"<{i}>")
        if i % 3 == 0 and len(text) > 20:
            del text[0:2]
    files = doc.get("files", type=pycrdt.Map)
    for i in range(50):
        files[f"f{i}"] = pycrdt.Map({"name": f"file{i}.py", "parent": "", "kind": "file"})
    doc.get("arr", type=pycrdt.Array).extend([{"k": i, "v": "x" * 40} for i in range(3000)])  # one Any item
    other = pycrdt.Doc()
    other.apply_update(doc.get_update())
    other.get("source", type=pycrdt.Text).insert(3, "SECOND CLIENT " * 800)
    del other.get("source", type=pycrdt.Text)[100:5000]
    doc.apply_update(other.get_update(doc.get_state()))
    return doc


def applied(segments: list[bytes]) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    for segment in segments:
        doc.apply_update(segment)
    return doc


def same(a: pycrdt.Doc, b: pycrdt.Doc) -> bool:
    return (a.get_state() == b.get_state() and str(a.get("source", type=pycrdt.Text)) == str(b.get("source", type=pycrdt.Text))
            and a.get("arr", type=pycrdt.Array).to_py() == b.get("arr", type=pycrdt.Array).to_py()
            and a.get("files", type=pycrdt.Map).to_py() == b.get("files", type=pycrdt.Map).to_py())


@pytest.mark.parametrize("limit", [1024, 4096, 65_000, 200 * 1024])
def test_segments_are_bounded_and_give_back_the_document(limit: int) -> None:
    doc = rich_doc(1)
    full = doc.get_update()
    segments = split_update(full, limit)
    assert segments is not None and all(len(s) <= limit for s in segments)
    assert len(segments) > 1 or len(full) <= limit
    assert same(applied(segments), doc)


def test_a_diff_from_a_state_vector_splits_too() -> None:
    doc = rich_doc(2)
    old = pycrdt.Doc()
    old.apply_update(doc.get_update())
    doc.get("source", type=pycrdt.Text).insert(0, "new line\n" * 20_000)
    diff = doc.get_update(old.get_state())
    segments = split_update(diff, 8192)
    assert segments is not None and len(segments) > 10 and all(len(s) <= 8192 for s in segments)
    for segment in segments:
        old.apply_update(segment)
    assert same(old, doc)


def test_an_update_that_fits_is_left_alone_and_an_unsplittable_value_is_said_so() -> None:
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, "small")
    update = doc.get_update()
    assert split_update(update, 1024) == [update]
    blob = pycrdt.Doc()
    blob.get("m", type=pycrdt.Map)["bin"] = b"\x00" * 50_000  # one binary value: no split inside it
    assert split_update(blob.get_update(), 8192) is None
    with pytest.raises(ValueError):
        split_update(rich_doc(3).get_update(), 100)  # too small to split into


def test_random_documents_always_round_trip() -> None:
    for seed in range(5):
        rnd = random.Random(seed)
        doc = pycrdt.Doc()
        text = doc.get("source", type=pycrdt.Text)
        for _ in range(400):
            s = "".join(rnd.choice("ab😀é\n") for _ in range(rnd.randrange(1, 300)))
            text.insert(rnd.choice([0, len(text)]), s)
            if rnd.random() < 0.3 and len(text) > 10:
                cut = len(str(text)[: rnd.randrange(1, 5)].encode())  # whole characters (UTF-8 positions)
                del text[0:cut]
        limit = rnd.choice([700, 2000, 9000])
        segments = split_update(doc.get_update(), limit)
        assert segments is not None and all(len(s) <= limit for s in segments)
        assert str(applied(segments).get("source", type=pycrdt.Text)) == str(text)
