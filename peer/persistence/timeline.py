"""The room's timeline: bursts of editing and the sessions they form. Pure, no I/O.

Why materialise bursts (``history_bursts``) instead of computing them on request: a long
room has hundreds of thousands of updates, and reading all their times to group them would
cost seconds. The writer extends the open burst as it commits (one upsert per commit), so the
timeline is a small indexed read.

- A **burst** is a run of main-document updates by one author (at write time's knowledge:
  the owner of each update's key client, else its delivering link) with pauses no longer
  than ``BURST_GAP_MS``, at most ``BURST_MAX_UPDATES`` updates and ``BURST_MAX_MS`` long (so
  finding a time inside one reads a bounded number of rows). It stores its key client, so its
  author is resolved again when read (a provisional client binding may have become direct).
- A **session** is a run of bursts with pauses no longer than ``SESSION_GAP_MS`` (computed
  when the timeline is read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

BURST_GAP_MS = 30_000
BURST_MAX_UPDATES = 2_000
BURST_MAX_MS = 10 * 60_000
SESSION_GAP_MS = 30 * 60_000


@dataclass(frozen=True)
class Burst:
    start_seq: int
    end_seq: int
    start_at: int
    end_at: int
    client: int | None
    via: int | None
    updates: int
    inserted: int


@dataclass(frozen=True)
class Entry:
    """One stored main-document update as the burst builder sees it."""

    seq: int
    at: int
    client: int | None  # key client (yupdate.key_client), None for delete-only updates
    via: int | None
    inserted: int  # clock units added
    author: int | None  # resolved when written


class BurstBuilder:
    """Extends the open burst with committed entries; the result is adopted only once the
    transaction that stores it committed (a failed commit is retried with the same entries)."""

    def __init__(self, current: Burst | None, author_of: Callable[[int | None, int | None], int | None]) -> None:
        self.current = current
        self._author_of = author_of

    def plan(self, entries: Iterable[Entry]) -> tuple[Burst | None, list[Burst]]:
        """(the open burst afterwards, every burst to upsert) — nothing is changed here."""
        current = self.current
        touched: dict[int, Burst] = {}
        for e in entries:
            if current is not None and self._continues(current, e):
                current = replace(
                    current, end_seq=e.seq, end_at=max(current.end_at, e.at), updates=current.updates + 1,
                    inserted=current.inserted + e.inserted,
                    client=current.client if current.client is not None else e.client,
                )
            else:
                current = Burst(e.seq, e.seq, e.at, e.at, e.client, e.via, 1, e.inserted)
            touched[current.start_seq] = current
        return current, list(touched.values())

    def adopt(self, current: Burst | None) -> None:
        self.current = current

    def _continues(self, burst: Burst, e: Entry) -> bool:
        if e.at - burst.end_at > BURST_GAP_MS or e.at - burst.start_at > BURST_MAX_MS:
            return False
        if burst.updates >= BURST_MAX_UPDATES:
            return False
        return self._author_of(burst.client, burst.via) == e.author


@dataclass(frozen=True)
class Session:
    bursts: tuple[Burst, ...]

    @property
    def start_at(self) -> int:
        return self.bursts[0].start_at

    @property
    def end_at(self) -> int:
        return self.bursts[-1].end_at


def sessions(bursts: Iterable[Burst], gap_ms: int = SESSION_GAP_MS) -> list[Session]:
    """Bursts (in seq order) grouped into sessions."""
    out: list[list[Burst]] = []
    for burst in bursts:
        if out and burst.start_at - out[-1][-1].end_at <= gap_ms:
            out[-1].append(burst)
        else:
            out.append([burst])
    return [Session(tuple(group)) for group in out]
