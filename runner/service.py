"""``codesync runner``: the runner service peer.

One signaling connection (a ``runner`` service token) for all rooms. For every room the
server reports active, the runner joins as an ordinary peer (its document syncs from the
others), and listens for type-101 app messages on its data channels:

- ``{"op":"run","run_id","language","state_vector"[,"entry","entry_path"]}`` → ``run-accepted`` /
  ``run-refused`` (with ``entry``, a file id, or ``entry_path``: the room's whole file tree runs
  from that file, as it is in the runner's copy of the document; without: the v1 ``source``);
- ``{"op":"stop","run_id"}`` → ``stop-accepted`` / ``stop-refused`` (CodeSync extension).

Who asks is the link's principal as the server knows it now (``room.principal``: the
``sender`` stamp on that peer's signaling messages, with the role the latest presence frame
shows — a demotion counts at once, on open links too) — never the message itself. Run
records go to the room's named document ``runs``, which peers accept only from the runner.
Everything about runs (roles, queue, rate limit, state-vector wait, output batching,
pruning) is in ``runner.runs``; the sandbox backend is chosen by ``CODESYNC_SANDBOX``. A room
is left ``runner_idle_grace`` seconds after ``room-idle`` once no run is queued or running there.

Several runners may serve one deployment: a client sends its request to one runner peer of
its choice (a data channel is point to point), so a run never executes twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from typing import Any

from prometheus_client import Counter, Gauge
from pycrdt import Doc

from peer.service import RoomPresence, RoomService, run_service
from codesync.backends import Backends
from codesync.settings import Settings

from .capacity import Capacity
from .identity import RunnerIdentity
from .languages import LanguageTable
from .runs import RoomRuns, RunnerConfig, RunRequest
from .sandbox.base import Limits, Sandbox

log = logging.getLogger("codesync.runner")

REQUESTS = Counter("codesync_runner_requests_total", "run/stop requests by op and outcome", ["op", "outcome"])
ROOMS = Gauge("codesync_runner_rooms", "rooms the runner is in")


# CODESYNC_SANDBOX names the backend (codesync/backends.py); the rest of the runner only
# speaks the Sandbox interface (prepare, health, start, close).
SANDBOXES: Backends[Sandbox] = Backends("sandbox", lambda settings: settings.sandbox)


@SANDBOXES.register("docker")
def _docker(settings: Settings, identity: RunnerIdentity | None = None) -> Sandbox:
    from .sandbox.docker import DockerSandbox

    return DockerSandbox(
        settings.runner_docker_url,
        image=settings.runner_image,
        identity=identity,
        cgroup_parent=settings.runner_cgroup_parent,
    )


@SANDBOXES.register("bubblewrap")
def _bubblewrap(settings: Settings, identity: RunnerIdentity | None = None) -> Sandbox:
    from .sandbox.bubblewrap import BubblewrapSandbox

    return BubblewrapSandbox(cgroup_root=settings.runner_cgroup_root, require_cgroups=settings.runner_require_cgroups)


def make_sandbox(settings: Settings, identity: RunnerIdentity | None = None) -> Sandbox:
    return SANDBOXES.create(settings, identity)


def runner_config(settings: Settings) -> RunnerConfig:
    """Per-run limits, and the one Capacity every room of this runner process shares."""
    return RunnerConfig(
        limits=Limits(
            wall_seconds=settings.runner_wall_seconds,
            cpu_seconds=settings.runner_cpu_seconds,
            memory_bytes=settings.runner_memory_mb * 1024 * 1024,
            processes=settings.runner_processes,
            output_bytes=settings.runner_output_kb * 1024,
        ),
        capacity=Capacity(
            max_concurrent=settings.runner_max_concurrent,
            max_per_user=settings.runner_max_per_user,
            max_queued=settings.runner_max_queued,
            max_queued_per_user=settings.runner_max_queued_per_user,
        ),
    )


class RoomRunner(RoomPresence):
    """The runner's presence in one room: a peer.Room plus the room's RoomRuns."""

    task_prefix = "runner"
    service: "RunnerService"

    def __init__(self, service: "RunnerService", room_id: str, after: asyncio.Task | None = None) -> None:
        super().__init__(service, room_id, after)
        self.room: Any = None
        self.runs: RoomRuns | None = None

    def _grace_over(self, grace: float) -> None:
        self._idle_timer = None
        if self.runs is not None and self.runs.busy:
            self.idle(grace)  # finish the runs first; look again later
        else:
            self._leave.set()

    async def _run(self) -> None:
        service = self.service
        doc, runs_doc = Doc(), Doc()
        # relay=False: the runner may not write the main document, so every CodeSync peer would
        # drop what it forwarded (wasted traffic on every keystroke).
        room = service.room(self.room_id, doc=doc, docs={"runs": runs_doc}, relay=False)
        runs = RoomRuns(doc, service.sandbox, service.languages, service.config, identity=service.identity,
                        runs_doc=runs_doc)
        room.on_app(lambda obj, peer_id: self._on_app(obj, peer_id))
        self.room, self.runs = room, runs
        ROOMS.inc()
        started = False
        try:
            await room.start()
            started = True
            # Heartbeat our runs; fail runs left queued/running by an earlier process of this
            # instance (at once) or by a runner that stopped updating them (runner.runs).
            runs.start()
            # Lets clients show which languages can run here (and that a runner is present), and
            # send Stop and console input to the runner whose instance/session a run names.
            room.awareness.set_local_state(
                {"service": "runner", "languages": service.languages.names, "backend": service.sandbox.name,
                 "instance": service.identity.instance, "session": service.identity.session}
            )
            log.info("room %s: joined as runner", self.room_id)
            await self._leave.wait()
        except Exception as exc:  # noqa: BLE001 - one room's trouble must not end the service
            log.warning("room %s: runner left after an error: %s", self.room_id, exc)
        finally:
            await runs.close()
            if started:
                with contextlib.suppress(Exception):
                    room.flush()
                    await room.stop()
            ROOMS.dec()
            self.room = self.runs = None
            log.info("room %s: left", self.room_id)

    async def _on_app(self, obj: dict[str, Any], peer_id: str) -> None:
        room, runs = self.room, self.runs
        if room is None or runs is None or not isinstance(obj, dict):
            return
        op = obj.get("op")
        if op not in ("run", "stop", "input"):
            return  # replies and other peers' ops are not for us
        principal = room.principal(peer_id)  # the effective, live role; not the stamp of the link's setup
        if principal is None or principal.service:
            return  # services never run code
        role = principal.role
        user_id = str(principal.user_id or "")
        name = str(principal.name or user_id)
        run_id = obj.get("run_id")
        run_id = run_id if isinstance(run_id, str) else ""
        if op == "run":
            decision = await runs.request(
                RunRequest(
                    run_id=run_id,
                    language=obj["language"][:40] if isinstance(obj.get("language"), str) else "",
                    user_id=user_id,
                    user_name=name,
                    role=role if user_id else None,
                    state_vector=_state_vector(obj.get("state_vector")),
                    entry=_short_str(obj.get("entry"), 64),
                    entry_path=_short_str(obj.get("entry_path"), 1000),
                )
            )
            reply = decision.message()
        elif op == "input":
            # console input: the same live role check as a stop, inside RoomRuns.input
            data = obj.get("data")
            decision = await runs.input(run_id, data if isinstance(data, str) else None, user_id,
                                        role if user_id else None, eof=obj.get("eof") is True)
            reply = decision.message("input")
        else:
            decision = await runs.stop(run_id, role if user_id else None, by=name)
            reply = {"op": "stop-accepted" if decision.accepted else "stop-refused", "run_id": run_id}
            if decision.reason:
                reply["reason"] = decision.reason
        REQUESTS.labels(op, "accepted" if decision.accepted else "refused").inc()
        if not decision.accepted:
            log.info("room %s: %s %s from %s refused: %s", self.room_id, op, run_id[:64], name, decision.reason)
        await room.send_app(peer_id, reply)


def _short_str(value: Any, limit: int) -> str | None:
    """An optional string field of a request: None when absent, "" when malformed or too long
    (so a bad entry is refused by name, never taken for "no entry")."""
    if value is None:
        return None
    return value if isinstance(value, str) and len(value) <= limit else ""


def _state_vector(value: Any) -> bytes | None:
    """Base64 SyncStep1 state vector; None when absent, b"" when malformed (RoomRuns refuses it)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 1_000_000:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


class RunnerService(RoomService[RoomRunner]):
    """Keeps a RoomRunner per active room; owns the sandbox and the language table."""

    def __init__(self, settings: Settings, sandbox: Sandbox | None = None) -> None:
        super().__init__(settings)
        self.identity = RunnerIdentity.current(settings.runner_instance)
        self.sandbox = sandbox or make_sandbox(settings, self.identity)
        self.languages = LanguageTable.load(settings.runner_languages)
        self.config = runner_config(settings)

    @property
    def idle_grace(self) -> float:
        return self.settings.runner_idle_grace

    def make_presence(self, room_id: str, after: asyncio.Task | None) -> RoomRunner:
        return RoomRunner(self, room_id, after)

    async def start(self) -> None:
        # Never raises: a sandbox that cannot apply its limits is reported (log once, /healthz)
        # and its runs fail with the reason; the runner keeps serving the rooms.
        await self.sandbox.prepare(self.config.limits)
        # Advertise (awareness ``languages``) only what the sandbox really has; warm the
        # sandbox for the toolchains' own limits too (runner/languages.py).
        await self.languages.probe(self.sandbox, self.config.limits)
        await self.connect()
        log.info("runner (%s sandbox; %s) connected to %s", self.sandbox.name, ", ".join(self.languages.names),
                 self.client.url)

    async def sandbox_ok(self) -> bool | str:
        """The backend's own check: binary/engine there, seccomp and cgroup limits applicable."""
        health = await self.sandbox.health()
        return True if health.ready else health.reason

    async def stop(self) -> None:
        await super().stop()
        await self.sandbox.close()


async def run_runner(settings: Settings) -> int:
    return await run_service(
        settings,
        lambda: RunnerService(settings),
        lambda service: {"signaling": service.signaling_ok, "sandbox": service.sandbox_ok},
        command="runner", scope="runner", what="runner", logger=log,
    )
