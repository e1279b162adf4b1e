"""Leftover cleanup on a shared dockerd: a starting runner removes only its own instance's
containers of earlier (dead) sessions — never another runner's, never a live process's."""

from __future__ import annotations

import os
import subprocess

import pytest

from runner.identity import RunnerIdentity, session_alive, session_of
from runner.sandbox.base import Limits
from runner.sandbox.docker import INSTANCE_LABEL, LABEL, SESSION_LABEL, DockerSandbox, container_options

pytestmark = [pytest.mark.timeout(120), pytest.mark.docker]


def test_session_liveness():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        session = session_of(proc.pid)
        assert session_alive(session) and session_alive(session_of(os.getpid()))
    finally:
        proc.kill()
        proc.wait()
    assert not session_alive(session)
    assert not session_alive("some-other-host:1:1") and not session_alive("garbage")


async def test_cleanup_spares_other_runners_and_live_sessions(docker_daemon, docker_image):
    client = docker_daemon.client()
    sleeper = subprocess.Popen(["sleep", "60"])
    me = RunnerIdentity("inst-a", session_of(os.getpid()))
    made: dict[str, str] = {}

    def create(name: str, labels: dict[str, str]) -> None:
        options = container_options(Limits(), docker_image, labels)
        made[name] = client.containers.create(**options).id

    box = DockerSandbox(docker_daemon.url, image=docker_image, identity=me)
    try:
        create("mine-earlier", {INSTANCE_LABEL: "inst-a", SESSION_LABEL: "host-gone:4242:1"})
        create("mine-live-other-process", {INSTANCE_LABEL: "inst-a", SESSION_LABEL: session_of(sleeper.pid)})
        create("this-session", {INSTANCE_LABEL: "inst-a", SESSION_LABEL: me.session})
        create("other-runner", {INSTANCE_LABEL: "inst-b", SESSION_LABEL: "host-gone:4242:1"})
        create("unscoped", {})
        assert client.containers.get(made["this-session"]).labels[INSTANCE_LABEL] == "inst-a"

        def present() -> set[str]:
            ids = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
            return {name for name, cid in made.items() if cid in ids}

        assert await box.cleanup_leftovers() == 1
        assert present() == {"mine-live-other-process", "this-session", "other-runner", "unscoped"}
        sleeper.kill()
        sleeper.wait()
        assert await box.cleanup_leftovers() == 1  # that process is gone now: its containers are leftovers
        assert present() == {"this-session", "other-runner", "unscoped"}
        # A runner of another instance on the same daemon removes none of instance a's.
        other = DockerSandbox(docker_daemon.url, image=docker_image, identity=RunnerIdentity("inst-b", "x:1:1"))
        assert await other.cleanup_leftovers() == 1  # only its own earlier one
        assert present() == {"this-session", "unscoped"}
        await other.close()
        # Stopped (never started / exited) containers past the age limit are nobody's, whoever
        # made them; a running one of another runner is still spared.
        create("other-running", {INSTANCE_LABEL: "inst-c", SESSION_LABEL: "host-gone:4242:1"})
        client.containers.get(made["other-running"]).start()  # blocks reading its stdin
        assert await box.cleanup_leftovers() == 0  # the created ones are young
        assert await box.cleanup_leftovers(stopped_older_than=0) == 2
        assert present() == {"other-running"}
    finally:
        sleeper.kill()
        await box.close()
        for cid in made.values():
            try:
                client.containers.get(cid).remove(force=True)
            except Exception:  # noqa: BLE001 - already removed by the test
                pass
