"""The editing traces (josephg/editing-traces) as benchmarks and tests replay them.

A trace file (``TRACES/<name>.json.gz``) holds ``startContent``, ``endContent`` and ``txns``:
each transaction a list of ``[pos, delete, insert]`` patches applied in order. One place
reads them so every replay (benchmarks, trace tests, the soak) means the same thing.

Positions in the traces are *code points* (Python string indices); pycrdt's ``Text`` takes
UTF-8 byte offsets. Replaying into pycrdt therefore goes through ``peer.text``'s
``insert_codepoints``/``delete_codepoints`` with the current content alongside — a trace with
a single non-ASCII character before an edit would otherwise land the edit in the wrong place
(or inside a character). The current content is tracked as a Python string next to the
``Text`` so the conversion never has to read the document back.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycrdt

from peer import text as ptext
from tests.helpers.components import ROOT

# The editing traces live in the repository (tests/data/traces, CC BY 4.0); CODESYNC_TRACES overrides.
TRACES = Path(os.environ.get("CODESYNC_TRACES") or ROOT / "tests" / "data" / "traces")

Trace = dict[str, Any]


def trace_path(name: str) -> Path:
    """Where trace ``name`` (e.g. ``"rustcode"``) lives; it may be missing (see ``TRACES``)."""
    return TRACES / f"{name}.json.gz"


def load_trace(name: str) -> Trace:
    with gzip.open(trace_path(name), "rt", encoding="utf-8") as f:
        return json.load(f)


def apply_patches(current: str, patches: list) -> str:
    """One transaction applied to a plain string (code-point positions)."""
    for pos, delete, insert in patches:
        if delete:
            current = current[:pos] + current[pos + delete :]
        if insert:
            current = current[:pos] + insert + current[pos:]
    return current


def replay_to_text(trace: Trace, limit: int | None = None) -> str:
    """The content after the first ``limit`` transactions (all: ``endContent``), no CRDT involved."""
    current = trace["startContent"]
    for txn in trace["txns"][:limit]:
        current = apply_patches(current, txn["patches"])
    return current


def apply_txn(text: pycrdt.Text, current: str, patches: list) -> str:
    """Apply one trace transaction to ``text`` as one pycrdt transaction; returns the new content.

    ``current`` must be ``str(text)``; positions are converted from code points to UTF-8.
    """
    with text.doc.transaction():
        for pos, delete, insert in patches:
            if delete:
                ptext.delete_codepoints(text, pos, delete, current)
                current = current[:pos] + current[pos + delete :]
            if insert:
                ptext.insert_codepoints(text, pos, insert, current)
                current = current[:pos] + insert + current[pos:]
    return current


def replay(text: pycrdt.Text, trace: Trace, limit: int | None = None) -> Iterator[str]:
    """Apply the trace's transactions to ``text`` one by one, yielding the content after each.

    A plain generator, so an async caller can yield to the event loop between transactions
    (that is what lets a peer coalesce what it sends). ``text`` must hold ``startContent``.
    """
    current = trace["startContent"]
    if str(text) != current:
        raise ValueError("the text does not hold the trace's startContent")
    for txn in trace["txns"][:limit]:
        current = apply_txn(text, current, txn["patches"])
        yield current


def trace_updates(trace: Trace, limit: int | None = None) -> tuple[list[bytes], str]:
    """One Yjs update per trace transaction (what an editor emits), and the content reached."""
    doc = pycrdt.Doc()
    text = doc.get("source", type=pycrdt.Text)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    current = trace["startContent"]
    for current in replay(text, trace, limit):
        pass
    return updates, current
