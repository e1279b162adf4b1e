"""Run management on a real pycrdt document with the real bubblewrap sandbox (no transport)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess

import pycrdt
import pytest

from runner.identity import RunnerIdentity, session_of
from runner.languages import LanguageTable
from runner.runs import Decision, RoomRuns, RunnerConfig, RunRequest, decode_state_vector
from runner.sandbox.base import Limits
from runner.sandbox.bubblewrap import BubblewrapSandbox
from tests.support import require, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sandbox():
    require("bubblewrap", os.access("/usr/bin/bwrap", os.X_OK), "apt-get install bubblewrap")
    return BubblewrapSandbox()


@pytest.fixture
async def make_runs(sandbox):
    """RoomRuns bound to the test's sandbox, always closed (so no run outlives a failed test)."""
    made: list[RoomRuns] = []

    def make(doc: pycrdt.Doc, config: RunnerConfig | None = None) -> RoomRuns:
        made.append(RoomRuns(doc, sandbox, LanguageTable(), config))
        return made[-1]

    make.sandbox, make.made = sandbox, made  # type: ignore[attr-defined]
    yield make
    for runs in made:
        await runs.close()


def room_doc(code: str) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, code)
    return doc


def req(run_id: str, role: str = "editor", user: str = "u1", sv: bytes | None = None, language: str = "python"):
    return RunRequest(run_id, language, user, f"name-{user}", role, sv)


def status(doc: pycrdt.Doc, run_id: str):
    entry = doc.get("runs", type=pycrdt.Map).get(run_id)
    return None if entry is None else entry.get("status")


def output(doc: pycrdt.Doc, run_id: str) -> pycrdt.Text:
    return doc.get("runs", type=pycrdt.Map)[run_id]["output"]


async def test_run_streams_output_in_batches_and_finishes(make_runs):
    doc = room_doc("import sys, time\nprint('first', flush=True)\nprint('oops', file=sys.stderr, flush=True)\n"
                   "time.sleep(0.6)\nprint('second')\n")
    runs = make_runs(doc)
    decision = await runs.request(req("r1"))
    assert decision == Decision(True, "r1") and decision.message() == {"op": "run-accepted", "run_id": "r1"}
    batches: list = []
    subscription = output(doc, "r1").observe(lambda event: batches.append(event.delta))  # noqa: F841
    # Live: the first line is in the document while the run is still going.
    await wait_for(lambda: "first" in str(output(doc, "r1")), timeout=10, what="first output")
    assert status(doc, "r1") == "running"
    await wait_for(lambda: status(doc, "r1") == "finished", timeout=10, what="finished")
    entry = doc.get("runs", type=pycrdt.Map)["r1"]
    assert str(entry["output"]) == "first\noops\nsecond\n"
    assert entry["output"].diff() == [("first\n", None), ("oops\n", {"stream": "stderr"}), ("second\n", None)]
    assert entry["exit_code"] == 0 and entry["requested_by"] == "u1" and entry["language"] == "python"
    assert entry["started_at"] <= entry["finished_at"]
    assert len(batches) >= 2, batches  # arrived in more than one step


async def test_viewer_and_bad_requests_are_refused_without_touching_the_doc(make_runs):
    doc = room_doc("print(1)")
    runs = make_runs(doc)
    assert not (await runs.request(req("v", role="viewer"))).accepted
    assert not (await runs.request(req("v2", role="viewer", language="cobol", sv=b"\xff"))).accepted
    assert not (await runs.request(req("n", role=None))).accepted
    assert not (await runs.request(req(""))).accepted
    assert not (await runs.request(req("x" * 65))).accepted
    assert list(doc.get("runs", type=pycrdt.Map).keys()) == []
    assert not (await runs.stop("v", role="viewer")).accepted


async def test_editor_refusals_are_recorded_in_the_room(make_runs):
    doc = room_doc("print(1)")
    runs = make_runs(doc)
    refused = await runs.request(req("x", language="cobol"))
    assert not refused.accepted and "unsupported language" in refused.reason
    assert refused.message()["op"] == "run-refused"
    entry = doc.get("runs", type=pycrdt.Map)["x"]
    assert (entry["status"], entry["reason"], entry["language"]) == ("refused", refused.reason, "cobol")
    assert entry["requested_by"] == "u1" and entry["finished_at"] >= entry["requested_at"]
    assert str(entry["output"]) == ""
    bad_sv = await runs.request(req("s", sv=b"\xff\xff"))
    assert not bad_sv.accepted and status(doc, "s") == "refused"
    # A refusal never overwrites an existing run: a duplicate id only gets the reply.
    again = await runs.request(req("x", language="python"))
    assert not again.accepted and again.reason == "duplicate run_id"
    assert doc.get("runs", type=pycrdt.Map)["x"]["language"] == "cobol"


async def test_refusal_records_cannot_grow_the_document(make_runs):
    doc = room_doc("import time\ntime.sleep(30)")
    config = RunnerConfig(rate_burst=1, rate_per_minute=0.001, refusal_burst=2, refusal_per_minute=0.001, keep_runs=4)
    runs = make_runs(doc, config)
    assert (await runs.request(req("first"))).accepted
    for i in range(30):  # rate limited: every reply says so, only two make it into the document
        decision = await runs.request(req(f"spam{i}"))
        assert not decision.accepted and "rate limit" in decision.reason
    refused = [k for k in doc.get("runs", type=pycrdt.Map).keys() if status(doc, k) == "refused"]
    assert sorted(refused) == ["spam0", "spam1"]
    # Other users' refusals are pruned first; the live run is never pruned.
    for user in "abcdef":
        await runs.request(req(f"cobol-{user}", user=user, language="cobol"))
    kept = list(doc.get("runs", type=pycrdt.Map).keys())
    assert len(kept) == 4 and "first" in kept, kept
    assert status(doc, "first") == "running" or status(doc, "first") == "queued"


async def test_waits_for_the_requesters_state_vector(make_runs):
    runner_doc = room_doc("")
    editor_doc = pycrdt.Doc()
    editor_doc.apply_update(runner_doc.get_update())
    editor_doc.get("source", type=pycrdt.Text).insert(0, "print('edited just before run')")
    sv = editor_doc.get_state()
    runs = make_runs(runner_doc, RunnerConfig(sync_timeout=5))
    task = asyncio.create_task(runs.request(req("r", sv=sv)))
    await asyncio.sleep(0)  # let it start waiting; the decision must not come before the edit arrives
    assert not task.done()
    runner_doc.apply_update(editor_doc.get_update(runner_doc.get_state()))
    assert (await asyncio.wait_for(task, 5)).accepted
    await wait_for(lambda: status(runner_doc, "r") == "finished", timeout=10, what="finished")
    assert str(output(runner_doc, "r")) == "edited just before run\n"
    # A state the runner never gets: refused after the timeout, nothing written.
    editor_doc.get("source", type=pycrdt.Text).insert(0, "#")
    runs.config.sync_timeout = 0.3
    late = await runs.request(req("late", sv=editor_doc.get_state()))
    assert not late.accepted and "latest edits" in late.reason
    assert status(runner_doc, "late") == "refused"
    assert runner_doc.get("runs", type=pycrdt.Map)["late"]["reason"] == late.reason


def test_state_vector_codec_roundtrip():
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, "abc")
    assert decode_state_vector(doc.get_state()) == {doc.client_id: 3}
    assert base64.b64decode(base64.b64encode(doc.get_state())) == doc.get_state()


async def test_stop_mid_run_and_queue(make_runs):
    doc = room_doc("import time\nfor i in range(100):\n    print(i, flush=True)\n    time.sleep(0.1)\n")
    runs = make_runs(doc, RunnerConfig(queue_size=2, rate_burst=10))
    assert (await runs.request(req("a"))).accepted
    assert (await runs.request(req("b"))).accepted
    assert (await runs.request(req("c"))).accepted
    full = await runs.request(req("d"))
    assert not full.accepted and "queued" in full.reason
    await wait_for(lambda: "2\n" in str(output(doc, "a")), timeout=10, what="output of a")
    assert (status(doc, "a"), status(doc, "b"), status(doc, "c")) == ("running", "queued", "queued")
    assert (await runs.stop("c", role="owner", by="Ann")).accepted  # queued: never starts
    assert status(doc, "c") == "killed"
    assert (await runs.stop("a", role="editor", by="Bob")).accepted
    await wait_for(lambda: status(doc, "a") == "killed", timeout=10, what="a killed")
    assert doc.get("runs", type=pycrdt.Map)["a"]["reason"] == "stopped by Bob"
    await wait_for(lambda: status(doc, "b") == "running", timeout=10, what="b started after a")
    assert (await runs.stop("b", role="editor")).accepted
    await wait_for(lambda: status(doc, "b") == "killed", timeout=10, what="b killed")
    assert not (await runs.stop("a", role="editor")).accepted  # already over


async def test_rate_limit_pruning_and_truncation(make_runs):
    doc = room_doc("print('x' * 5000)")
    config = RunnerConfig(rate_burst=2, rate_per_minute=1, keep_runs=3, limits=Limits(output_bytes=1000))
    runs = make_runs(doc, config)
    assert (await runs.request(req("1", user="a"))).accepted
    assert (await runs.request(req("2", user="a"))).accepted
    limited = await runs.request(req("3", user="a"))
    assert not limited.accepted and "rate limit" in limited.reason
    for run_id in ("4", "5", "6"):
        assert (await runs.request(req(run_id, user=f"user-{run_id}"))).accepted
        await wait_for(lambda: status(doc, run_id) in ("killed", "finished"), timeout=15, what=f"run {run_id}")
    kept = sorted(doc.get("runs", type=pycrdt.Map).keys())
    assert kept == ["4", "5", "6"], kept
    text = str(output(doc, "6"))
    assert text.startswith("x" * 1000) and text.endswith("[output truncated]\n")
    assert status(doc, "6") == "killed"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def running_entry(**owner) -> pycrdt.Map:
    return pycrdt.Map({"status": "running", "updated_at": 1, "output": pycrdt.Text(), **owner})


async def test_recover_fails_only_runs_nobody_serves(make_runs, sandbox):
    doc = room_doc("print(1)")
    runs_map = doc.get("runs", type=pycrdt.Map)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        runs_map["earlier"] = running_entry(runner_instance="inst-a", runner_session="gone-host:7:7")
        runs_map["live-process"] = running_entry(runner_instance="inst-a", runner_session=session_of(sleeper.pid))
        runs_map["other"] = running_entry(runner_instance="inst-b", runner_session="gone-host:8:8")
        runs_map["legacy"] = running_entry()
        runs_map["done"] = pycrdt.Map({"status": "finished", "output": pycrdt.Text()})
        clock = Clock()
        me = RunnerIdentity("inst-a", session_of(os.getpid()))
        runs = RoomRuns(doc, sandbox, LanguageTable(), RunnerConfig(stale_after=20), monotonic=clock, identity=me)
        # Our instance's earlier, dead session: failed at once.
        assert runs.recover() == 1
        assert status(doc, "earlier") == "failed" and runs_map["earlier"]["reason"] == "runner restarted"
        # Another owner that keeps updating its run is never failed.
        for _ in range(5):
            clock.now += 10
            for run_id in ("other", "legacy"):  # their owners' heartbeats
                runs_map[run_id]["updated_at"] = runs_map[run_id]["updated_at"] + 1
            assert runs.recover() == 0
        assert status(doc, "other") == status(doc, "legacy") == "running"
        # ... until they stop updating them for stale_after (our clock).
        clock.now += 19
        assert runs.recover() == 0
        clock.now += 2
        assert runs.recover() == 2 and status(doc, "other") == status(doc, "legacy") == "failed"
        assert runs_map["other"]["reason"] == "runner stopped responding"
        # A live process on this host is spared whatever it looks like.
        clock.now += 100
        assert runs.recover() == 0 and status(doc, "live-process") == "running"
        assert status(doc, "done") == "finished"
        await runs.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def link(a: pycrdt.Doc, b: pycrdt.Doc) -> list:
    """Two documents kept in sync (as two runners in one room are, through the peers)."""
    loop = asyncio.get_running_loop()
    return [a.observe(lambda e: loop.call_soon(b.apply_update, e.update)),
            b.observe(lambda e: loop.call_soon(a.apply_update, e.update))]


async def test_two_runners_in_one_room_never_fail_each_others_live_runs(make_runs):
    doc_a, doc_b = room_doc("import time\nprint('go', flush=True)\ntime.sleep(3)\nprint('done')"), pycrdt.Doc()
    doc_b.apply_update(doc_a.get_update())
    a_to_b, _b_to_a = link(doc_a, doc_b)
    config = RunnerConfig(heartbeat=0.25, stale_after=1.5)
    a = RoomRuns(doc_a, make_runs.sandbox, LanguageTable(), config, identity=RunnerIdentity("a", "host-a:1:1"))
    b = RoomRuns(doc_b, make_runs.sandbox, LanguageTable(), config, identity=RunnerIdentity("b", "host-b:1:1"))
    make_runs.made.extend([a, b])
    a.start()
    b.start()
    assert (await a.request(req("long"))).accepted
    await wait_for(lambda: status(doc_b, "long") == "running", timeout=10, what="b sees a's run")
    # 3 s of running is well past b's stale_after: a's heartbeat keeps it alive in b's eyes.
    await wait_for(lambda: status(doc_b, "long") != "running", timeout=15, what="a's run ends")
    assert status(doc_b, "long") == "finished" and str(output(doc_b, "long")) == "go\ndone\n"
    # Now a dies without a word (no close): b fails a's next run once it goes stale.
    assert (await a.request(req("orphan"))).accepted
    await wait_for(lambda: status(doc_b, "orphan") == "running", timeout=10, what="orphan running")
    doc_a.unobserve(a_to_b)  # a's process is gone: nothing of it reaches the room any more
    await wait_for(lambda: status(doc_b, "orphan") == "failed", timeout=15, what="b recovers the orphan")
