"""``codesync persist``: the persistence peer.

One signaling connection (a service token) for all rooms. The server says which rooms have
people in them (``room-active`` / ``room-idle``); for each active room this process competes
for the room's lease and, holding it, joins the room as an ordinary peer:

1. join with SyncStep1 answers *held*, load the stored documents (snapshot + log; the main
   document and the named document ``runs``) meanwhile;
2. put them in the room's docs, drop v1 run records from the main document (peer/persistence/v1.py),
   then release the hold — nobody ever syncs from a half-loaded document (it would look like
   the code was deleted);
3. store every remote update the peer library accepted — pycrdt applied it and the trust
   model's writer check let it through (main document: owners, editors; ``runs``: the
   runner), so nothing a viewer or a forger sent is ever stored — through one group-commit
   writer per document;
4. publish ``saved`` (status + stored state vector of the main document) in its awareness state;
5. serve the room's history to its members (app messages ``history``; peer/persistence/
   history_server.py), attributing every stored update to the server-stamped principal of
   the link it came on (peer/persistence/attribution.py, docs/history.md);
6. ``persist_idle_grace`` seconds after ``room-idle``: flush, compact, leave, release the lease.

Losing the lease (renewal failed: another process may own the room now) stops writing at
once; the room is left and competed for again. SIGTERM/SIGINT flush every room first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from prometheus_client import Counter, Gauge
from pycrdt import Doc
from sqlalchemy import text

from codesync.settings import Settings

from ..rights import Principal
from ..service import RoomPresence, RoomService, run_service

from . import history
from .attribution import Attribution
from .history_server import HistoryLimits, HistoryServer
from .lease import HeldLease, LeaseBackend, lease_backend
from .migrate_v2 import migrate_on_load
from .store import DocumentStore
from .v1 import drop_v1_runs, watch_v1_runs
from .writer import RoomWriter, SaveState, WriterConfig

PERSISTENCE = Principal(service="persistence")

log = logging.getLogger("codesync.persistence")

ROOMS_OWNED = Gauge("codesync_persist_rooms_owned", "rooms this persistence peer owns (holds the lease of)")
UPDATES_STORED = Counter("codesync_persist_updates_stored_total", "updates made durable")
PUBLISH_INTERVAL = 0.1  # seconds between two awareness updates carrying the save state ...
PUBLISH_LINKS = 8  # ... in a room of up to this many links; above, the interval grows with the links
PUBLISH_INTERVAL_MAX = 1.0  # (bench/room_scale.py: the save state sent to N links 10×/s was the
# persistence peer's only per-keystroke cost growing with N — docs/benchmarks.md "Room scale")
COMMITS = Counter("codesync_persist_commits_total", "update-log transactions committed")
V1_RUNS_DROPPED = Counter("codesync_persist_v1_runs_dropped_total", "schema v1 run records deleted from main documents")


def publish_interval(links: int) -> float:
    """Seconds between two save-state publishes in a room with ``links`` links."""
    return min(PUBLISH_INTERVAL_MAX, PUBLISH_INTERVAL * max(1.0, links / PUBLISH_LINKS))


class RoomKeeper(RoomPresence):
    """This process's part in one room: compete for the lease, persist while holding it."""

    task_prefix = "persist"
    service: "PersistenceService"

    def __init__(self, service: "PersistenceService", room_id: str, after: asyncio.Task | None = None) -> None:
        super().__init__(service, room_id, after)
        self.room = None  # peer.Room while persisting
        self.writer: RoomWriter | None = None  # the main document's
        self.named_writers: dict[str, RoomWriter] = {}  # named documents' (``runs``)
        self.attribution: Attribution | None = None
        self.history: HistoryServer | None = None
        self.owning = False
        self._commits_seen = self._updates_seen = 0
        self._publish_timer: asyncio.TimerHandle | None = None
        self._last_publish = 0.0

    async def _run(self) -> None:
        settings = self.service.settings
        ttl = settings.persist_lease_ttl
        while not self._leave.is_set():
            lost = asyncio.Event()
            held = HeldLease(self.service.leases, self.room_id, ttl, on_lost=lost.set)
            if await held.acquire():
                try:
                    await self._persist(held, lost)
                except Exception:  # noqa: BLE001 - one room's trouble must not end the service
                    log.exception("room %s: persisting failed; will retry", self.room_id)
                finally:
                    self.owning = False
                    await held.release()
            if not self._leave.is_set():
                # Somebody else owns it (or we just lost it): look again well before it can expire.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._leave.wait(), ttl * random.uniform(0.3, 0.5))

    async def _persist(self, held: HeldLease, lost: asyncio.Event) -> None:
        service = self.service
        doc = Doc()
        room = service.room(self.room_id, hold_sync=True, doc=doc)
        attribution = await history.load_attribution(service.store.engine, self.room_id)
        writer = RoomWriter(
            service.store,
            self.room_id,
            doc,
            config=service.writer_config,
            on_saved=lambda state: self._publish(room, state),
            may_write=held.may_write,
            attribution=attribution,
        )
        named = {
            name: RoomWriter(service.store, self.room_id, named_doc, config=service.writer_config,
                             may_write=held.may_write, name=name, attribution=attribution)
            for name, named_doc in room.docs.items()
        }

        def via(origin: str) -> int | None:
            return attribution.author_of(room.principal(origin))

        # Only what the peer library accepted arrives here (pycrdt applied it, the writer check
        # passed), each with the server-stamped principal of the link it came on.
        room.on_update(lambda update, origin: writer.submit(update, via(origin)))
        room.on_doc_update(lambda name, update, origin: named[name].submit(update, via(origin)))
        room.on_awareness(lambda changes, origin: self._claim_clients(room, attribution, changes, origin))
        # our own edits (the v1 clean-up) are the persistence service's
        own = attribution.author_of(PERSISTENCE)
        attribution.claim(doc.client_id, own)
        self._own_author = own
        self.room, self.writer, self.named_writers, self.owning = room, writer, named, True
        self.attribution = attribution
        writers = [writer, *named.values()]
        self._commits_seen = self._updates_seen = 0
        ROOMS_OWNED.inc()
        log.info("room %s: owner (lease %s)", self.room_id, service.leases.owner)
        started = False
        unwatch = None
        try:
            loading = asyncio.gather(*(w.load() for w in writers))
            try:
                await room.start()
                started = True
            finally:
                stored, *stored_named = await loading
            room.load(stored.update)
            writer.mark_loaded(stored)
            for (name, named_writer), named_stored in zip(named.items(), stored_named):
                room.load(named_stored.update, doc=name)
                named_writer.mark_loaded(named_stored)
            self._drop_v1_runs(doc, writer, "on load")
            migrate_on_load(doc, lambda u: writer.submit(u, self._own_author), self.room_id)  # schema v1 -> v2 (migrate_v2.py)
            unwatch = watch_v1_runs(doc, lambda: asyncio.get_running_loop().call_soon(
                self._drop_v1_runs, doc, writer, "written again"))
            room.release_sync()
            self.history = HistoryServer(
                room, service.store, attribution, {"": writer, **named}, limits=service.history_limits,
                viewers_default=service.settings.persist_history_viewers,
                viewers_read=await history.viewers_read(service.store.engine, self.room_id),
            )
            self.history.start()
            log.info("room %s: loaded %d bytes (snapshot upto %d, %d log rows)%s", self.room_id, len(stored.update),
                     stored.snapshot_seq, stored.log_rows,
                     "".join(f"; {n}: {len(s.update)} bytes" for n, s in zip(named, stored_named)))
            stop = asyncio.create_task(self._leave.wait())
            gone = asyncio.create_task(lost.wait())
            try:
                while not (self._leave.is_set() or lost.is_set() or any(w.failed for w in writers)):
                    await asyncio.wait({stop, gone}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                gone.cancel()
        finally:
            # Stop taking updates, then make what we have durable (only while still the owner).
            if self.history is not None:
                await self.history.stop()
                self.history = None
            if started:
                await room.stop()
            if unwatch is not None:
                unwatch()
            for w in writers:
                await w.close(compact=not lost.is_set())
                if w.state.pending:
                    log.error("room %s: left with %d updates of %s unsaved (peers still hold them)", self.room_id,
                              w.state.pending, w.name or "the main document")
            log.info("room %s: left (%d updates stored this time)", self.room_id,
                     sum(w.state.stored_updates for w in writers))
            self.room = self.writer = None
            self.named_writers = {}
            self.attribution = None
            if self._publish_timer is not None:
                self._publish_timer.cancel()
                self._publish_timer = None
            ROOMS_OWNED.dec()

    def _drop_v1_runs(self, doc: Doc, writer: RoomWriter, when: str) -> None:
        """v1 run records are dropped, not migrated (peer/persistence/v1.py): delete them as an
        edit of ours, stored and broadcast like any other."""
        if writer is not self.writer:
            return  # left the room meanwhile
        count, updates = drop_v1_runs(doc)
        if not count:
            return
        for update in updates:
            writer.submit(update, self._own_author)
        V1_RUNS_DROPPED.inc(count)
        log.info("room %s: deleted %d v1 run record(s) from the main document (%s); run records now live "
                 "in the runs document only the runner writes", self.room_id, count, when)

    @staticmethod
    def _claim_clients(room, attribution: Attribution, changes: dict, origin) -> None:
        """Awareness that arrived on a person's (or service's) own link names that link's
        document client id: bind it to them for good (attribution's *direct* bindings).
        The peer library's awareness gate already checked that the state names the stamped
        user and that no other link announced the client id first."""
        if not isinstance(origin, str):
            return  # our own state, or a timeout
        principal = room.principal(origin)
        if principal is None:
            return
        author = attribution.author_of(principal)
        for client in (*changes.get("added", ()), *changes.get("updated", ())):
            if isinstance(client, int) and client != room.awareness.client_id:
                attribution.claim(client, author)

    def _publish(self, room, state: SaveState) -> None:
        """Save state into awareness — at most every PUBLISH_INTERVAL, the latest always last.

        Peers rate-limit awareness per link (peer.room.Limits); publishing on every commit
        would get the final "saved" dropped and clients would wait for the next renewal.
        Each publish goes to every link, so in a room with more than PUBLISH_LINKS links the
        interval grows in proportion (up to PUBLISH_INTERVAL_MAX): the cost per keystroke
        stays flat in the room's size, "saved" shows up to that much later.
        """
        if state.commits > self._commits_seen:
            COMMITS.inc(state.commits - self._commits_seen)
            UPDATES_STORED.inc(state.stored_updates - self._updates_seen)
        self._commits_seen, self._updates_seen = state.commits, state.stored_updates
        if self._publish_timer is not None:
            return  # the pending trailing publish will send the latest state
        loop = asyncio.get_running_loop()
        wait = self._last_publish + publish_interval(len(room.links)) - loop.time()
        if wait > 0:
            self._publish_timer = loop.call_later(wait, self._publish_now, room, state)
        else:
            self._publish_now(room, state)

    def _publish_now(self, room, state: SaveState) -> None:
        self._publish_timer = None
        self._last_publish = asyncio.get_running_loop().time()
        if room is not self.room:
            return  # left meanwhile
        try:
            room.awareness.set_local_state({"service": "persistence", "saved": state.as_awareness()})
        except Exception:  # noqa: BLE001 - cosmetic; never let it break saving
            log.debug("room %s: could not publish save state", self.room_id, exc_info=True)


class PersistenceService(RoomService[RoomKeeper]):
    """Keeps a RoomKeeper per active room; owns the store and the lease backend."""

    def __init__(self, settings: Settings, store: DocumentStore | None = None) -> None:
        super().__init__(settings)
        self.store = store
        self.leases: LeaseBackend | None = None
        self.writer_config = WriterConfig(compact_rows=settings.persist_compact_rows,
                                          history_days=settings.persist_history_days)
        self.history_limits = HistoryLimits()

    @property
    def idle_grace(self) -> float:
        return self.settings.persist_idle_grace

    def make_presence(self, room_id: str, after: asyncio.Task | None) -> RoomKeeper:
        return RoomKeeper(self, room_id, after=after)

    async def start(self) -> None:
        if self.store is None:
            self.store = await DocumentStore.open(self.settings)
        self.leases = lease_backend(self.settings, self.store.engine)
        await self.connect()
        log.info("persistence peer %s connected to %s", self.leases.owner, self.client.url)

    async def database_ok(self) -> bool:
        async with self.store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    async def stop(self) -> None:
        """Flush and leave every room, release every lease, disconnect."""
        await super().stop()
        if self.leases is not None:
            await self.leases.close()
        if self.store is not None:
            await self.store.close()


async def run_persistence(settings: Settings) -> int:
    return await run_service(
        settings,
        lambda: PersistenceService(settings),
        lambda service: {"database": service.database_ok, "signaling": service.signaling_ok},
        command="persist", scope="persistence", what="persistence peer", logger=log,
    )
