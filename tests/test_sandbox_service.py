"""The sandbox's readiness and the runner's capacity as the real ``codesync runner`` process
shows them: ``/healthz`` on its ops port, the run records every peer sees, its log.
Real ``codesync signaling`` + ``codesync runner`` processes, aiortc peers on loopback."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.stack import SeededRoom, add_member
from tests.helpers.components import free_port
from tests.helpers.wait import wait_for
from tests.helpers.runner import clients, runner_stack

pytestmark = pytest.mark.timeout(180)


async def test_runner_refuses_runs_and_reports_not_ready_when_cgroups_cannot_be_applied(tmp_path):
    ops = free_port()
    broken = tmp_path / "no-cgroups-here"
    async with runner_stack(tmp_path, CODESYNC_OPS_PORT=str(ops), CODESYNC_RUNNER_CGROUP_ROOT=str(broken)) as (
        stack, seeded, runner), clients(stack, seeded, "ed", "vic") as (ed, vic):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops}", timeout=5) as http:
            response = await wait_for(lambda: _get(http, "/healthz"), timeout=30, what="runner ops port")
            assert response.status_code == 503, response.text
            sandbox = response.json()["checks"]["sandbox"]
            assert sandbox.startswith("error: cgroup limits cannot be applied") and str(broken) in sandbox, sandbox
        await wait_for(ed.runner, timeout=30, what="runner joined")
        ed.source.insert(0, "print('must not run')")
        for run_id in ("c1", "c2"):
            assert (await ed.run(run_id))["op"] == "run-accepted", runner.log()[-3000:]
            await wait_for(lambda: vic.field(run_id, "status") == "failed", timeout=20, what=f"{run_id} failed")
            reason = vic.field(run_id, "reason")
            assert reason.startswith("cgroup limits cannot be applied: no writable cgroup"), reason
            assert vic.output(run_id) == ""
    said = [line for line in runner.log().splitlines() if "cgroup limits cannot be applied" in line]
    assert len(said) == 1, said  # the reason is logged once, not once per refused run


async def _get(http: httpx.AsyncClient, path: str):
    try:
        return await http.get(path)
    except httpx.TransportError:
        return None


async def test_capacity_is_shared_by_all_rooms_of_a_runner(tmp_path):
    async with runner_stack(tmp_path, CODESYNC_RUNNER_MAX_PER_USER="1", CODESYNC_RUNNER_MAX_QUEUED_PER_USER="0") as (
            stack, seeded, runner):
        other = await stack.seed_room({"owner2": "owner"})
        ann = seeded.user("ann")
        await add_member(stack.database_url, stack.secret, other.id, ann.id, "editor")
        second = SeededRoom(other.id, {"ann": ann}, stack.secret)
        async with clients(stack, seeded, "ann") as (here,), clients(stack, second, "ann") as (there,):
            await wait_for(here.runner, timeout=30, what="runner in room 1")
            await wait_for(there.runner, timeout=30, what="runner in room 2")
            here.source.insert(0, "import time\nprint('busy', flush=True)\ntime.sleep(60)\n")
            there.source.insert(0, "print('second room')\n")
            assert (await here.run("busy"))["op"] == "run-accepted"
            await wait_for(lambda: "busy" in here.output("busy"), timeout=20, what="first run going")
            refused = await there.run("blocked")
            assert refused["op"] == "run-refused", refused
            assert refused["reason"].startswith("you already have 1 run running or waiting on this runner")
            await wait_for(lambda: there.field("blocked", "status") == "refused", timeout=10, what="refusal shown")
            assert (await here.request("stop", "busy"))["op"] == "stop-accepted"
            await wait_for(lambda: here.field("busy", "status") == "killed", timeout=20, what="busy stopped")
            assert (await there.run("now"))["op"] == "run-accepted"
            await wait_for(lambda: there.field("now", "status") == "finished", timeout=20, what="second room runs")
            assert there.output("now") == "second room\n"
