"""Run management on a real pycrdt document with the real bubblewrap sandbox (no transport)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess

import pycrdt
import pytest

from runner.capacity import Capacity
from runner.identity import RunnerIdentity, session_of
from runner.languages import LanguageTable
from runner.runs import Decision, RoomRuns, RunnerConfig, RunRequest, decode_state_vector
from runner.sandbox.base import Limits
from runner.sandbox.bubblewrap import BubblewrapSandbox
from tests.helpers.components import require
from tests.helpers.wait import wait_for

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


# ---------------------------------------------------------------- capacity across rooms
LONG = "import time\nprint('go', flush=True)\ntime.sleep(60)\n"


class Rooms:
    """Several rooms of one runner process (one RoomRuns each) sharing one Capacity."""

    def __init__(self, make_runs, capacity: Capacity, code: str = LONG) -> None:
        self.make_runs, self.capacity, self.code = make_runs, capacity, code
        self.rooms: dict[str, tuple[pycrdt.Doc, RoomRuns]] = {}
        self.history: dict[str, list] = {}  # run id -> every (status, queue_position) it showed

    def room(self, name: str) -> RoomRuns:
        if name not in self.rooms:
            doc = room_doc(self.code)
            config = RunnerConfig(capacity=self.capacity, rate_burst=1000, queue_size=5,
                                  limits=Limits(wall_seconds=90, cpu_seconds=30))
            runs = self.make_runs(doc, config)
            runs_map = doc.get("runs", type=pycrdt.Map)
            loop = asyncio.get_running_loop()

            def seen(_event, runs_map=runs_map) -> None:
                loop.call_soon(self._record, runs_map)

            doc.observe(seen)
            self.rooms[name] = (doc, runs)
        return self.rooms[name][1]

    def _record(self, runs_map: pycrdt.Map) -> None:
        for run_id in list(runs_map.keys()):
            entry = runs_map[run_id]
            view = (entry.get("status"), entry.get("queue_position"))
            history = self.history.setdefault(run_id, [])
            if not history or history[-1] != view:
                history.append(view)

    async def run(self, room: str, run_id: str, user: str) -> Decision:
        return await self.room(room).request(req(run_id, user=user))

    def entry(self, run_id: str):
        for doc, _ in self.rooms.values():
            found = doc.get("runs", type=pycrdt.Map).get(run_id)
            if found is not None:
                return found
        return None

    def status(self, run_id: str):
        entry = self.entry(run_id)
        return None if entry is None else entry.get("status")

    def position(self, run_id: str):
        entry = self.entry(run_id)
        return None if entry is None else entry.get("queue_position")

    def running(self) -> list[str]:
        return sorted(r for doc, _ in self.rooms.values() for r in doc.get("runs", type=pycrdt.Map).keys()
                      if self.status(r) == "running")

    async def stop(self, room: str, run_id: str) -> None:
        assert (await self.rooms[room][1].stop(run_id, "owner", by="test")).accepted


async def test_one_user_in_many_rooms_holds_only_their_share_of_sandboxes(make_runs):
    capacity = Capacity(max_concurrent=6, max_per_user=2, max_queued=20, max_queued_per_user=2)
    rooms = Rooms(make_runs, capacity)
    decisions = [await rooms.run(f"room{i}", f"heavy{i}", "heavy") for i in range(8)]
    assert [d.accepted for d in decisions] == [True] * 4 + [False] * 4
    for d in decisions[4:]:
        assert d.reason.startswith("you already have 4 runs running or waiting"), d.reason
        assert rooms.status(d.run_id) == "refused" and rooms.entry(d.run_id)["reason"] == d.reason
    await wait_for(lambda: rooms.running() == ["heavy0", "heavy1"], timeout=20, what="two sandboxes for heavy")
    await wait_for(lambda: "go" in str(rooms.entry("heavy1")["output"]), timeout=20, what="heavy1 output")
    assert (rooms.status("heavy2"), rooms.position("heavy2")) == ("queued", 1)
    assert (rooms.status("heavy3"), rooms.position("heavy3")) == ("queued", 2)
    assert capacity.running == 2 and capacity.peak == 2
    # Somebody else is not held back by heavy's line.
    assert (await rooms.run("other", "light0", "light")).accepted
    await wait_for(lambda: rooms.status("light0") == "running", timeout=20, what="light runs at once")
    assert rooms.position("heavy2") == 1
    # Positions move: a running run ends, the line advances.
    await rooms.stop("room0", "heavy0")
    await wait_for(lambda: rooms.status("heavy2") == "running", timeout=20, what="heavy2 starts")
    await wait_for(lambda: rooms.position("heavy3") == 1, timeout=10, what="heavy3 moves up")
    assert [pos for status, pos in rooms.history["heavy3"] if status == "queued" and pos] == [2, 1]
    # The freed place can be taken again, and no more.
    assert (await rooms.run("room4", "heavy4b", "heavy")).accepted
    assert not (await rooms.run("room5", "heavy5b", "heavy")).accepted
    assert capacity.peak <= 6 and capacity.running_for("heavy") == 2


async def test_global_limit_holds_under_a_burst_from_many_users(make_runs):
    capacity = Capacity(max_concurrent=3, max_per_user=2, max_queued=30, max_queued_per_user=4)
    rooms = Rooms(make_runs, capacity, code="import time\ntime.sleep(0.3)\nprint('done')\n")
    most = 0

    def count() -> None:
        nonlocal most
        most = max(most, len(rooms.running()))

    requests = [(f"{user}-{room}", f"{user}-run{room}", user) for user in "abcdef" for room in range(2)]
    for room, _, _ in requests:
        rooms.room(room).doc.observe(lambda _e: asyncio.get_running_loop().call_soon(count))
    decisions = await asyncio.gather(*(rooms.run(room, run_id, user) for room, run_id, user in requests))
    assert all(d.accepted for d in decisions), decisions
    await wait_for(lambda: all(rooms.status(r) == "finished" for _, r, _ in requests), timeout=60,
                   what="every run finished")
    assert capacity.peak == 3 and most <= 3, (capacity.peak, most)
    assert capacity.running == 0 and capacity.admitted == 0 and capacity.waiting == 0
    # Every run that had to wait showed a place in line while it did.
    waited = [r for _, r, _ in requests if any(pos for _, pos in rooms.history[r])]
    assert len(waited) >= len(requests) - 3, rooms.history


async def test_the_line_is_fair_across_users_and_refuses_when_full(make_runs):
    capacity = Capacity(max_concurrent=1, max_per_user=2, max_queued=5, max_queued_per_user=4)
    rooms = Rooms(make_runs, capacity)
    for i in range(4):
        assert (await rooms.run(f"a{i}", f"a{i}", "ann")).accepted
    await wait_for(lambda: rooms.running() == ["a0"], timeout=20, what="a0 running")
    await wait_for(lambda: [rooms.position(r) for r in ("a1", "a2", "a3")] == [1, 2, 3], timeout=10,
                   what="ann's line")
    # Bob arrives later: round robin puts him right after Ann's next run, before her others.
    assert (await rooms.run("b0", "b0", "bob")).accepted
    await wait_for(lambda: [rooms.position(r) for r in ("a1", "b0", "a2", "a3")] == [1, 2, 3, 4], timeout=10,
                   what="bob between ann's runs")
    # Bob's second run (same room, behind his first) takes his next turn: after Ann's a2.
    assert (await rooms.run("b0", "b0-second", "bob")).accepted
    await wait_for(lambda: [rooms.position(r) for r in ("a1", "b0", "a2", "b0-second", "a3")] == [1, 2, 3, 4, 5],
                   timeout=10, what="the whole line")
    # The runner-wide line is full now (1 running + 5 waiting): refused, with the reason.
    full = await rooms.run("c0", "c0", "cat")
    assert not full.accepted and full.reason.startswith("the runner is at capacity"), full.reason
    assert rooms.status("c0") == "refused"
    order = []
    for expected in ("a1", "b0", "a2", "b0-second", "a3"):
        current = rooms.running()
        assert len(current) == 1, current
        order.append(current[0])
        room = next(n for n, (d, _) in rooms.rooms.items() if current[0] in d.get("runs", type=pycrdt.Map).keys())
        await rooms.stop(room, current[0])
        await wait_for(lambda: rooms.running() == [expected], timeout=20, what=f"{expected} next")
    assert order == ["a0", "a1", "b0", "a2", "b0-second"]
    # With nobody arriving any more, a place in line only moves towards the front.
    positions = [pos for status, pos in rooms.history["a3"] if status == "queued" and pos]
    assert positions[-5:] == [5, 4, 3, 2, 1], rooms.history["a3"]
    # Stopping a run while it waits for a sandbox: killed, and its place is given back.
    assert (await rooms.run("a0", "a-late", "ann")).accepted
    await wait_for(lambda: rooms.position("a-late") == 1, timeout=10, what="a-late waiting")
    await rooms.stop("a0", "a-late")
    assert rooms.status("a-late") == "killed" and rooms.entry("a-late")["reason"] == "stopped by test"
    assert capacity.admitted_for("ann") == 1 and capacity.waiting == 0  # only the running a3


# ---------------------------------------------------------------------- interactive input
ASK = ("while True:\n    try:\n        n = input('name? ')\n    except EOFError:\n        break\n"
       "    print('hello', n)\nprint('bye')\n")


def spans(doc: pycrdt.Doc, run_id: str) -> list[tuple[str, dict | None]]:
    """The output as (text, attributes) spans, adjacent spans of one stream joined."""
    joined: list[tuple[str, dict | None]] = []
    for text, attrs in output(doc, run_id).diff():
        attrs = attrs if attrs and attrs.get("stream") else None
        if joined and joined[-1][1] == attrs:
            joined[-1] = (joined[-1][0] + text, attrs)
        else:
            joined.append((text, attrs))
    return joined


async def test_input_feeds_the_program_and_everyone_sees_the_echo(make_runs):
    doc = room_doc(ASK)
    runs = make_runs(doc)
    assert (await runs.request(req("r"))).accepted
    await wait_for(lambda: str(output(doc, "r")) == "name? ", timeout=15, what="the prompt")
    typed = await runs.input("r", "Ann\n", "u1", "editor")
    assert typed == Decision(True, "r") and typed.message("input") == {"op": "input-accepted", "run_id": "r"}
    await wait_for(lambda: "hello Ann" in str(output(doc, "r")), timeout=10, what="the answer to Ann")
    # Another editor (the owner) answers the next prompt: any editor or owner may type.
    await wait_for(lambda: str(output(doc, "r")).endswith("name? "), timeout=10, what="second prompt")
    assert (await runs.input("r", "Bob\n", "u2", "owner")).accepted
    await wait_for(lambda: "hello Bob" in str(output(doc, "r")), timeout=10, what="the answer to Bob")
    assert (await runs.input("r", None, "u1", "editor", eof=True)).accepted  # Ctrl-D
    await wait_for(lambda: status(doc, "r") == "finished", timeout=10, what="finished after end of input")
    stdin = {"stream": "stdin"}
    assert spans(doc, "r") == [("name? ", None), ("Ann\n", stdin), ("hello Ann\nname? ", None), ("Bob\n", stdin),
                               ("hello Bob\nname? bye\n", None)]
    # A peer that syncs the document sees the same conversation, attributes included.
    peer = pycrdt.Doc()
    peer.apply_update(doc.get_update())
    assert spans(peer, "r") == spans(doc, "r")
    late = await runs.input("r", "late\n", "u1", "editor")
    assert not late.accepted and late.reason == "no such running run"
    assert late.message("input") == {"op": "input-refused", "run_id": "r", "reason": "no such running run"}
    assert "late" not in str(output(doc, "r"))


async def test_input_is_for_editors_and_owners_only_and_refusals_write_nothing(make_runs):
    doc = room_doc(ASK)
    runs = make_runs(doc, RunnerConfig(rate_burst=5))
    assert (await runs.request(req("r"))).accepted
    assert (await runs.request(req("q"))).accepted  # waits behind r
    await wait_for(lambda: str(output(doc, "r")) == "name? ", timeout=15, what="the prompt")
    for role in ("viewer", None, "admin"):
        refused = await runs.input("r", "evil\n", "u3", role)
        assert not refused.accepted and refused.reason == "only editors and owners may type into a run", role
        assert not (await runs.input("r", None, "u3", role, eof=True)).accepted
    assert not (await runs.input("r", "x\n", "", "editor")).accepted  # no stamped user
    assert (await runs.input("q", "x\n", "u1", "editor")).reason == "the run has not started yet"
    assert (await runs.input("nope", "x\n", "u1", "editor")).reason == "no such running run"
    assert (await runs.input("r", 42, "u1", "editor")).reason == "input must be text"  # type: ignore[arg-type]
    assert (await runs.input("r" * 65, "x", "u1", "editor")).reason == "invalid run_id"
    big = await runs.input("r", "x" * (runs.config.max_input_bytes + 1), "u1", "editor")
    assert not big.accepted and "KiB at once" in big.reason
    assert str(output(doc, "r")) == "name? " and status(doc, "r") == "running"  # nothing echoed, still asking
    # Legitimate use still works after all that.
    assert (await runs.input("r", "Ann\n", "u1", "editor")).accepted
    await wait_for(lambda: "hello Ann" in str(output(doc, "r")), timeout=10, what="the answer")
    assert (await runs.stop("r", role="editor")).accepted


async def test_input_is_rate_limited_per_user(make_runs):
    doc = room_doc(ASK)
    runs = make_runs(doc, RunnerConfig(input_burst=3, input_per_second=0.001))
    assert (await runs.request(req("r"))).accepted
    await wait_for(lambda: str(output(doc, "r")) == "name? ", timeout=15, what="the prompt")
    decisions = [await runs.input("r", f"n{i}\n", "u1", "editor") for i in range(6)]
    assert [d.accepted for d in decisions] == [True, True, True, False, False, False]
    assert decisions[-1].reason == "input rate limit: too many inputs, slow down"
    assert (await runs.input("r", "other\n", "u2", "editor")).accepted  # another user has their own share
    await wait_for(lambda: "hello other" in str(output(doc, "r")), timeout=10, what="the other user's answer")
    text = str(output(doc, "r"))
    assert "n3" not in text and text.count("hello n") == 3
    assert (await runs.stop("r", role="editor")).accepted
