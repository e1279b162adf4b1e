"""Soak + chaos: R rooms x P Python peers replay real editing traces while processes die.

Everything is real and on loopback: our own ``redis-server`` (free port), two ``codesync
signaling`` nodes sharing it (Redis backend) and one SQLite database, one ``codesync persist``
process (lease in Redis), and aiortc peers (``peer.Room``, CODESYNC_ICE_HOSTS=127.0.0.1) in
this process. Peer k of every room signals through node ``k % 2``; the persistence peer
through node 0, so killing node 1 cuts half the peers off signaling while their WebRTC links
keep carrying edits.

The trace (``tests/data/traces/*.json.gz``) of a room is cut into blocks of ``--block`` txns;
block j is typed by peer ``j % P`` once its document holds the content after block j-1 AND
covers the state vector the previous typist had when it stopped (a baton; equal text alone
is not enough, see ``holds_baton``; the hand-over wait is part of the measured latency). Every peer also appends its own
numbered notes to the ``soak`` Y.Array concurrently, so the document sees concurrent writers.
At the end every room's peers must hold the same document, the stored document must equal
it, ``source`` must equal the trace's content after the replayed txns (``endContent`` for a
full replay), and no note may be missing: "lost edits" = notes made - notes present.

Fault schedule (each at a time offset, repeated ``--rounds`` times): persistence peer
``kill -9`` + restart; signaling node 1 ``kill -9`` + restart; Redis ``kill -9`` + restart;
one peer per room leaves and rejoins with an empty document; a runner killed mid-run (only
when ``runner.service`` exists). After each, "recovered" is when every live peer has a link
to every other live peer and to the persistence peer again, and the persistence peer reports
it saved everything each peer holds.

Reports edits/s, edit latency (local transaction -> visible at another peer) p50/p99 per
window, recovery time after each fault, RSS of every process over time: a text report, a JSON
file and a PNG plot in ``--out`` (default bench/results/).

    .venv/bin/python -m bench.soak --rooms 2 --peers 3 --duration 40      # quick
    .venv/bin/python -m bench.soak --rooms 6 --peers 4 --duration 240 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import importlib.util
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CODESYNC_ICE_HOSTS", "127.0.0.1")

import httpx  # noqa: E402
import pycrdt  # noqa: E402

from tests.helpers.traces import TRACES  # noqa: E402
from tests.helpers.traces import apply_txn  # noqa: E402
from bench.faults import Managed, ports, redis_starter, rss_kib, service_starter, signaling_starter  # noqa: E402
from peer import Room  # noqa: E402
from peer.persistence.store import DocumentStore  # noqa: E402
from codesync.settings import Settings  # noqa: E402
from tests.helpers.stack import seed_room, service_token  # noqa: E402
from tests.helpers.processes import child_env  # noqa: E402
from tests.helpers.persistence import persistence_peers, persistence_states, saved_covers  # noqa: E402

ICE_HOSTS = "127.0.0.1"  # loopback-only ICE (CODESYNC_ICE_HOSTS of the peers)


def read_sv(sv: bytes) -> dict[int, int]:
    """A Yjs state vector (varUint count, then client/clock varUint pairs) as a dict."""
    out: dict[int, int] = {}
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            b = sv[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    for _ in range(varuint()):
        client = varuint()
        out[client] = varuint()
    return out


def awaiting(coro: Any) -> str:
    """Where a suspended coroutine waits: its ``cr_await`` chain as ``name:line -> ...``."""
    out, depth = [], 0
    while coro is not None and depth < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(f"{getattr(coro, '__qualname__', type(coro).__name__)}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        depth += 1
    return " -> ".join(out) or "?"


def holds_baton(doc: pycrdt.Doc, content: str, state_vector: dict[int, int]) -> bool:
    """May the next typist start? Its ``source`` must equal the trace's content AND its state
    vector must cover the previous typist's (taken when that typist stopped).

    Equal text alone is NOT enough (found by the full soak, 2 runs in 5): rustcode block 104
    ends with ``mut `` typed and deleted again, a net-zero change. A peer that had everything
    but those last updates already showed the right text, took the baton and typed; the
    ``mut`` insert arrived mid-block, so three keystrokes went in three characters to the
    left. The CRDT merged these concurrent edits correctly, just not the way the trace did:
    every peer agreed on ``len se(),lf.head`` where the trace has ``len(), self.head``.
    A delete never moves a state vector, but a missed delete leaves visible text, so
    "covers the state vector and equal text" means "holds what the previous typist held"."""
    if str(doc.get("source", type=pycrdt.Text)) != content:
        return False
    have = read_sv(doc.get_state())
    return all(have.get(client, 0) >= clock for client, clock in state_vector.items())


# ----------------------------------------------------------------------------- configuration
@dataclass
class Config:
    rooms: int = 2
    peers: int = 3
    duration: float = 40.0  # seconds of replay (txns per room = rate * duration, capped by the trace)
    rate: float = 60.0  # trace txns per second per room
    block: int = 40  # txns per baton block
    note_every: float = 0.5  # seconds between one peer's notes
    rounds: int = 1  # how often the fault schedule runs
    fault_gap: float = 7.0  # seconds between faults
    down: float = 1.5  # seconds a killed process stays down
    first_fault: float = 4.0
    traces: tuple[str, ...] = ("rustcode", "sveltecomponent")
    out: Path = ROOT / "bench" / "results"
    seed: int = 1
    settle_timeout: float = 90.0
    join_timeout: float = 20.0
    stall_timeout: float = 60.0  # a baton wait this long means lost edits or a hung peer


# ----------------------------------------------------------------------------- metrics
@dataclass
class Metrics:
    t0: float = field(default_factory=time.monotonic)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds)
    txns: list[float] = field(default_factory=list)  # time of every trace txn
    notes: list[float] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # role -> (t, KiB)
    faults: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    join_hangs: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        line = f"[{self.now():7.2f}s] {msg}"
        self.events.append(line)
        print(line, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# ----------------------------------------------------------------------------- one room
@dataclass
class Trace:
    name: str
    txns: list[list[list[Any]]]
    boundaries: list[str]  # content after each block
    expected: str
    complete: bool


def load_trace(name: str, n_txns: int, block: int) -> Trace:
    with gzip.open(TRACES / f"{name}.json.gz", "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    txns = [t["patches"] for t in data["txns"][:n_txns]]
    content, boundaries = data.get("startContent", ""), []
    for i, patches in enumerate(txns):
        for pos, delete, insert in patches:
            content = content[:pos] + insert + content[pos + delete:]
        if (i + 1) % block == 0 or i + 1 == len(txns):
            boundaries.append(content)
    complete = len(txns) == len(data["txns"])
    if complete:
        assert content == data["endContent"], "trace replay does not reach endContent"
    return Trace(name, txns, boundaries, content, complete)


class SoakPeer:
    """One editing peer: a Room, its notes, and latency probes for the others."""

    def __init__(self, soak: "Soak", room: "SoakRoom", index: int) -> None:
        self.soak, self.room_, self.index = soak, room, index
        self.label = f"p{index}"
        self.room: Room | None = None
        self.notes_made = 0
        self.present = False
        self.probes: list[tuple[int, int, float]] = []  # (client_id, clock, t) of own txns

    @property
    def doc(self) -> pycrdt.Doc:
        assert self.room is not None
        return self.room.doc

    async def join(self) -> None:
        node = self.index % len(self.soak.signal_nodes)
        url = f"http://127.0.0.1:{self.soak.signal_ports[node]}"
        self.room = Room(url, self.room_.seeded.token(self.label), self.room_.seeded.id, ice_hosts=ICE_HOSTS)
        self.room.on_update(lambda _u, _o: self.room_.observe(self))
        self.probes = []
        starting = asyncio.ensure_future(self.room.start())
        done, _ = await asyncio.wait({starting}, timeout=self.soak.cfg.join_timeout)
        if starting in done:
            starting.result()  # a refusal (PermissionError/ConnectionError) ends the soak loudly
        else:
            # Room.start() not back (seen once in a rejoin, before this bound existed; every
            # await in it is bounded — connect 10 s, ICE list 5 s, announce echo 10 s — so
            # this is either a slow signaling node or an unbounded wait we have not found).
            # Log WHERE it waits, then drop that Room and try once more with a new one.
            where = awaiting(starting.get_coro())
            self.soak.metrics.join_hangs += 1
            self.soak.metrics.log(f"JOIN HUNG: room {self.room_.index} {self.label}: Room.start() not back after "
                                  f"{self.soak.cfg.join_timeout:.0f}s (signaling connected="
                                  f"{self.room.signaling.connected}); waiting in {where}; retrying with a new Room")
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            try:
                await asyncio.wait_for(self.room.stop(), 10)
            except Exception:  # noqa: BLE001 - best effort
                pass
            self.room = Room(url, self.room_.seeded.token(self.label), self.room_.seeded.id, ice_hosts=ICE_HOSTS)
            self.room.on_update(lambda _u, _o: self.room_.observe(self))
            await asyncio.wait_for(self.room.start(), self.soak.cfg.join_timeout)
        self.present = True

    async def leave(self) -> None:
        self.present = False
        if self.room is not None:
            self.room.flush()
            await self.room.stop()

    def source(self) -> pycrdt.Text:
        return self.doc.get("source", type=pycrdt.Text)

    def notes(self) -> pycrdt.Array:
        return self.doc.get("soak", type=pycrdt.Array)

    def probe(self) -> None:
        sv = read_sv(self.doc.get_state())
        cid = self.doc.client_id
        self.probes.append((cid, sv.get(cid, 0), time.monotonic()))


class SoakRoom:
    def __init__(self, soak: "Soak", index: int, seeded: Any, trace: Trace) -> None:
        self.soak, self.index, self.seeded, self.trace = soak, index, seeded, trace
        self.peers = [SoakPeer(soak, self, k) for k in range(soak.cfg.peers)]
        self.done_txns = 0
        self.finished = asyncio.Event()

    def observe(self, observer: SoakPeer) -> None:
        """A remote update reached ``observer``: close every probe its state now covers."""
        if observer.room is None:
            return
        sv = read_sv(observer.doc.get_state())
        now = time.monotonic()
        for writer in self.peers:
            if writer is observer or not writer.probes:
                continue
            keep = []
            for cid, clock, t in writer.probes:
                if sv.get(cid, 0) >= clock:
                    self.soak.metrics.latencies.append((now - self.soak.metrics.t0, now - t))
                else:
                    keep.append((cid, clock, t))
            # one observer is enough for the latency of an edit: drop what it has seen
            writer.probes = keep

    async def writer(self) -> None:
        cfg, m = self.soak.cfg, self.soak.metrics
        interval = 1.0 / cfg.rate
        blocks = [self.trace.txns[i:i + cfg.block] for i in range(0, len(self.trace.txns), cfg.block)]
        start_content = ""
        baton_sv: dict[int, int] = {}  # the previous typist's state vector when it handed over
        for j, block in enumerate(blocks):
            # the baton: peer j % P types block j, once present and holding what the last typist held
            waited = time.monotonic()
            while True:
                peer = self.peers[j % len(self.peers)]
                if peer.present and peer.room is not None and holds_baton(peer.doc, start_content, baton_sv):
                    break
                self.stalled(waited, peer, start_content, f"block {j}", baton_sv)
                await asyncio.sleep(0.01)
            doc, current = peer.doc, start_content
            text = doc.get("source", type=pycrdt.Text)
            next_at = time.monotonic()
            for patches in block:
                if not peer.present or peer.room is None or peer.doc is not doc:
                    # left (and maybe already rejoined with a new, empty doc) mid-block: the
                    # new doc must catch up with everything the old one typed before going on
                    m.log(f"room {self.index}: baton holder {peer.label} left mid-block {j}")
                    baton_sv = read_sv(doc.get_state())
                    waited = time.monotonic()
                    while not (peer.present and peer.room is not None and holds_baton(peer.doc, current, baton_sv)):
                        self.stalled(waited, peer, current, "mid-block rejoin", baton_sv)
                        await asyncio.sleep(0.01)
                    doc = peer.doc
                    text = doc.get("source", type=pycrdt.Text)
                current = apply_txn(text, current, patches)
                peer.probe()
                m.txns.append(m.now())
                self.done_txns += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    next_at = time.monotonic()  # behind by more than a second: don't burst
            start_content = self.trace.boundaries[j]
            baton_sv = read_sv(doc.get_state())
        self.finished.set()

    def stalled(self, since: float, peer: SoakPeer, want: str, where: str, sv: dict[int, int] | None = None) -> None:
        """The baton holder never got the content so far: edits were lost (or a peer hangs)."""
        if time.monotonic() - since < self.soak.cfg.stall_timeout:
            return
        have = str(peer.source()) if peer.room is not None else None
        others = {q.label: len(str(q.source())) for q in self.live_peers()}
        diff = ""
        if have is not None:
            at = next((i for i, (x, y) in enumerate(zip(have, want)) if x != y), min(len(have), len(want)))
            diff = f"; first difference at {at}: has {have[max(0, at - 20):at + 20]!r}, trace {want[max(0, at - 20):at + 20]!r}"
            if have == want and sv:
                mine = read_sv(peer.doc.get_state())
                behind = {c: (mine.get(c, 0), clock) for c, clock in sv.items() if mine.get(c, 0) < clock}
                diff = f"; same text, but behind the previous typist's state vector (client: have, need): {behind}"
        raise RuntimeError(f"room {self.index} stalled at {where}: {peer.label} present={peer.present} has "
                           f"{None if have is None else len(have)} chars, the trace needs {len(want)}; others {others}{diff}")

    async def chatter(self, peer: SoakPeer, stop: asyncio.Event) -> None:
        rnd = random.Random(self.soak.cfg.seed * 1000 + self.index * 10 + peer.index)
        while not stop.is_set():
            await asyncio.sleep(self.soak.cfg.note_every * rnd.uniform(0.5, 1.5))
            if peer.present and peer.room is not None:
                peer.notes_made += 1
                peer.notes().append(f"{peer.label}:{peer.notes_made}")
                self.soak.metrics.notes.append(self.soak.metrics.now())

    def expected_notes(self) -> set[str]:
        return {f"{p.label}:{n}" for p in self.peers for n in range(1, p.notes_made + 1)}

    def live_peers(self) -> list[SoakPeer]:
        return [p for p in self.peers if p.present and p.room is not None]

    def meshed(self) -> bool:
        live = self.live_peers()
        for p in live:
            connected = {pid for pid, info in p.room.peers.items() if info.connected}
            others = {q.room.peer_id for q in live if q is not p}
            if not others.issubset(connected) or not persistence_peers(p.room):
                return False
        return True

    def saved(self) -> bool:
        return all(saved_covers(p.room) for p in self.live_peers())

    def targets(self) -> list[tuple[SoakPeer, dict[int, int]]]:
        """What every live peer holds now (state vectors)."""
        return [(p, read_sv(p.doc.get_state())) for p in self.live_peers()]

    @staticmethod
    def durable(targets: list[tuple[SoakPeer, dict[int, int]]]) -> bool:
        """The persistence peer says (in any peer's view of its awareness) it has stored at
        least ``targets`` — whatever it is busy with now (edits keep coming during a soak)."""
        for peer, target in targets:
            if peer.room is None:
                continue
            ok = False
            for state in persistence_states(peer.room):
                sv = (state.get("saved") or {}).get("state_vector")
                if sv:
                    stored = read_sv(base64.b64decode(sv))
                    if all(stored.get(c, 0) >= clock for c, clock in target.items()):
                        ok = True
                        break
            if not ok:
                return False
        return True


# ----------------------------------------------------------------------------- the soak
class Soak:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.tmp = Path(tempfile.mkdtemp(prefix="codesync-soak-"))
        self.redis_port, self.p0, self.p1 = ports(3)
        self.signal_ports = [self.p0, self.p1]
        self.secret = secrets.token_urlsafe(48)
        self.db_url = f"sqlite+aiosqlite:///{self.tmp / 'codesync.db'}"
        self.env = child_env(
            CODESYNC_DATABASE_URL=self.db_url,
            CODESYNC_SECRET_KEY=self.secret,
            CODESYNC_DATA_DIR=str(self.tmp / "data"),
            CODESYNC_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            CODESYNC_REDIS_PREFIX="soak",
            CODESYNC_PRESENCE_TTL="3",
            CODESYNC_ICE_HOSTS="127.0.0.1",
            CODESYNC_LOG_LEVEL="WARNING",
        )
        self.redis = Managed("redis", redis_starter(self.redis_port, self.tmp / "redis"))
        self.signal_nodes = [
            Managed(f"signaling-{i}", signaling_starter(port, self.env, self.tmp)) for i, port in enumerate(self.signal_ports)
        ]
        self.persist: Managed | None = None
        self.runner: Managed | None = None
        self.rooms: list[SoakRoom] = []
        self.processes: list[Managed] = [self.redis, *self.signal_nodes]

    # --------------------------------------------------------------- setup
    async def start(self) -> None:
        cfg, m = self.cfg, self.metrics
        await self.redis.start()
        for node in self.signal_nodes:
            await node.start()
        token = await service_token(self.db_url, self.secret, "persistence")
        persist_env = {
            **self.env,
            "CODESYNC_SIGNALING_URL": f"http://127.0.0.1:{self.p0}",
            "CODESYNC_SERVICE_TOKEN": token,
            "CODESYNC_PERSIST_LEASE_TTL": "3",
            "CODESYNC_PERSIST_IDLE_GRACE": "5",
            "CODESYNC_LOG_LEVEL": "INFO",
        }
        self.persist = Managed("persist", service_starter("persist", persist_env, self.tmp / "persist.log"))
        await self.persist.start()
        self.processes.append(self.persist)
        if importlib.util.find_spec("runner.service") is not None:
            runner_token = await service_token(self.db_url, self.secret, "runner")
            runner_env = {**persist_env, "CODESYNC_SERVICE_TOKEN": runner_token}
            self.runner = Managed("runner", service_starter("runner", runner_env, self.tmp / "runner.log"))
            await self.runner.start()
            self.processes.append(self.runner)
        n_txns = max(cfg.block, int(cfg.rate * cfg.duration))
        for r in range(cfg.rooms):
            trace = load_trace(cfg.traces[r % len(cfg.traces)], n_txns, cfg.block)
            roles = {f"p{k}": ("owner" if k == 0 else "editor") for k in range(cfg.peers)}
            seeded = await seed_room(self.db_url, self.secret, roles, name=f"soak {r}")
            self.rooms.append(SoakRoom(self, r, seeded, trace))
        for room in self.rooms:
            for peer in room.peers:
                await peer.join()
        await self.wait(lambda: all(r.meshed() for r in self.rooms), 60, "initial mesh")
        m.log(f"{cfg.rooms} rooms x {cfg.peers} peers meshed with the persistence peer")

    async def wait(self, predicate, timeout: float, what: str) -> float:
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f}s")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    # --------------------------------------------------------------- faults
    async def recovered(self, name: str, since: float) -> None:
        """Every room meshed again and everything each peer holds saved; record the time."""
        m = self.metrics
        entry: dict[str, Any] = {"fault": name, "at": round(since - m.t0, 2)}
        try:
            await self.wait(lambda: all(r.meshed() for r in self.rooms), 60, f"{name}: mesh")
            entry["meshed_s"] = round(time.monotonic() - since, 3)
            targets = [r.targets() for r in self.rooms]
            await self.wait(lambda: all(SoakRoom.durable(t) for t in targets), 60, f"{name}: saved")
            entry["recovered_s"] = round(time.monotonic() - since, 3)
            entry["ok"] = True
        except TimeoutError as exc:
            entry["ok"], entry["error"] = False, str(exc)
        m.faults.append(entry)
        m.log(f"fault {name}: {entry}")

    async def fault_persist(self) -> None:
        assert self.persist is not None
        self.persist.kill9()
        await asyncio.sleep(self.cfg.down)
        await self.persist.restart()
        await self.recovered("persist kill -9", time.monotonic())

    async def fault_signaling(self) -> None:
        node = self.signal_nodes[1]
        node.kill9()
        await asyncio.sleep(self.cfg.down)
        await node.restart()
        since = time.monotonic()
        clients = [p.room.signaling for r in self.rooms for p in r.live_peers()]
        t = await self.wait(lambda: all(c.connected for c in clients), 60, "signaling reconnect")
        self.metrics.log(f"signaling-1 back: all peers' signaling reconnected after {t:.2f}s")
        await self.recovered("signaling-1 kill -9", since)

    async def fault_redis(self) -> None:
        self.redis.kill9()
        await asyncio.sleep(self.cfg.down)
        await self.redis.restart()
        since = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as http:
            async def healthy() -> bool:
                for port in self.signal_ports:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code != 200:
                            return False
                    except httpx.HTTPError:
                        return False
                return True

            deadline = time.monotonic() + 60
            while not await healthy() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        await self.recovered("redis kill -9", since)

    async def fault_churn(self) -> None:
        leaving = [r.peers[(1 + len(self.metrics.faults)) % len(r.peers)] for r in self.rooms]
        self.metrics.log("leaving: " + ", ".join(f"room {p.room_.index} {p.label} (notes up to {p.label}:{p.notes_made})"
                                                   for p in leaving))
        await asyncio.gather(*(p.leave() for p in leaving))
        await asyncio.sleep(self.cfg.down)
        since = time.monotonic()
        await asyncio.gather(*(p.join() for p in leaving))
        await self.recovered("peers leave + rejoin", since)

    async def fault_runner(self) -> None:
        if self.runner is None:
            self.metrics.faults.append({"fault": "runner kill -9", "ok": None, "skipped": "runner.service not available"})
            self.metrics.log("fault runner kill -9: skipped (runner.service is not available yet)")
            return
        # A run in room 0, then kill the runner while it runs; the document must stay intact.
        room = self.rooms[0].peers[0].room
        run_id = secrets.token_hex(6)
        sent = await room.broadcast_app({"op": "run", "run_id": run_id, "language": "python",
                                         "state_vector": base64.b64encode(room.doc.get_state()).decode()})
        self.metrics.log(f"run {run_id} requested from {sent} app-capable peers; killing the runner")
        await asyncio.sleep(0.3)
        self.runner.kill9()
        await asyncio.sleep(self.cfg.down)
        await self.runner.restart()
        await self.recovered("runner kill -9 mid-run", time.monotonic())

    async def schedule(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        faults = [self.fault_persist, self.fault_signaling, self.fault_redis, self.fault_churn, self.fault_runner]
        await asyncio.sleep(cfg.first_fault)
        for _ in range(cfg.rounds):
            for fault in faults:
                if stop.is_set():
                    return
                self.metrics.log(f"fault: {fault.__name__}")
                await fault()
                await asyncio.sleep(cfg.fault_gap)

    async def sample_memory(self, stop: asyncio.Event) -> None:
        m = self.metrics
        while not stop.is_set():
            t = m.now()
            m.rss.setdefault("soak peers (this process)", []).append((t, rss_kib(os.getpid()) or 0))
            for proc in self.processes:
                if proc.pid is not None:
                    value = rss_kib(proc.pid)
                    if value is not None:
                        m.rss.setdefault(proc.role, []).append((t, value))
            if int(t) % 15 == 0:
                done = [r.done_txns for r in self.rooms]
                m.log(f"progress: {sum(done)} of {sum(len(r.trace.txns) for r in self.rooms)} trace txns {done}")
            await asyncio.sleep(1.0)

    # --------------------------------------------------------------- run + verify
    async def run(self) -> dict[str, Any]:
        m = self.metrics
        await self.start()
        stop, done = asyncio.Event(), asyncio.Event()
        sampler = asyncio.create_task(self.sample_memory(done))
        replay_started = m.now()
        writers = [asyncio.create_task(r.writer()) for r in self.rooms]
        chatters = [asyncio.create_task(r.chatter(p, stop)) for r in self.rooms for p in r.peers]
        faults = asyncio.create_task(self.schedule(stop))
        outcomes = await asyncio.gather(*writers, return_exceptions=True)
        stalls = [str(o) for o in outcomes if isinstance(o, BaseException)]
        for text in stalls:
            m.log(f"WRITER FAILED: {text}")
        if stalls:
            faults.cancel()
        await asyncio.gather(faults, return_exceptions=True)  # every scheduled fault runs (the replay may end first)
        stop.set()
        await asyncio.gather(*chatters)
        replay_s = m.now() - replay_started
        m.log(f"replay done after {replay_s:.1f}s; settling")
        try:
            result = await self.verify()
        except TimeoutError as exc:
            m.log(f"VERIFY FAILED: {exc}")
            result = {"rooms": [], "lost_edits": None, "source_mismatches": None, "persist_exit": None,
                      "error": str(exc)}
        result["stalled"] = stalls
        done.set()
        await sampler
        result.update(replay_s=round(replay_s, 1))
        return result

    async def verify(self) -> dict[str, Any]:
        cfg = self.cfg

        def converged(room: SoakRoom) -> bool:
            docs = [(str(p.source()), sorted(p.notes().to_py())) for p in room.peers if p.room is not None]
            return all(d == docs[0] for d in docs)

        await self.wait(lambda: all(converged(r) for r in self.rooms), cfg.settle_timeout, "peers converge")
        await self.wait(lambda: all(r.saved() for r in self.rooms), cfg.settle_timeout, "everything saved")
        rooms_out, lost, mismatched = [], 0, 0
        store = await DocumentStore.open(Settings(database_url=self.db_url, data_dir=self.tmp / "data"))
        try:
            for room in self.rooms:
                peer = room.peers[0]
                stored_doc = pycrdt.Doc()
                stored_doc.apply_update((await store.load(room.seeded.id)).update)
                stored_source = str(stored_doc.get("source", type=pycrdt.Text))
                stored_notes = set(stored_doc.get("soak", type=pycrdt.Array).to_py())
                expected_notes = room.expected_notes()
                missing = expected_notes - stored_notes
                peer_notes = set(peer.notes().to_py())
                ok_source = stored_source == str(peer.source()) == room.trace.expected
                lost += len(missing) + len(expected_notes - peer_notes)
                mismatched += 0 if ok_source else 1
                rooms_out.append({
                    "room": room.index, "trace": room.trace.name, "txns": room.done_txns,
                    "complete_trace": room.trace.complete, "source_chars": len(stored_source),
                    "source_ok": ok_source, "notes": len(expected_notes), "notes_missing": len(missing),
                    "missing": sorted(missing | (expected_notes - peer_notes))[:20],
                })
        finally:
            await store.close()
        for room in self.rooms:
            for p in room.peers:
                await p.leave()
        code = self.persist.stop() if self.persist else None
        return {"rooms": rooms_out, "lost_edits": lost, "source_mismatches": mismatched, "persist_exit": code}

    def shutdown(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


# ----------------------------------------------------------------------------- report
def summarize(cfg: Config, metrics: Metrics, result: dict[str, Any], wall: float) -> dict[str, Any]:
    window = 10.0
    lat_windows = []
    if metrics.latencies:
        end = max(t for t, _ in metrics.latencies)
        w = 0.0
        while w <= end:
            vals = [v * 1000 for t, v in metrics.latencies if w <= t < w + window]
            if vals:
                lat_windows.append({"from_s": w, "n": len(vals), "p50_ms": round(pct(vals, 50), 2),
                                    "p99_ms": round(pct(vals, 99), 2)})
            w += window
    all_lat = [v * 1000 for _, v in metrics.latencies]
    edits = len(metrics.txns) + len(metrics.notes)
    span = (max(metrics.txns) - min(metrics.txns)) if len(metrics.txns) > 1 else 1.0
    memory = {}
    for role, samples in metrics.rss.items():
        if samples:
            memory[role] = {"first_mib": round(samples[0][1] / 1024, 1), "last_mib": round(samples[-1][1] / 1024, 1),
                            "max_mib": round(max(v for _, v in samples) / 1024, 1)}
    faults_ok = [f for f in metrics.faults if f.get("ok")]
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "wall_s": round(wall, 1),
        "edits": edits,
        "trace_txns": len(metrics.txns),
        "notes": len(metrics.notes),
        "edits_per_s": round(edits / span, 1),
        "latency_ms": {"n": len(all_lat), "p50": round(pct(all_lat, 50), 2), "p99": round(pct(all_lat, 99), 2),
                       "max": round(max(all_lat), 2) if all_lat else None},
        "latency_windows": lat_windows,
        "faults": metrics.faults,
        "faults_survived": len(faults_ok),
        "join_hangs": metrics.join_hangs,
        "memory": memory,
        **result,
    }


def write_report(summary: dict[str, Any], metrics: Metrics, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = out / f"soak-{stamp}"
    base.with_suffix(".json").write_text(json.dumps({"summary": summary, "events": metrics.events,
                                                      "rss": metrics.rss}, indent=1))
    cfg = summary["config"]
    lines = [
        f"CodeSync soak {stamp}",
        f"rooms x peers: {cfg['rooms']} x {cfg['peers']}  (trace rate {cfg['rate']} txn/s/room, block {cfg['block']})",
        f"wall: {summary['wall_s']} s, replay: {summary.get('replay_s')} s",
        f"edits: {summary['edits']} ({summary['trace_txns']} trace txns + {summary['notes']} notes), "
        f"{summary['edits_per_s']} edits/s sustained",
        f"edit latency: p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms, "
        f"max {summary['latency_ms']['max']} ms (n={summary['latency_ms']['n']})",
        f"faults survived: {summary['faults_survived']} of {sum(1 for f in summary['faults'] if f.get('ok') is not None)}",
    ]
    for f in summary["faults"]:
        lines.append(f"  - {f['fault']}: " + (f"skipped ({f['skipped']})" if f.get("skipped") else
                     f"meshed {f.get('meshed_s')} s, recovered (all saved) {f.get('recovered_s')} s"
                     + ("" if f.get("ok") else f"  FAILED {f.get('error')}")))
    lines.append(f"lost edits: {summary['lost_edits']}, rooms with a wrong source: {summary['source_mismatches']}")
    if summary.get("join_hangs"):
        lines.append(f"  Room.start() hung {summary['join_hangs']} time(s) (retried with a new Room)")
    for text in summary.get("stalled") or []:
        lines.append(f"  STALLED: {text}")
    if summary.get("error"):
        lines.append(f"  VERIFY FAILED: {summary['error']}")
    for r in summary["rooms"]:
        lines.append(f"  room {r['room']}: {r['trace']} {r['txns']} txns{' (full trace)' if r['complete_trace'] else ''}, "
                     f"{r['source_chars']} chars, source ok={r['source_ok']}, notes {r['notes']} missing {r['notes_missing']}"
                     + (f" {r['missing']}" if r["missing"] else ""))
    lines.append("memory (RSS MiB, first -> last, max):")
    for role, mem in summary["memory"].items():
        lines.append(f"  {role}: {mem['first_mib']} -> {mem['last_mib']} (max {mem['max_mib']})")
    lines.append("latency per 10 s window (p50 / p99 ms):")
    for w in summary["latency_windows"]:
        lines.append(f"  {w['from_s']:6.0f}s  n={w['n']:6d}  {w['p50_ms']:8.2f} / {w['p99_ms']:8.2f}")
    lines.append(f"persistence peer exit code on SIGTERM: {summary.get('persist_exit')}")
    text = "\n".join(lines) + "\n"
    base.with_suffix(".txt").write_text(text)
    print(text)
    try:
        plot(summary, metrics, base.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
    return base


def plot(summary: dict[str, Any], metrics: Metrics, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    if metrics.latencies:
        ax1.scatter([t for t, _ in metrics.latencies], [v * 1000 for _, v in metrics.latencies], s=1, alpha=0.3,
                    label="edit latency")
        ws = summary["latency_windows"]
        ax1.plot([w["from_s"] + 5 for w in ws], [w["p99_ms"] for w in ws], "r-", label="p99 (10 s)")
        ax1.plot([w["from_s"] + 5 for w in ws], [w["p50_ms"] for w in ws], "g-", label="p50 (10 s)")
        ax1.set_yscale("log")
    ax1.set_ylabel("ms")
    ax1.legend(loc="upper right")
    if metrics.txns:
        end = int(max(metrics.txns)) + 1
        per_s = [0] * end
        for t in metrics.txns + metrics.notes:
            if int(t) < end:
                per_s[int(t)] += 1
        ax2.plot(range(end), per_s, label="edits/s")
    ax2.set_ylabel("edits/s")
    for ax in (ax1, ax2, ax3):
        for f in summary["faults"]:
            if f.get("at") is not None:
                ax.axvline(f["at"], color="grey", linestyle=":", linewidth=1)
    for role, samples in metrics.rss.items():
        ax3.plot([t for t, _ in samples], [v / 1024 for _, v in samples], label=role)
    ax3.set_ylabel("RSS MiB")
    ax3.set_xlabel("seconds (dotted: faults)")
    ax3.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"CodeSync soak: {summary['config']['rooms']} rooms x {summary['config']['peers']} peers, "
                 f"lost edits {summary['lost_edits']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def soak(cfg: Config) -> dict[str, Any]:
    started = time.monotonic()
    s = Soak(cfg)
    try:
        result = await s.run()
    finally:
        s.shutdown()
    summary = summarize(cfg, s.metrics, result, time.monotonic() - started)
    summary["report"] = str(write_report(summary, s.metrics, cfg.out))
    summary["tmp"] = str(s.tmp)
    return summary


async def _main_task(cfg: Config) -> dict[str, Any]:
    """SIGTERM/SIGINT cancel the soak, so its child processes are still stopped."""
    task = asyncio.ensure_future(soak(cfg))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rooms", type=int, default=Config.rooms)
    ap.add_argument("--peers", type=int, default=Config.peers)
    ap.add_argument("--duration", type=float, default=Config.duration, help="seconds of trace replay")
    ap.add_argument("--rate", type=float, default=Config.rate, help="trace txns per second per room (speed-up)")
    ap.add_argument("--block", type=int, default=Config.block)
    ap.add_argument("--rounds", type=int, default=Config.rounds)
    ap.add_argument("--fault-gap", type=float, default=Config.fault_gap)
    ap.add_argument("--out", type=Path, default=Config.out)
    args = ap.parse_args(argv)
    cfg = Config(rooms=args.rooms, peers=args.peers, duration=args.duration, rate=args.rate, block=args.block,
                 rounds=args.rounds, fault_gap=args.fault_gap, out=args.out)
    summary = asyncio.run(_main_task(cfg))
    ok = not summary.get("stalled") and summary["lost_edits"] == 0 and summary["source_mismatches"] == 0 and all(
        f.get("ok") is not False for f in summary["faults"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
