"""The deployment sandbox: one throwaway container per run, through the Docker Engine API.

Same limits as bubblewrap, expressed as container options: ``network_mode=none``,
memory (+swap) / pids / CPU limits, a read-only root with a size-limited tmpfs work dir,
``cap_drop=ALL``, ``no-new-privileges``, uid/gid 65534, a capped json-file log and explicit
ulimits (CPU seconds, address space, file size, open files, no cores). When the container's
main process exits, Docker kills everything else in it, so detached children die too.

The source reaches the read-only container through environment variables (base64) that the
start script decodes into the tmpfs and unsets before the user's program runs; no volume,
no host path, no ``put_archive`` into a mount that does not exist until start.

The SDK is blocking, so the output stream is read by a dedicated thread (not the default
executor: a long run must not starve short calls) and handed to the event loop; ``stop()``
sends the kill from another task while that thread is still reading (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from typing import Any

from ..image import DEFAULT_TAG
from .base import Execution, Limits, RunSpec, Sandbox, SandboxError, classify_exit

log = logging.getLogger(__name__)

WORK_DIR = "/work"
LABEL = "codesync.runner"
ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK_DIR,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


def _safe_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or not all(c.isalnum() or c in "._-" for c in name):
        raise SandboxError(f"invalid file name {name!r}")
    return name


def container_options(spec: RunSpec, image: str) -> dict[str, Any]:
    """The ``containers.create`` keyword arguments for one run (pure: easy to inspect)."""
    import docker.types

    limits: Limits = spec.limits
    env = dict(ENV)
    unpack: list[str] = []
    for i, (name, content) in enumerate(spec.files.items()):
        var = f"CODESYNC_FILE_{i}"
        env[var] = base64.b64encode(content).decode()
        unpack.append(f'printf %s "${var}" | base64 -d > {_safe_name(name)} && unset {var}')
    # No ``working_dir``: Docker would create it before mounting and the tmpfs mode is lost.
    script = " && ".join([f"cd {WORK_DIR}", *unpack, spec.script()])
    nproc = limits.processes * 8  # per-uid backstop; pids_limit is the per-run limit
    return dict(
        image=image,
        command=["/bin/sh", "-c", script],
        environment=env,
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
        ulimits=[
            docker.types.Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 1),
            docker.types.Ulimit(name="as", soft=limits.address_space_bytes, hard=limits.address_space_bytes),
            docker.types.Ulimit(name="fsize", soft=limits.file_bytes, hard=limits.file_bytes),
            docker.types.Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
            docker.types.Ulimit(name="nproc", soft=nproc, hard=nproc),
            docker.types.Ulimit(name="core", soft=0, hard=0),
        ],
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
        labels={LABEL: "1"},
        stdin_open=False,
        tty=False,
        detach=True,
    )


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(self, base_url: str | None = None, image: str = DEFAULT_TAG, client: Any = None) -> None:
        self.base_url = base_url
        self.image = image
        self._client = client

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

    async def start(self, spec: RunSpec) -> "DockerExecution":
        import docker.errors

        image = spec.image or self.image
        options = container_options(spec, image)

        def create_and_attach():
            container = self.client.containers.create(**options)
            try:
                # Attach before start so the first bytes are not missed (logs=True covers a race).
                stream = self.client.api.attach(
                    container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True
                )
                container.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                raise
            return container, stream

        try:
            container, stream = await asyncio.to_thread(create_and_attach)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"run image {image!r} is missing (python -m runner.image)") from exc
        except docker.errors.DockerException as exc:
            raise SandboxError(f"docker could not start the run: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - requests/connection errors from the SDK
            raise SandboxError(f"docker could not start the run: {exc}") from exc
        return DockerExecution(container, stream, spec.limits)

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._client.close)

    async def cleanup_leftovers(self) -> int:
        """Remove containers a crashed runner left behind (labelled ``codesync.runner``)."""

        def sweep() -> int:
            count = 0
            for container in self.client.containers.list(all=True, filters={"label": LABEL}):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                    count += 1
            return count

        return await asyncio.to_thread(sweep)


class DockerExecution(Execution):
    def __init__(self, container, stream, limits: Limits) -> None:
        super().__init__(limits)
        self.container = container
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self._stream_done = asyncio.Event()
        self._killed = False
        self._reader = threading.Thread(target=self._read, name=f"docker-{container.short_id}", daemon=True)
        self._reader.start()
        self._task = asyncio.create_task(self._supervise(), name=f"docker-{container.short_id}")

    def _read(self) -> None:
        """Reader thread: forward demuxed frames to the loop in order; mark the end."""
        try:
            for out, err in self._stream:
                if out:
                    self._loop.call_soon_threadsafe(self._deliver, "stdout", out)
                if err:
                    self._loop.call_soon_threadsafe(self._deliver, "stderr", err)
        except Exception as exc:  # noqa: BLE001 - the connection drops when the container is removed
            log.debug("docker stream ended: %s", exc)
        finally:
            with contextlib.suppress(RuntimeError):  # loop closed
                self._loop.call_soon_threadsafe(self._stream_done.set)

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
            await asyncio.to_thread(self._remove)
            self._finish(status, exit_code, reason)  # type: ignore[arg-type]

    def _exit_state(self) -> tuple[int | None, bool]:
        result = self.container.wait(timeout=15)
        self.container.reload()
        return result.get("StatusCode"), bool(self.container.attrs.get("State", {}).get("OOMKilled"))

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        with contextlib.suppress(Exception):
            self._stream.close()

    async def _kill(self) -> None:
        if self._killed or self._done.is_set():
            return
        self._killed = True

        def kill() -> None:
            with contextlib.suppress(Exception):  # already exited: fine
                self.container.kill()

        await asyncio.to_thread(kill)
