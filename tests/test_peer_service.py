"""peer.service: the room bookkeeping the persistence peer and the runner share.

Room-active/idle frames are fed straight into the service's callbacks (what its
SignalingClient would call); the end-to-end behaviour over real signaling is in
tests/test_persistence_peer.py and tests/test_runner_service.py.
"""

from __future__ import annotations

import asyncio

import pytest

from peer.service import RoomPresence, RoomService, run_service
from codesync.settings import Settings
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.timeout(30)


class Presence(RoomPresence):
    def __init__(self, service: "Service", room_id: str, after: asyncio.Task | None) -> None:
        super().__init__(service, room_id, after)
        self.joined = asyncio.Event()
        self.left = asyncio.Event()
        self.hold_leaving = asyncio.Event()
        self.hold_leaving.set()

    async def _run(self) -> None:
        self.service.log.append(("join", self.room_id, id(self)))
        self.joined.set()
        await self._leave.wait()
        await self.hold_leaving.wait()
        self.service.log.append(("leave", self.room_id, id(self)))
        self.left.set()


class Service(RoomService[Presence]):
    max_room_id = 8

    def __init__(self, grace: float = 0.05) -> None:
        super().__init__(Settings())
        self.grace = grace
        self.log: list[tuple[str, str, int]] = []

    @property
    def idle_grace(self) -> float:
        return self.grace

    def make_presence(self, room_id: str, after: asyncio.Task | None) -> Presence:
        return Presence(self, room_id, after)


async def test_room_is_left_after_the_idle_grace_unless_active_again() -> None:
    service = Service(grace=0.2)
    service._on_active("r1")
    first = service.rooms["r1"]
    await asyncio.wait_for(first.joined.wait(), 5)
    service._on_idle("r1")
    service._on_active("r1")  # back before the grace is over: stays
    assert service.rooms["r1"] is first and not first.stopping
    service._on_idle("r1")
    await asyncio.wait_for(first.left.wait(), 5)
    await wait_for(lambda: "r1" not in service.rooms, 5, what="room forgotten")
    await service.stop()


async def test_active_again_while_leaving_starts_over_after_the_old_presence() -> None:
    service = Service()
    service._on_active("r1")
    old = service.rooms["r1"]
    await asyncio.wait_for(old.joined.wait(), 5)
    old.hold_leaving.clear()  # leaving takes a while (a persistence flush)
    service._on_idle("r1")
    await wait_for(lambda: old.stopping, 5, what="grace over")
    service._on_active("r1")
    new = service.rooms["r1"]
    assert new is not old
    for _ in range(5):  # a few loop turns: a presence that did not wait would have joined by now
        await asyncio.sleep(0)
    assert not new.joined.is_set(), "joined while the old presence was still in the room"
    old.hold_leaving.set()
    await asyncio.wait_for(new.joined.wait(), 5)
    assert [e[0] for e in service.log] == ["join", "leave", "join"]
    assert service.rooms["r1"] is new  # the old one finishing does not drop the new one
    await service.stop()
    assert new.left.is_set() and not service.rooms


async def test_reconnect_starts_every_grace_and_unusable_ids_are_ignored() -> None:
    service = Service(grace=0.05)
    service._on_active("")
    service._on_active("x" * 9)  # longer than max_room_id
    assert not service.rooms
    service._on_active("a")
    service._on_active("b")
    await asyncio.wait_for(service.rooms["b"].joined.wait(), 5)
    service._on_active("b")  # re-sent after the reconnect for the still active room
    service._on_connected()
    service._on_active("b")
    await wait_for(lambda: "a" not in service.rooms, 5, what="room a left (no room-active after reconnect)")
    assert "b" in service.rooms and not service.rooms["b"].stopping
    await service.stop()
    service._on_active("c")  # stopping: no new rooms
    assert not service.rooms


async def test_run_service_refuses_to_start_without_signaling_settings() -> None:
    made: list[Service] = []
    code = await run_service(Settings(), lambda: made.append(Service()) or made[-1], lambda s: {},
                             command="persist", scope="persistence", what="test service")
    assert code == 2 and not made
