"""Run management on a real pycrdt document with the real bubblewrap sandbox (no transport)."""

from __future__ import annotations

import asyncio
import base64
import os

import pycrdt
import pytest

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
    assert not (await runs.request(req("n", role=None))).accepted
    refused = await runs.request(req("x", language="cobol"))
    assert not refused.accepted and "unsupported language" in refused.reason
    assert refused.message()["op"] == "run-refused"
    assert not (await runs.request(req(""))).accepted
    assert not (await runs.request(req("s", sv=b"\xff\xff"))).accepted
    assert list(doc.get("runs", type=pycrdt.Map).keys()) == []
    assert not (await runs.stop("v", role="viewer")).accepted


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
    assert status(runner_doc, "late") is None


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


async def test_recover_marks_stale_runs_failed(make_runs):
    doc = room_doc("print(1)")
    doc.get("runs", type=pycrdt.Map)["old"] = pycrdt.Map({"status": "running", "output": pycrdt.Text()})
    runs = make_runs(doc)
    assert runs.recover() == 1
    assert status(doc, "old") == "failed"
