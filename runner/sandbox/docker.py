"""The deployment sandbox: one throwaway container per run, through the Docker Engine API.

Same limits as bubblewrap, expressed as container options: ``network_mode=none``,
memory (+swap) / pids / CPU limits, a read-only root with a size-limited tmpfs work dir,
``cap_drop=ALL``, ``no-new-privileges``, uid/gid 65534, a capped json-file log and explicit
ulimits (CPU seconds, address space, file size, open files, no cores). When the container's
main process exits, Docker kills everything else in it, so detached children die too.

Starting a container is the slow part (runc: 300-450 ms on this loaded machine), so the
backend keeps a small pool of *started* containers, each blocked reading one line from its
stdin. A run takes one and writes, on that same stdin, a line with a byte count, a script of
exactly that many bytes, and the project as a tar the script unpacks into the tmpfs (``head
-c SIZE | tar -x``) before it execs compile/run. ``read`` (dash reads byte by byte) and ``head
-c N`` (GNU head never reads past N) consume exactly the header, the script and the tar, so
whatever follows on the stream is the program's stdin: ``write_stdin`` sends more bytes down the attached socket and
``close_stdin`` half-closes it (``stdin_once``: the container's stdin reaches EOF). Each
container serves exactly one run and is then removed; a refill starts in the background.
No volume, no host path, no environment carrying the code.

Seccomp: Docker's own default profile stays in force (no ``seccomp=`` option is ever passed;
``health()`` checks that the engine runs with seccomp and refuses a daemon without it). It
already refuses nested user namespaces (``unshare``, ``clone`` with namespace flags,
``clone3`` → ENOSYS), keyrings, bpf, mounts and perf events to a container without
CAP_SYS_ADMIN, but allows ``ptrace`` and ``process_vm_*`` on current kernels. So the run
script stacks the bubblewrap backend's deny-list (``seccomp.py``) on top before any user
code: ``python3 -I -S -c LOADER`` loads it with ``prctl(PR_SET_SECCOMP)`` and execs the
compile/run shell. Filters stack — the stricter answer wins — so both backends refuse the
same calls. A run image therefore needs ``python3`` (the run image has it; a custom image
without it gets a clear error instead of an unfiltered run).

Cgroups: Docker applies memory/pids/CPU through its own cgroups; ``health()`` checks that
the engine reports support for each limit (else Docker silently drops it), and a container
whose cgroup cannot be set up (runc: "unable to apply cgroup configuration") refuses the
run with that reason and marks the sandbox not ready until a run starts again.

The SDK is blocking, so the output stream is read by a dedicated thread (not the default
executor: a long run must not starve short calls) and handed to the event loop; ``stop()``
sends the kill from another task while that thread is still reading (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import io
import logging
import re
import shlex
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..identity import RunnerIdentity
from ..image import DEFAULT_TAG
from .base import (
    RUN_ENV,
    WORK_DIR,
    Execution,
    Health,
    Limits,
    RunSpec,
    Sandbox,
    SandboxError,
    classify_exit,
)
from .project import ProjectError, check_project
from .seccomp import LOADER, SeccompUnsupported, build_filter

log = logging.getLogger(__name__)

LABEL = "codesync.runner"
INSTANCE_LABEL = "codesync.runner.instance"  # stable across restarts of one runner (runner/identity.py)
SESSION_LABEL = "codesync.runner.session"  # host:pid:start of the process that made the container


# Reads the script's length (one line), then exactly that many bytes, and evaluates them; the
# rest of stdin is left for the program.
BOOTSTRAP = 'cd /work && IFS= read -r n && s=$(head -c "$n") && eval "$s"'
POOL_IDLE_SECONDS = 600.0
STOPPED_LEFTOVER_SECONDS = 3600.0  # a created/exited container this old is nobody's (any instance)  # a warm container older than this is replaced (fresh limits, no drift)


# Docker info fields that must be true, or Docker silently ignores the matching limit.
ENGINE_LIMITS = {"MemoryLimit": "memory", "SwapLimit": "memory+swap", "PidsLimit": "pids", "CpuCfsQuota": "cpu quota"}
NO_PYTHON = "sandbox: this run image has no python3, which loads the seccomp filter; refusing to run unfiltered"


def project_tar(files: dict[str, bytes]) -> bytes:
    """The (already checked) project as an uncompressed tar: regular files only, mode 0644,
    folders implied — unpacked inside the container by the run user, never on the host."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, int(time.time())
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def run_payload(spec: RunSpec, seccomp_filter: bytes) -> bytes:
    """What a warm container reads on its stdin before the program's input: the script's
    length, the script, then the project's tar. The script unpacks exactly that many bytes
    (``head -c`` | ``tar -x``), loads the seccomp filter, then compiles/runs (under the
    filter: the compiler is as untrusted as the program)."""
    try:
        files = check_project(spec.files)
    except ProjectError as exc:
        raise SandboxError(str(exc)) from exc
    archive = project_tar(files)
    unpack = f"head -c {len(archive)} | tar -x --no-same-owner --no-same-permissions -f -"
    check = f"{{ command -v python3 >/dev/null || {{ echo {shlex.quote(NO_PYTHON)} >&2; exit 126; }}; }}"
    load = shlex.join(["exec", "python3", "-I", "-S", "-c", LOADER, base64.b64encode(seccomp_filter).decode(),
                       "/bin/sh", "-c", spec.script()])
    script = " && ".join([unpack, check, load]).encode()
    return b"%d\n" % len(script) + script + archive


def cgroup_failure(message: str) -> bool:
    """runc's words for a container whose cgroup could not be made or configured."""
    text = message.lower()
    return "cgroup" in text and ("apply" in text or "create" in text or "mkdir" in text or "write" in text)


def cgroup_detail(message: str) -> str:
    """runc's cause without the container id and the wrapping, so one broken setting gives
    one stable reason (logged once, the same in every refused run)."""
    text = re.sub(r"/?[0-9a-f]{64}", "", message)
    found = re.search(r"unable to [^:]*cgroup.*?(?=: unknown|$)", text)
    return (found.group(0) if found else text)[:300]


def container_options(
    limits: Limits, image: str, labels: dict[str, str] | None = None, cgroup_parent: str | None = None
) -> dict[str, Any]:
    """The ``containers.create`` keyword arguments for one run (pure: easy to inspect)."""
    import docker.types

    nproc = limits.processes * 8  # per-uid backstop; pids_limit is the per-run limit
    return dict(
        image=image,
        # No ``working_dir``: Docker would create it before mounting and the tmpfs mode is lost.
        command=["/bin/sh", "-c", BOOTSTRAP],
        environment=dict(RUN_ENV),
        user="65534:65534",
        hostname="sandbox",
        network_mode="none",
        read_only=True,
        tmpfs={
            WORK_DIR: f"rw,exec,nosuid,nodev,size={limits.work_dir_bytes},mode=1777",
            "/tmp": "rw,noexec,nosuid,nodev,size=16m,mode=1777",
        },
        mem_limit=limits.memory_bytes,
        memswap_limit=limits.memory_bytes,
        pids_limit=limits.processes,
        nano_cpus=1_000_000_000,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        # docker-init as PID 1: the user's program must not be PID 1, which ignores signals it
        # has no handler for (SIGXCPU from RLIMIT_CPU would only ever end in SIGKILL).
        init=True,
        ulimits=[
            docker.types.Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
            docker.types.Ulimit(name="as", soft=limits.address_space_bytes, hard=limits.address_space_bytes),
            docker.types.Ulimit(name="fsize", soft=limits.file_bytes, hard=limits.file_bytes),
            docker.types.Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
            docker.types.Ulimit(name="nproc", soft=nproc, hard=nproc),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        labels={LABEL: "1", **(labels or {})},
        # Never a ``seccomp=`` entry in security_opt: Docker's default profile applies.
        **({"cgroup_parent": cgroup_parent} if cgroup_parent else {}),
        # The SDK sets StdinOnce (EOF on the container's stdin when we close ours) only for
        # stdin_open with detach=False; detach here is just that config flag, create never blocks.
        stdin_open=True,
        tty=False,
        detach=False,
    )


@dataclass
class _Warm:
    """A started container waiting for its script on stdin, and the attached socket."""

    container: Any
    sock: Any
    created: float

    @property
    def raw(self):
        return getattr(self.sock, "_sock", self.sock)

    def send(self, payload: bytes, keep_stdin: bool = True) -> None:
        self.raw.sendall(payload)
        if not keep_stdin:
            self.raw.shutdown(socket.SHUT_WR)  # EOF on the container's stdin (stdin_once)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        with contextlib.suppress(Exception):
            self.sock.close()


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        image: str = DEFAULT_TAG,
        client: Any = None,
        pool_size: int = 1,
        identity: RunnerIdentity | None = None,
        cgroup_parent: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.cgroup_parent = cgroup_parent
        self._seccomp_filter: bytes | None = None
        self.identity = identity or RunnerIdentity.current()
        self.labels = {INSTANCE_LABEL: self.identity.instance, SESSION_LABEL: self.identity.session}
        self.image = image
        self.pool_size = pool_size
        self._client = client
        self._pool: dict[tuple[str, Limits], list[_Warm]] = {}
        self._filling: dict[tuple[str, Limits], set[asyncio.Future]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    @property
    def client(self):
        if self._client is None:
            import docker

            try:
                self._client = (
                    docker.DockerClient(base_url=self.base_url, timeout=60) if self.base_url else docker.from_env()
                )
            except Exception as exc:  # noqa: BLE001 - DockerException and friends
                raise SandboxError(f"cannot reach dockerd: {exc}") from exc
        return self._client

    def _prepare(self, image: str, limits: Limits) -> _Warm:
        """Create, attach (before start, so nothing is missed) and start one container."""
        container = self.client.containers.create(**container_options(limits, image, self.labels, self.cgroup_parent))
        try:
            sock = self.client.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
        except BaseException:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            raise
        return _Warm(container, sock, time.monotonic())

    async def _prepare_async(self, image: str, limits: Limits) -> _Warm:
        import docker.errors

        try:
            return await asyncio.to_thread(self._prepare, image, limits)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"run image {image!r} is missing (python -m runner.image)") from exc
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - DockerException, connection errors from the SDK
            message = str(getattr(exc, "explanation", None) or exc)
            if cgroup_failure(message):
                raise self._unavailable(f"cgroup limits cannot be applied: {cgroup_detail(message)}") from exc
            raise SandboxError(f"docker could not start the run: {exc}") from exc

    # ------------------------------------------------------------------ readiness
    def _engine_problem(self) -> str:
        """Blocking: "" when the engine enforces seccomp and every limit, else why not."""
        info = self.client.info()
        security = info.get("SecurityOptions") or []
        seccomp = [opt for opt in security if "name=seccomp" in opt]
        if not seccomp:
            return "dockerd runs without seccomp (no name=seccomp in its security options)"
        if any("profile=unconfined" in opt for opt in seccomp):
            return "dockerd's default seccomp profile is unconfined"
        missing = [what for key, what in ENGINE_LIMITS.items() if info.get(key) is False]
        if missing:
            return f"cgroup limits cannot be applied: dockerd has no {', '.join(missing)} limit support"
        if self._seccomp_filter is None:
            try:
                self._seccomp_filter = build_filter(info.get("Architecture"))
            except SeccompUnsupported as exc:
                return str(exc)
        return ""

    async def _engine_health(self) -> Health:
        try:
            problem = await asyncio.to_thread(self._engine_problem)
        except SandboxError as exc:
            return Health(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts from the SDK
            return Health(False, f"cannot reach dockerd: {type(exc).__name__}: {exc}")
        return Health(False, problem) if problem else Health.ok()

    async def health(self) -> Health:
        """Engine reachable, seccomp on, limits supported, and the last run's cgroup worked."""
        health = await self._engine_health()
        if health.ready and self._health is not None and not self._health.ready:
            return self._health  # e.g. the last container's cgroup failed: stays until a run starts
        return self._note(health)

    async def prepare(self, limits: Limits) -> Health:
        """Remove our earlier leftovers, make sure the run image exists, check the engine, fill
        the warm pool. Problems are reported (health), not raised: the runner keeps serving."""
        from ..image import ImageError, ensure_image

        try:
            removed = await self.cleanup_leftovers()
            if removed:
                log.info("removed %d containers left by an earlier run of runner %s", removed, self.identity.instance)
            await asyncio.to_thread(ensure_image, self.client, self.image)
        except (ImageError, SandboxError) as exc:
            return self._note(Health(False, f"run image {self.image!r} unavailable: {exc}"))
        except Exception as exc:  # noqa: BLE001 - dockerd down or refusing
            return self._note(Health(False, f"cannot reach dockerd: {type(exc).__name__}: {exc}"))
        health = self._note(await self._engine_health())
        if health.ready:
            await self.prewarm(limits, self.image)
        return health

    async def _filter(self) -> bytes:
        """The deny-list for the engine's architecture (looked up once), or refuse the run."""
        if self._seccomp_filter is None:
            health = await self._engine_health()
            if not health.ready or self._seccomp_filter is None:
                raise self._unavailable(health.reason or "no seccomp filter")
        return self._seccomp_filter

    def _take(self, key: tuple[str, Limits]) -> _Warm | None:
        pool = self._pool.get(key) or []
        while pool:
            warm = pool.pop(0)
            if time.monotonic() - warm.created < POOL_IDLE_SECONDS:
                return warm
            self._spawn(asyncio.to_thread(warm.discard))
        return None

    def _spawn(self, coro) -> None:
        self._track(asyncio.ensure_future(coro))

    def _track(self, task: asyncio.Future) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refill(self, key: tuple[str, Limits]) -> None:
        filling = self._filling.setdefault(key, set())
        missing = self.pool_size - len(self._pool.get(key, [])) - len(filling)
        for _ in range(max(missing, 0)):
            task = asyncio.ensure_future(self._fill_one(key))
            filling.add(task)
            task.add_done_callback(filling.discard)
            self._track(task)

    async def _fill_one(self, key: tuple[str, Limits]) -> None:
        try:
            warm = await self._prepare_async(*key)
        except SandboxError as exc:
            # A sandbox-level problem was already logged once (_note); others are worth a line.
            if self._health is None or self._health.ready:
                log.warning("could not pre-start a container: %s", exc)
            return
        if self._closed:
            await asyncio.to_thread(warm.discard)
        else:
            self._pool.setdefault(key, []).append(warm)

    async def prewarm(self, limits: Limits, image: str | None = None) -> None:
        """Start the pool for these limits now (the service calls this at start)."""
        key = (image or self.image, limits)
        self._refill(key)
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def start(self, spec: RunSpec) -> "DockerExecution":
        key = (spec.image or self.image, spec.limits)
        payload = run_payload(spec, await self._filter())
        warm = self._take(key) if self.pool_size > 0 else None
        if warm is None and self._filling.get(key):
            # A container is already being started for this pool: it is further along than a new one.
            await asyncio.wait(set(self._filling[key]), return_when=asyncio.FIRST_COMPLETED)
            warm = self._take(key)
        if self.pool_size > 0:
            self._refill(key)
        for attempt in range(2):
            if warm is None:
                warm = await self._prepare_async(*key)
            try:
                await asyncio.to_thread(warm.send, payload, spec.stdin_open)
                if self._health is not None and not self._health.ready:
                    self._note(Health.ok())  # a container with its cgroup started: ready again
                execution = DockerExecution(warm.container, warm.sock, spec.limits, track=self._track)
                execution._stdin_eof = not spec.stdin_open  # already half-closed by send()
                return execution
            except OSError as exc:  # the warm container died meanwhile: use a fresh one
                log.warning("warm container unusable (%s); starting a fresh one", exc)
                await asyncio.to_thread(warm.discard)
                warm = None
                if attempt:
                    raise SandboxError(f"docker could not start the run: {exc}") from exc
        raise AssertionError("unreachable")

    async def probe(self, commands: list[str], image: str | None = None) -> set[str]:
        """Run one throwaway container of the image and ask it which commands it lacks."""
        if not commands:
            return set()
        script = ('for c in "$@"; do case "$c" in /*) [ -e "$c" ] ;; *) command -v "$c" >/dev/null ;; esac'
                  ' || echo "$c"; done')

        def ask() -> bytes:
            return self.client.containers.run(
                image or self.image, ["/bin/sh", "-c", script, "sh", *commands], user="65534:65534",
                network_mode="none", environment=dict(RUN_ENV), labels={LABEL: "1", **self.labels},
                remove=True, stdout=True, stderr=False, mem_limit=64 * 1024 * 1024,
            )

        try:
            output = await asyncio.to_thread(ask)
        except Exception as exc:  # noqa: BLE001 - image missing, dockerd down: unknown is not missing
            log.warning("could not look for toolchains in %s (offering every language; runs say what is "
                        "wrong): %s", image or self.image, exc)
            return set()
        return set(output.decode(errors="replace").split()) & set(commands)

    async def close(self) -> None:
        self._closed = True
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        warm = [w for pool in self._pool.values() for w in pool]
        self._pool.clear()
        await asyncio.gather(*(asyncio.to_thread(w.discard) for w in warm), return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)

    async def cleanup_leftovers(self, stopped_older_than: float = STOPPED_LEFTOVER_SECONDS) -> int:
        """Remove containers an earlier process of *this* runner instance left behind.

        Only containers labelled with our instance id, made by another session whose process
        is not alive on this host, are removed: another runner sharing the daemon (other
        instance id) keeps its warm pool and its running runs. Unscoped containers (only
        ``codesync.runner``, from before the instance label) are left alone too — except, of
        any runner, containers that never ran or ended more than ``stopped_older_than``
        seconds ago: no live runner still needs those (it removes its own right after a run),
        and a runner whose instance id changed (a recreated compose container) leaves them.
        """

        def sweep() -> int:
            count = 0
            filters = {"label": [LABEL, f"{INSTANCE_LABEL}={self.identity.instance}"]}
            doomed = {}
            for container in self.client.containers.list(all=True, filters=filters):
                labels = container.labels or {}
                if self.identity.owns_leftover(labels.get(INSTANCE_LABEL), labels.get(SESSION_LABEL)):
                    doomed[container.id] = container
            stopped = {"label": LABEL, "status": ["created", "exited", "dead"]}
            for container in self.client.containers.list(all=True, filters=stopped):
                state = container.attrs.get("State") or {}
                since = _epoch(state.get("FinishedAt")) or _epoch(container.attrs.get("Created"))
                if since is not None and time.time() - since >= stopped_older_than:
                    doomed[container.id] = container
            for container in doomed.values():
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                    count += 1
            return count

        return await asyncio.to_thread(sweep)


def _epoch(stamp: Any) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) to epoch seconds; None for unset/zero."""
    if not isinstance(stamp, str) or len(stamp) < 19 or stamp.startswith("0001-"):
        return None
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


class DockerExecution(Execution):
    """One run in one container; ``stream`` is the attached (multiplexed) socket."""

    def __init__(self, container, stream, limits: Limits, track=None) -> None:
        super().__init__(limits)
        self.container = container
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self._stream_done = asyncio.Event()
        self._killed = False
        self._stdin_thread: ThreadPoolExecutor | None = None  # made on the first write_stdin
        self._reader = threading.Thread(target=self._read, name=f"docker-{container.short_id}", daemon=True)
        self._reader.start()
        self._task = asyncio.create_task(self._supervise(), name=f"docker-{container.short_id}")
        if track is not None:
            track(self._task)  # the sandbox's close() waits for the container removal

    def _read(self) -> None:
        """Reader thread: forward demuxed frames to the loop in order; mark the end."""
        from docker.utils.socket import frames_iter

        try:
            for stream_id, data in frames_iter(self._stream, tty=False):
                if data:
                    name = "stderr" if stream_id == 2 else "stdout"
                    self._loop.call_soon_threadsafe(self._deliver, name, data)
        except Exception as exc:  # noqa: BLE001 - the connection drops when the container is removed
            log.debug("docker stream ended: %s", exc)
        finally:
            with contextlib.suppress(RuntimeError):  # loop closed
                self._loop.call_soon_threadsafe(self._stream_done.set)

    def _ended(self) -> bool:
        return self._done.is_set() or self._stream_done.is_set()

    def _raw(self):
        return getattr(self._stream, "_sock", self._stream)

    async def _stdin_send(self, data: bytes) -> bool:
        # A thread of its own: sendall blocks while the program does not read, and must not
        # hold a worker of the shared default executor meanwhile.
        if self._stdin_thread is None:
            self._stdin_thread = ThreadPoolExecutor(1, thread_name_prefix=f"docker-stdin-{self.container.short_id}")
        try:
            await self._loop.run_in_executor(self._stdin_thread, self._raw().sendall, data)
        except OSError:
            return False
        return True

    async def _stdin_close(self) -> None:
        def shut() -> None:
            with contextlib.suppress(OSError):
                self._raw().shutdown(socket.SHUT_WR)  # stdin_once: EOF on the container's stdin

        if self._stdin_thread is None:
            self._stdin_thread = ThreadPoolExecutor(1, thread_name_prefix=f"docker-stdin-{self.container.short_id}")
        await self._loop.run_in_executor(self._stdin_thread, shut)

    def _deliver(self, stream, data: bytes) -> None:
        if not self._emit(stream, data):
            asyncio.ensure_future(self._kill())

    async def _supervise(self) -> None:
        exit_code: int | None = None
        status, reason = "killed", ""
        try:
            try:
                await asyncio.wait_for(self._stream_done.wait(), self.limits.wall_seconds)
            except asyncio.TimeoutError:
                await self.stop("timeout", "wall clock limit exceeded")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stream_done.wait(), 10)
            exit_code, oom = await asyncio.to_thread(self._exit_state)
            status, reason = classify_exit(exit_code)
            if oom and status != "finished":
                status, reason = "killed", "memory limit exceeded"
        except Exception as exc:  # noqa: BLE001 - dockerd vanished mid-run
            log.warning("docker run supervision failed: %s", exc)
            status, reason = "failed", f"sandbox error: {exc}"
        finally:
            # Report first, clean up after: removal is not part of the user's wait.
            self._finish(status, exit_code, reason)  # type: ignore[arg-type]
            await asyncio.to_thread(self._remove)

    def _exit_state(self) -> tuple[int | None, bool]:
        code = self.container.wait(timeout=15).get("StatusCode")
        if code == 0:
            return 0, False
        self.container.reload()
        return code, bool(self.container.attrs.get("State", {}).get("OOMKilled"))

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        with contextlib.suppress(Exception):
            self._stream.close()
        if self._stdin_thread is not None:
            self._stdin_thread.shutdown(wait=False, cancel_futures=True)

    async def _kill(self) -> None:
        if self._killed or self._done.is_set():
            return
        self._killed = True

        def kill() -> None:
            with contextlib.suppress(Exception):  # already exited: fine
                self.container.kill()

        await asyncio.to_thread(kill)
