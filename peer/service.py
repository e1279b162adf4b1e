"""The lifecycle every service peer (persistence, runner) shares.

A service peer is one process with one signaling connection (a service token) for all
rooms. The server tells it which rooms have people in them (``room-active`` /
``room-idle``); the service keeps one per-room object (a ``RoomPresence``) for each active
room and lets it go ``idle_grace`` seconds after the room went idle. The two services differ
only in what they do *inside* a room (persistence: lease + writer; runner: runs), so that
part is a hook (``RoomPresence._run``) and the bookkeeping lives here once:

- ``RoomPresence``: start / active / idle(grace) / stop, the idle timer, waiting for a
  previous presence in the same room that is still leaving;
- ``RoomService``: the signaling client and its callbacks, the rooms table, stop-all;
- ``run_service``: the ``codesync persist`` / ``codesync runner`` process — settings check,
  SIGTERM/SIGINT, ops server (``codesync.opsserver``), orderly stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar, Union

from codesync.models import ROOM_ID_MAX
from codesync.settings import Settings

log = logging.getLogger("codesync.service")

SERVICE_MAX_CONNS = 1000  # links of a service peer in one room

Check = Callable[[], Union[bool, str, Awaitable[Union[bool, str]]]]


class RoomPresence:
    """One service's part in one room; subclasses put the work in ``_run``.

    ``_run`` should return once ``self._leave`` is set. ``after`` is the task of an earlier
    presence in the same room that is still leaving: the new one waits for it, so a room is
    never joined twice by one process.
    """

    task_prefix = "room"

    def __init__(self, service: "RoomService[Any]", room_id: str, after: asyncio.Task | None = None) -> None:
        self.service = service
        self.room_id = room_id
        self._after = after
        self._leave = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._main(), name=f"{self.task_prefix}:{self.room_id}")

    def active(self) -> None:
        """People are (again) in the room: forget a pending idle grace."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def idle(self, grace: float) -> None:
        """The room went idle: leave after ``grace`` seconds unless it becomes active again."""
        if self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(grace, self._grace_over, grace)

    def _grace_over(self, grace: float) -> None:
        """Hook: the grace has passed; leave (the runner looks at its runs first)."""
        self._idle_timer = None
        self._leave.set()

    async def stop(self) -> None:
        self.active()
        self._leave.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task

    @property
    def stopping(self) -> bool:
        return self._leave.is_set()

    async def _main(self) -> None:
        try:
            if self._after is not None:
                await asyncio.wait({self._after})
                self._after = None
            await self._run()
        finally:
            self.service._room_done(self)

    async def _run(self) -> None:
        raise NotImplementedError


P = TypeVar("P", bound=RoomPresence)


class RoomService(Generic[P]):
    """The service-wide half: one SignalingClient, the rooms table, stop-all.

    Subclasses implement ``idle_grace`` and ``make_presence`` and may
    extend ``start``/``stop`` (open/close their own resources around ``connect``/``super().stop``).
    """

    max_room_id = ROOM_ID_MAX  # a longer topic is no room of ours (tests may lower it)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None
        self.token_keeper: Any = None  # signaling.servicetoken.ServiceTokenKeeper, from connect()
        self.rooms: dict[str, P] = {}
        self._stopping = False

    @property
    def idle_grace(self) -> float:
        raise NotImplementedError

    def make_presence(self, room_id: str, after: asyncio.Task | None) -> P:
        raise NotImplementedError

    async def connect(self) -> None:
        from signaling.servicetoken import ServiceTokenKeeper

        from .signaling_client import SignalingClient

        # Service tokens expire: trade ours in early; each reconnect uses the newest one.
        # run_service refused to start without a signaling URL and a service token.
        url, token = self.settings.signaling_url or "", self.settings.service_token or ""
        self.token_keeper = ServiceTokenKeeper(self.settings.http_signaling_url, token,
                                               token_file=self.settings.service_token_file)
        self.token_keeper.start()
        self.client = SignalingClient(
            url, token,
            token_provider=self.token_keeper.current,
        )
        self.client.on_room_active(self._on_active)
        self.client.on_room_idle(self._on_idle)
        self.client.on_connected(self._on_connected)
        await self.client.start()

    def room(self, room_id: str, **kwargs: Any) -> Any:  # -> peer.Room
        """A Room over the service's connection, ICE restricted as configured (``CODESYNC_ICE_HOSTS``).

        ``max_conns`` defaults to SERVICE_MAX_CONNS: a service peer links to every member of
        a room (docs/protocol.md "Room topology": members never count it against their own
        limit, so the room's graph stays connected through it)."""
        from .room import Room

        kwargs.setdefault("max_conns", SERVICE_MAX_CONNS)
        return Room.over(self.client, room_id, ice_hosts=self.settings.ice_host_list, **kwargs)

    def _on_active(self, topic: str) -> None:
        if self._stopping:
            return
        if not topic or len(topic) > self.max_room_id:
            log.warning("ignoring room-active for an unusable room id %r", topic[:80])
            return
        presence = self.rooms.get(topic)
        if presence is None or presence.stopping:
            # new, or active again while leaving: start over after it
            presence = self.rooms[topic] = self.make_presence(topic, presence._task if presence else None)
            presence.start()
        presence.active()

    def _on_idle(self, topic: str) -> None:
        presence = self.rooms.get(topic)
        if presence is not None:
            presence.idle(self.idle_grace)

    def _on_connected(self) -> None:
        # After a reconnect the server re-sends room-active for every active room; a room that
        # went idle while we were away gets no room-idle, so every room starts its idle grace
        # now and the room-active frames that follow cancel it.
        for presence in self.rooms.values():
            presence.idle(self.idle_grace)

    def _room_done(self, presence: RoomPresence) -> None:
        if self.rooms.get(presence.room_id) is presence:
            del self.rooms[presence.room_id]

    def signaling_ok(self) -> bool | str:
        return True if self.client is not None and self.client.connected else "not connected"

    async def start(self) -> None:
        await self.connect()

    async def stop(self) -> None:
        """Leave every room (each presence finishes its own way), then disconnect."""
        self._stopping = True
        await asyncio.gather(*(p.stop() for p in list(self.rooms.values())), return_exceptions=True)
        if self.client is not None:
            await self.client.stop()
        if self.token_keeper is not None:
            await self.token_keeper.stop()


S = TypeVar("S", bound=RoomService[Any])


async def run_service(
    settings: Settings,
    make: Callable[[], S],
    checks: Callable[[S], Mapping[str, Check]],
    *,
    command: str,
    scope: str,
    what: str,
    logger: logging.Logger = log,
) -> int:
    """Run one service process until SIGTERM/SIGINT; the exit code for ``codesync <command>``.

    2: not configured (or ``make`` failed: a bad languages file...), 1: could not start, 0: stopped.
    The ops server (``/healthz``, ``/metrics``) is named ``scope`` and runs ``checks(service)``;
    messages go to the service's own ``logger``.
    """
    if not settings.signaling_url or not settings.service_token:
        logger.error("codesync %s needs CODESYNC_SIGNALING_URL and CODESYNC_SERVICE_TOKEN "
                     "(make one with: codesync token --scope %s)", command, scope)
        return 2
    from codesync.opsserver import ops_server

    try:
        service = make()
    except Exception as exc:  # noqa: BLE001 - a clear line, not a traceback
        logger.error("%s could not start: %s", what, exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await service.start()
    except Exception as exc:  # noqa: BLE001 - a clear line, not a traceback
        logger.error("%s could not start: %s", what, exc)
        await service.stop()
        return 1
    async with ops_server(settings, scope, checks(service)):
        await stop.wait()
        logger.info("stopping: leaving %d rooms", len(service.rooms))
        await service.stop()
    return 0
