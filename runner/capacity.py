"""How many sandboxes one runner process runs at once, and who gets the next free one.

Each room runs one job at a time (``runner.runs``), but rooms are unlimited: without this,
one user holding hundreds of rooms holds hundreds of sandboxes. ``Capacity`` is shared by
every room of a runner process and bounds three things:

- **sandboxes at once** (``max_concurrent``), **per user** (``max_per_user``, across all
  rooms) and **per room** (one, the room's ``group``): every accepted run waits *in one
  line* for a sandbox, a room's runs in their order;
- **admission**: a run is accepted only while the user has fewer than ``max_per_user +
  max_queued_per_user`` runs running or waiting here, and the runner fewer than
  ``max_concurrent + max_queued`` in all. Beyond that the request is refused with a clear
  reason, because the wait would have no useful bound; below it, every admitted run starts
  within about ``ceil((max_queued + max_concurrent) / max_concurrent)`` run lengths (each
  run is bounded by its wall-clock limit).

The line is **fair across users** (round robin, as start-time fair queueing with unit
costs), not first come first served: a run entering the line gets the round
``max(current round, its user's last round) + 1``, the current round being that of the
last run given a sandbox; the smallest (round, arrival) whose user is under
``max_per_user`` gets the next sandbox. So users take turns — a user with one run waiting
goes before a heavy user's second and later ones — and nobody's run is held back by
another user's limit or another room's busy run (no head-of-line blocking: such a run is
passed over and keeps its place for when it can start). A run's round never changes, so the
order of the runs already waiting never changes either; the position a run shows
(``queue_position``, 1 = next) is its rank in that order. It moves down as runs ahead
start or leave, and up only when a newcomer belongs to an earlier round (a light user
overtaking a heavy user's later runs — that is the fairness).

Limits are per runner process; several runners each apply their own. All of this runs on
the event loop (no locks): ``admit``, ``release`` and dispatching are synchronous.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Gauge

log = logging.getLogger(__name__)

SANDBOXES = Gauge("codesync_runner_sandboxes", "sandboxes running now (this runner process)")
WAITING = Gauge("codesync_runner_waiting", "runs in line for a sandbox (this runner process)")

PositionCallback = Callable[[int], None]


@dataclass(eq=False)
class Ticket:
    """One admitted run: ``acquire()`` waits for a sandbox, ``release()`` gives everything back."""

    capacity: "Capacity"
    user_id: str
    seq: int
    group: object = None  # runs of one group (a room) start one at a time, in arrival order
    state: str = "admitted"  # admitted -> waiting -> running -> released
    round: int = 0  # set when it enters the line
    position: int | None = None
    on_position: PositionCallback | None = None
    _granted: asyncio.Future | None = field(default=None, repr=False)

    def enter(self, on_position: PositionCallback | None = None) -> None:
        """Take a place in line (once the run is accepted). ``on_position(n)`` is called
        whenever that place changes (1 = next), also right away."""
        if self.state == "admitted":
            self.on_position = on_position
            self._granted = asyncio.get_running_loop().create_future()
            self.capacity._enter(self)

    async def acquire(self) -> bool:
        """Wait until a sandbox is ours (True), or the ticket was released (False)."""
        self.enter(self.on_position)
        if self.state == "running":
            return True
        if self.state != "waiting" or self._granted is None:
            return False
        try:
            return await asyncio.shield(self._granted)
        except asyncio.CancelledError:
            self.release()
            raise

    def abort(self) -> None:
        """Stop waiting (the run was stopped); ``acquire`` returns False. Releases the ticket."""
        self.release()

    def release(self) -> None:
        """Give back the sandbox or the place in line (idempotent)."""
        self.capacity._release(self)


class Capacity:
    def __init__(
        self,
        max_concurrent: int | None = None,
        max_per_user: int | None = None,
        max_queued: int | None = None,
        max_queued_per_user: int | None = None,
    ) -> None:
        """``None`` means unlimited (the default for a RoomRuns built without a runner)."""
        self.max_concurrent = max_concurrent
        self.max_per_user = max_per_user
        self.max_queued = max_queued
        self.max_queued_per_user = max_queued_per_user
        self._seq = itertools.count()
        self._line: list[Ticket] = []  # waiting for a sandbox, arrival order
        self._running: dict[str, int] = {}  # user -> sandboxes held
        self._group_running: set[object] = set()  # groups (rooms) with a sandbox
        self._round = 0  # round of the last run given a sandbox (virtual time)
        self._last_round: dict[str, int] = {}  # user -> round of their latest run in line
        self._admitted: dict[str, int] = {}  # user -> tickets not released (any state)
        self.running = 0
        self.admitted = 0
        self.peak = 0  # most sandboxes held at once (benchmarks and tests read it)

    # ------------------------------------------------------------------ admission
    def admit(self, user_id: str, group: object = None) -> Ticket | str:
        """A ticket for one more run of ``user_id``, or the reason it is refused."""
        mine = self._admitted.get(user_id, 0)
        if self.max_per_user is not None and self.max_queued_per_user is not None:
            allowed = self.max_per_user + self.max_queued_per_user
            if mine >= allowed:
                return (f"you already have {mine} run{'s' if mine != 1 else ''} running or waiting on this runner "
                        f"(at most {self.max_per_user} run at once, {self.max_queued_per_user} more may wait); "
                        "wait for one to finish")
        if self.max_concurrent is not None and self.max_queued is not None:
            if self.admitted >= self.max_concurrent + self.max_queued:
                return (f"the runner is at capacity ({self.running} runs running, "
                        f"{self.admitted - self.running} waiting); try again shortly")
        ticket = Ticket(self, user_id, next(self._seq), group)
        self._admitted[user_id] = mine + 1
        self.admitted += 1
        return ticket

    @classmethod
    def unlimited(cls) -> "Capacity":
        return cls()

    # ------------------------------------------------------------------ the line
    def _enter(self, ticket: Ticket) -> None:
        ticket.state = "waiting"
        ticket.round = max(self._round, self._last_round.get(ticket.user_id, 0)) + 1
        self._last_round[ticket.user_id] = ticket.round
        self._line.append(ticket)
        self._dispatch()

    def _release(self, ticket: Ticket) -> None:
        if ticket.state == "released":
            return
        if ticket.state == "running":
            self.running -= 1
            self._dec(self._running, ticket.user_id)
            self._group_running.discard(ticket.group)
        elif ticket.state == "waiting":
            self._line.remove(ticket)
        self._dec(self._admitted, ticket.user_id)
        self.admitted -= 1
        ticket.state = "released"
        if ticket._granted is not None and not ticket._granted.done():
            ticket._granted.set_result(False)
        self._dispatch()

    @staticmethod
    def _dec(counts: dict[str, int], user_id: str) -> None:
        left = counts.get(user_id, 0) - 1
        if left > 0:
            counts[user_id] = left
        else:
            counts.pop(user_id, None)

    def _order(self) -> list[Ticket]:
        """The line in serving order: (round, arrival)."""
        return sorted(self._line, key=lambda ticket: (ticket.round, ticket.seq))

    def _eligible(self, ticket: Ticket, first_of_group: dict[object, int]) -> bool:
        if self.max_per_user is not None and self._running.get(ticket.user_id, 0) >= self.max_per_user:
            return False
        if ticket.group is None:
            return True
        return ticket.group not in self._group_running and first_of_group[ticket.group] == ticket.seq

    def _dispatch(self) -> None:
        while self._line and (self.max_concurrent is None or self.running < self.max_concurrent):
            first_of_group: dict[object, int] = {}
            for ticket in self._line:  # arrival order: the first seen of a group is its next
                first_of_group.setdefault(ticket.group, ticket.seq)
            chosen = next((t for t in self._order() if self._eligible(t, first_of_group)), None)
            if chosen is None:
                break
            self._line.remove(chosen)
            self._round = max(self._round, chosen.round)
            chosen.state = "running"
            chosen.position = None
            self.running += 1
            self.peak = max(self.peak, self.running)
            self._running[chosen.user_id] = self._running.get(chosen.user_id, 0) + 1
            if chosen.group is not None:
                self._group_running.add(chosen.group)
            if chosen._granted is not None and not chosen._granted.done():
                chosen._granted.set_result(True)
        # Users whose last round is behind the current one start from it anyway: forget them.
        for user in [u for u, r in self._last_round.items() if r <= self._round]:
            del self._last_round[user]
        SANDBOXES.set(self.running)
        WAITING.set(len(self._line))
        for rank, ticket in enumerate(self._order(), start=1):
            if ticket.position != rank:
                ticket.position = rank
                if ticket.on_position is not None:
                    try:
                        ticket.on_position(rank)
                    except Exception:  # noqa: BLE001 - one room's document must not stop the line
                        log.exception("queue position update failed")

    # ------------------------------------------------------------------ introspection
    def running_for(self, user_id: str) -> int:
        return self._running.get(user_id, 0)

    def admitted_for(self, user_id: str) -> int:
        return self._admitted.get(user_id, 0)

    @property
    def waiting(self) -> int:
        return len(self._line)
