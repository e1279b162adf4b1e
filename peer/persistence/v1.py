"""Schema v1 leftovers in a room's main document, and what the persistence peer does with them.

In schema v1 run records lived in the main document's ``runs`` map, which every editor could
write (issue 11: forged "finished" runs, other people's names). They now live in the named
document ``runs`` that only the runner writes (docs/protocol.md, "The room documents").
A forged v1 record cannot be told from a real one, so v1 records are **dropped, not
migrated**: the persistence peer deletes the main document's ``runs`` entries when it loads
a room and whenever an editor writes one again, as an edit of its own that is stored and
broadcast like any other (clients ignore that map; deleting it keeps storage honest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pycrdt import Doc, Map

log = logging.getLogger("codesync.persistence")

V1_RUNS = "runs"


def drop_v1_runs(doc: Doc) -> tuple[int, list[bytes]]:
    """Delete every entry of the main document's v1 ``runs`` map in one transaction.

    Returns how many entries were deleted and the update(s) that deletion produced (for the
    caller to store). ``(0, [])`` when there is nothing to delete.
    """
    try:
        runs = doc.get(V1_RUNS, type=Map)
        keys = list(runs.keys())
    except Exception:  # noqa: BLE001 - a root of another type under that name: not v1 runs
        log.warning("the main document's %r is not a map; left alone", V1_RUNS)
        return 0, []
    if not keys:
        return 0, []
    produced: list[bytes] = []
    sub = doc.observe(lambda event: produced.append(event.update))
    try:
        with doc.transaction():
            for key in keys:
                del runs[key]
    finally:
        doc.unobserve(sub)
    return len(keys), produced


def watch_v1_runs(doc: Doc, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` after any change of the main document's v1 ``runs`` map (the caller
    schedules :func:`drop_v1_runs`; observers must not edit the document they observe).
    Returns the function that stops watching."""
    try:
        runs = doc.get(V1_RUNS, type=Map)
        sub = runs.observe(lambda _event: callback())
    except Exception:  # noqa: BLE001 - not a map (see drop_v1_runs)
        return lambda: None
    return lambda: runs.unobserve(sub)
