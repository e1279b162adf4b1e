"""Redis hub: several signaling nodes sharing one Redis behave as one server.

Layout (``P`` = ``{redis_prefix}:sig``):

- ``P:nodes`` — sorted set, node id -> unix time of its last heartbeat (every ``presence_ttl/3``).
- ``P:room:{topic}`` — hash, ``{node}:{conn}`` -> the connection's presence entry (JSON).
- ``P:rooms`` — set of topics that have entries; ``P:noderooms:{node}`` — topics a node wrote to.
- ``P:peer:{peer id}`` — ``{principal}|{node}:{conn}``: who owns a peer id; expires ``presence_ttl``
  + ``CODESYNC_SIGNAL_PEER_ID_GRACE`` after its node's last heartbeat. Once its connection
  closed (or its node was reaped): ``{principal}|``, a reservation for that principal that
  expires after the grace.
- ``P:resv:{principal}`` — sorted set, the principal's reserved peer ids by expiry (the cap on
  how many one principal holds).
- channel ``P:bus`` (every node) — ``c`` notices ("topic X's entries changed"), ``r``
  notices ("a membership of topic X changed": user id, or empty when the room was deleted —
  every node re-checks its subscribers of X) and ``s`` notices (sessions / service tokens
  revoked: newline-separated revocation keys, see ``signaling.sessions``; every node closes
  the matching sockets).
- channel ``P:to:{node}`` (one per node) — ``m`` frames: a publish, already serialized with
  ``sender`` and ``clients`` *and framed as a WebSocket message*, sent only to the nodes that
  have subscribers of its topic and written as is to their local subscribers' sockets.

A node that stops heartbeating for ``presence_ttl`` seconds is reaped by whichever node notices
first: its entries are deleted and a ``c`` notice goes out, so its peers leave everyone's
presence. Each node keeps a view of the other nodes' entries only for topics it needs (topics
with local subscribers; every topic while it has service connections, for ``room-active``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from . import metrics
from .connection import Connection
from .hub import Entry, Hub

log = logging.getLogger("codesync.signal.redis")

# KEYS: room hash, rooms set; ARGV: field, topic. Remove one entry; forget the room when empty.
_LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return 1
"""
# KEYS: room hash, rooms set; ARGV: field prefix ("node:"), topic. Remove a dead node's entries.
_PURGE = """
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #ARGV[1]) == ARGV[1] then redis.call('HDEL', KEYS[1], f); n = n + 1 end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n
"""
# KEYS: peer key; ARGV: owner value, principal key, ttl ms. 1 = ours, 2 = taken over, 0 = refused.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]); return 1 end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]); return 1 end
local p = string.match(cur, '^([^|]*)|')
if p == ARGV[2] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]); return 2 end
return 0
"""
# KEYS: peer key, principal's reservation set; ARGV: owner value, principal key, grace ms,
# cap, peer key prefix, peer id. If still ours: reserve it to the principal for the grace
# (DEL when the grace is 0); the principal's oldest reservations beyond the cap are dropped.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local grace = tonumber(ARGV[3])
if grace <= 0 then redis.call('DEL', KEYS[1]); return 1 end
local mine = ARGV[2] .. '|'
redis.call('SET', KEYS[1], mine, 'PX', grace)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + grace, ARGV[6])
redis.call('PEXPIRE', KEYS[2], grace)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do
    local key = ARGV[5] .. old[i]
    if redis.call('GET', key) == mine then redis.call('DEL', key) end
  end
end
return 1
"""

# KEYS: node's peer set; ARGV: "|node:", peer key prefix, grace ms. The peer ids a dead node
# still owned become reservations of their principals (deleted when the grace is 0).
_PURGE_PEERS = """
local grace = tonumber(ARGV[3])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. id
  local cur = redis.call('GET', key)
  if cur and string.find(cur, ARGV[1], 1, true) then
    local p = string.match(cur, '^([^|]*)|')
    if grace > 0 and p then redis.call('SET', key, p .. '|', 'PX', grace) else redis.call('DEL', key) end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

BATCH = 512  # outbox messages per Redis pipeline
BATCH_BYTES = 256 * 1024  # at most this much in one batched PUBLISH
LINGER = 0.002  # seconds the send loop waits for more before a small batch goes out


def session_notice(node: bytes, keys: list[str]) -> bytes:
    """An ``s`` bus record: these revocation keys are revoked (no topic; keys after the header)."""
    return b"s %s 0 0\n%s" % (node, "\n".join(keys).encode())


def _pack(records: list[bytes]) -> bytes:
    """One bus message for several records (a single record goes as it is)."""
    if len(records) == 1:
        return records[0]
    return b"B" + b"".join(b"%d\n%s" % (len(r), r) for r in records)


def _unpack(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 1, len(data)
    try:
        while pos < end:
            nl = data.index(b"\n", pos)
            size = int(data[pos:nl])
            out.append(data[nl + 1 : nl + 1 + size])
            pos = nl + 1 + size
    except ValueError:  # a truncated or foreign message: keep what parsed
        pass
    return out


class RedisHub(Hub):
    def __init__(
        self, url: str, prefix: str, ttl: float, peer_id_grace: float = 60.0, reserve_cap: tuple[int, int] = (80, 20000)
    ):
        super().__init__(peer_id_grace, reserve_cap)
        self.node = uuid.uuid4().hex[:12]
        # A bounded pool that waits for a free connection (the default one fails with
        # MaxConnectionsError when hundreds of clients subscribe at once).
        pool = BlockingConnectionPool.from_url(url, max_connections=64, timeout=20, decode_responses=True)
        self.redis = Redis(connection_pool=pool)
        # The bus speaks bytes: publish frames cross Redis as complete WebSocket frames and are
        # written to the local subscribers' sockets as they arrive (no decoding, no re-encoding).
        self.bus = Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=8, timeout=20))
        self.ttl = max(0.5, float(ttl))
        # An owned peer id outlives its node's last heartbeat by the grace: if the node dies,
        # the id stays its principal's for the grace even before another node reaps it.
        self._owned_ms = int((self.ttl + self.peer_id_grace) * 1000)
        self.p = f"{prefix}:sig"
        self.channel = f"{self.p}:bus"
        self.node_b = self.node.encode()
        self.inbox = self._node_channel(self.node)
        # topic -> nodes that sent a change notice for it since the view was last read: they
        # get our publishes at once (a node joining a topic must not miss the first frames).
        self._noticed: dict[str, set[str]] = {}
        self._target_cache: dict[str, tuple[Any, frozenset[str]]] = {}
        # topic -> [view, a viewer among its entries, peer id -> entry | None]: the relay rule's
        self._relay_cache: dict[str, list[Any]] = {}
        self.views: dict[str, dict[str, Entry]] = {}  # topic -> other nodes' entries
        self._local_owner: dict[str, Connection] = {}  # peer id -> local connection owning it
        self._outbox: deque[tuple[str, bytes]] = deque()  # (channel, message)
        self._out_wake = asyncio.Event()
        self._refreshing: dict[str, asyncio.Task] = {}
        self._dirty: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._pubsub: Any = None
        self._stopped = False
        self._reads = 0
        self._applied: dict[str, int] = {}  # topic -> sequence number of the view's read
        self._leave = self.redis.register_script(_LEAVE)
        self._purge = self.redis.register_script(_PURGE)
        self._claim_script = self.redis.register_script(_CLAIM)
        self._release_script = self.redis.register_script(_RELEASE)
        self._purge_peers = self.redis.register_script(_PURGE_PEERS)

    # ------------------------------------------------------------------ keys
    def _room(self, topic: str) -> str:
        return f"{self.p}:room:{topic}"

    def _field(self, conn: Connection) -> str:
        return f"{self.node}:{conn.id}"

    def _noderooms(self, node: str) -> str:
        return f"{self.p}:noderooms:{node}"

    def _peer(self, peer_id: str) -> str:
        return f"{self.p}:peer:{peer_id}"

    def _nodepeers(self, node: str) -> str:
        return f"{self.p}:nodepeers:{node}"

    def _reservations(self, principal: str) -> str:
        return f"{self.p}:resv:{principal}"

    def _node_channel(self, node: str) -> str:
        return f"{self.p}:to:{node}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.redis.zadd(f"{self.p}:nodes", {self.node: time.time()})
        self._pubsub = self.bus.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel, self.inbox)
        self._tasks = [
            asyncio.create_task(self._listen(), name="signal-redis-listen"),
            asyncio.create_task(self._send_loop(), name="signal-redis-send"),
            asyncio.create_task(self._heartbeat(), name="signal-redis-heartbeat"),
        ]
        log.info("signal hub on Redis as node %s (prefix %s, presence ttl %.1fs)", self.node, self.p, self.ttl)

    async def stop(self) -> None:
        """Leave cleanly: our entries go now (not after the expiry), others are told."""
        self._stopped = True
        self._out_wake.set()  # the send loop also ends on the flag: redis-py can swallow a cancel
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that swallowed its cancellation must not hang the shutdown (SIGTERM).
            done, _ = await asyncio.wait(self._tasks, timeout=2.0)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it
        try:
            topics = set(self.topics) | set(await self.redis.smembers(self._noderooms(self.node)))
            await self._purge_node(self.node, topics)
        except Exception:  # noqa: BLE001 - Redis gone: the others reap us after the ttl
            log.warning("could not remove this node's presence from Redis", exc_info=True)
        try:
            if self._pubsub is not None:
                await self._pubsub.aclose()
            await self.redis.aclose()
            await self.bus.aclose()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ presence entries
    async def _entry_changed(self, conn: Connection, topic: str, present: bool) -> None:
        if self._stopped:  # connections closing after stop(): stop() removed all our entries
            return
        room = self._room(topic)
        if present:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(room, self._field(conn), json.dumps(conn.entry(topic), separators=(",", ":")))
            pipe.sadd(f"{self.p}:rooms", topic)
            pipe.sadd(self._noderooms(self.node), topic)
            first_look = topic not in self.views
            if first_look:  # the other nodes' entries, read in the same round trip
                self._reads += 1
                seq = self._reads
                pipe.hgetall(room)
            results = await pipe.execute()
            if first_look and seq > self._applied.get(topic, 0):
                self._applied[topic] = seq
                self.views[topic] = self._parse_view(results[-1])
        else:
            await self._leave(keys=[room, f"{self.p}:rooms"], args=[self._field(conn), topic])
        self._notice(topic)
        self.room_changed(topic)
        if topic not in self.topics and not self.services:
            self._forget_view(topic)

    def _forget_view(self, topic: str) -> None:
        self.views.pop(topic, None)
        self._applied.pop(topic, None)
        self._noticed.pop(topic, None)
        self._target_cache.pop(topic, None)
        self._relay_cache.pop(topic, None)

    def _notice(self, topic: str) -> None:
        t = topic.encode()
        self._outbox.append((self.channel, b"c %s 0 %d\n%s" % (self.node_b, len(t), t)))
        self._out_wake.set()

    def _remote_entries(self, topic: str) -> list[Entry]:
        return list(self.views.get(topic, {}).values())

    def _remote_count(self, topic: str) -> int:
        return len(self.views.get(topic, ()))

    async def _refresh(self, topic: str) -> None:
        """Re-read the other nodes' entries of ``topic`` from Redis.

        Reads can overlap (pooled connections); the one issued last wins, never an older one
        that happened to answer late.
        """
        self._reads += 1
        seq = self._reads
        noticed = set(self._noticed.get(topic, ()))
        raw = await self.redis.hgetall(self._room(topic))
        pending = self._noticed.get(topic)
        if pending is not None:  # the read covers every notice that came before it
            pending -= noticed
            if not pending:
                del self._noticed[topic]
        if seq > self._applied.get(topic, 0):
            self._applied[topic] = seq
            self.views[topic] = self._parse_view(raw)

    def _parse_view(self, raw: dict[str, str]) -> dict[str, Entry]:
        mine = f"{self.node}:"
        view: dict[str, Entry] = {}
        for fld, value in raw.items():
            if fld.startswith(mine):
                continue
            try:
                view[fld] = json.loads(value)
            except ValueError:
                continue
        return view

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        from .hub import aggregate_presence

        view = self._parse_view(await self.redis.hgetall(self._room(topic)))
        return aggregate_presence(self.local_entries(topic) + list(view.values()))

    # ------------------------------------------------------------------ relay rule (hub.admit)
    def _relay_view(self, topic: str) -> list[Any] | None:
        """[view, a viewer among its entries, peer id -> entry, peer id -> node (both built on
        first use)], derived once per version of the other nodes' entries of ``topic`` (views
        are replaced, never mutated, so the object is the version)."""
        view = self.views.get(topic)
        if not view:
            return None
        cached = self._relay_cache.get(topic)
        if cached is None or cached[0] is not view:
            cached = self._relay_cache[topic] = [view, any(e.get("r") == "viewer" for e in view.values()), None, None]
        return cached

    def _remote_viewers(self, topic: str) -> bool:
        if topic in self._refreshing:  # a change on its way: maybe a viewer
            return True
        derived = self._relay_view(topic)
        return derived is not None and derived[1]

    def _remote_peer(self, topic: str, peer_id: str) -> Entry | None:
        derived = self._relay_view(topic)
        if derived is None:
            return None
        if derived[2] is None:
            derived[2] = {pid: e for e in derived[0].values() for pid in (e.get("p") or ()) if isinstance(pid, str)}
        return derived[2].get(peer_id)

    def _local_peer(self, peer_id: str) -> Connection | None:
        return self._local_owner.get(peer_id)

    def _remote_node(self, topic: str, peer_id: str) -> str | None:
        """The other node whose subscriber lists ``peer_id`` in ``topic`` (its entries' view)."""
        derived = self._relay_view(topic)
        if derived is None:
            return None
        if derived[3] is None:  # peer id -> node, built on first use per version of the view
            derived[3] = {pid: fld.split(":", 1)[0] for fld, e in derived[0].items()
                          for pid in (e.get("p") or ()) if isinstance(pid, str)}
        return derived[3].get(peer_id)

    def _direct_remote(self, topic: str, frame: bytes, t0: float, to: str) -> bool:
        """A ``d`` record (the addressee's peer id, then the frame) on that node's channel only."""
        node = self._remote_node(topic, to)
        if node is None or node == self.node:
            return False
        t, target = topic.encode(), to.encode()
        message = b"d %s %.6f %d %d\n%s%s%s" % (self.node_b, t0, len(t), len(target), t, target, frame)
        self._outbox.append((self._node_channel(node), message))
        self._out_wake.set()
        return True

    async def _settle(self, topic: str) -> bool:
        """A change notice for ``topic`` arrived and its re-read is running: wait for it (bounded).

        Notices travel on the bus ahead of the publishes that follow them, so a peer id just
        announced on another node is in the view once this returns.
        """
        task = self._refreshing.get(topic)
        if task is None:
            return False
        await asyncio.wait({task}, timeout=2.0)
        return True

    def _tracked(self, topic: str) -> bool:
        return topic in self.topics or bool(self.services)

    def _schedule_refresh(self, topic: str) -> None:
        if topic in self._refreshing:
            self._dirty.add(topic)
            return
        self._refreshing[topic] = asyncio.create_task(self._refresh_loop(topic))

    async def _refresh_loop(self, topic: str) -> None:
        try:
            while True:
                self._dirty.discard(topic)
                if not self._tracked(topic):
                    self._forget_view(topic)
                    return
                await self._refresh(topic)
                self.room_changed(topic)
                if topic not in self._dirty:
                    return
        except Exception:  # noqa: BLE001
            log.warning("refreshing %s failed", topic, exc_info=True)
        finally:
            self._refreshing.pop(topic, None)

    async def _services_appeared(self) -> None:
        """A service connected here: load every room so ``room-active`` covers all of them."""
        topics = list(await self.redis.smembers(f"{self.p}:rooms"))
        if topics:
            self._reads += 1
            seq = self._reads
            pipe = self.redis.pipeline(transaction=False)
            for topic in topics:
                pipe.hgetall(self._room(topic))
            for topic, raw in zip(topics, await pipe.execute()):
                if seq > self._applied.get(topic, 0):
                    self._applied[topic] = seq
                    self.views[topic] = self._parse_view(raw)
        self.active = {
            t for t in set(self.views) | set(self.topics) if any(e.get("u") for e in self.local_entries(t) + self._remote_entries(t))
        }

    # ------------------------------------------------------------------ peer ids
    async def _claim(self, conn: Connection, peer_id: str) -> bool:
        owner = f"{conn.principal_key}|{self._field(conn)}"
        result = await self._claim_script(
            keys=[self._peer(peer_id)], args=[owner, conn.principal_key, self._owned_ms]
        )
        if not result:
            return False
        await self.redis.sadd(self._nodepeers(self.node), peer_id)
        previous = self._local_owner.get(peer_id)
        if previous is not None and previous is not conn:
            previous.bound.discard(peer_id)
            for topic, used in previous.peer_ids.items():
                if peer_id in used:
                    used.discard(peer_id)
                    await self._entry_changed(previous, topic, present=True)
        self._local_owner[peer_id] = conn
        return True

    async def _release(self, conn: Connection, peer_ids: set[str]) -> None:
        principal = conn.principal_key
        owner = f"{principal}|{self._field(conn)}"
        cap = self.reserve_cap[1] if conn.is_service else self.reserve_cap[0]
        for peer_id in peer_ids:
            if self._local_owner.get(peer_id) is conn:
                del self._local_owner[peer_id]
            if self._stopped:
                continue  # stop() turns every peer id of this node into a reservation at once
            try:
                await self._release_script(
                    keys=[self._peer(peer_id), self._reservations(principal)],
                    args=[owner, principal, int(self.peer_id_grace * 1000), cap, f"{self.p}:peer:", peer_id],
                )
                await self.redis.srem(self._nodepeers(self.node), peer_id)
            except Exception:  # noqa: BLE001 - expires on its own
                log.debug("release of %s failed", peer_id, exc_info=True)

    async def _broadcast_membership(self, topic: str, user_id: str | None) -> None:
        """An ``r`` notice: every other node re-checks its subscribers of ``topic``.

        Published directly (not through the outbox), so the REST call that changed the
        membership returns only once every node has been told.
        """
        t = topic.encode()
        await self.bus.publish(self.channel, b"r %s 0 %d\n%s%s" % (self.node_b, len(t), t, (user_id or "").encode()))

    async def _broadcast_sessions(self, keys: set[str]) -> None:
        """An ``s`` notice: every other node closes the sockets of these revoked sessions."""
        await self.bus.publish(self.channel, session_notice(self.node_b, sorted(keys)))

    # ------------------------------------------------------------------ fan-out
    def _targets(self, topic: str) -> set[str] | frozenset[str]:
        """Other nodes with subscribers of ``topic`` (as far as this node knows)."""
        view = self.views.get(topic)
        cached = self._target_cache.get(topic)
        if cached is not None and cached[0] is view:
            nodes = cached[1]
        else:  # views are replaced, never mutated, when re-read: the object is the version
            nodes = frozenset(fld.split(":", 1)[0] for fld in view or ())
            self._target_cache[topic] = (view, nodes)
        noticed = self._noticed.get(topic)
        return nodes | noticed if noticed else nodes

    async def _fanout_remote(self, topic: str, frame: bytes, t0: float) -> None:
        """One PUBLISH per other node with subscribers, on that node's own channel.

        Nodes without subscribers of the topic (and this node) never see the frame. A node
        that just joined the topic is a target from its change notice on, before the view of
        its entries is read (a notice precedes, on the ordered bus, anything it publishes).
        """
        if not self.views.get(topic) and topic not in self._noticed:
            return
        t = topic.encode()
        message = b"m %s %.6f %d\n%s%s" % (self.node_b, t0, len(t), t, frame)
        for node in self._targets(topic):
            self._outbox.append((self._node_channel(node), message))
        self._out_wake.set()

    async def _send_loop(self) -> None:
        """Drain the outbox into Redis in order, one round trip per batch.

        Consecutive messages for the same channel travel as one PUBLISH (``B`` + length-prefixed
        records, at most ``BATCH_BYTES``): under load a node sends and parses a few large
        Redis messages instead of one per publish.
        """
        outbox = self._outbox
        while not self._stopped:
            await self._out_wake.wait()
            if len(outbox) < BATCH // 4:
                # Linger a moment so one round trip carries what the next few ms bring: a round
                # trip costs ~100 µs of redis-py CPU on each side, whatever it carries.
                await asyncio.sleep(LINGER)
            self._out_wake.clear()
            while outbox:
                pipe = self.bus.pipeline(transaction=False)
                channel, records, size = None, [], 0
                for _ in range(min(BATCH, len(outbox))):
                    ch, message = outbox.popleft()
                    if records and (ch != channel or size + len(message) > BATCH_BYTES):
                        pipe.publish(channel, _pack(records))
                        records, size = [], 0
                    channel = ch
                    records.append(message)
                    size += len(message)
                if records:
                    pipe.publish(channel, _pack(records))
                try:
                    await pipe.execute()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - lost frames; y-webrtc peers re-announce
                    metrics.REFUSALS.labels("redis_error").inc()
                    log.warning("publishing to Redis failed", exc_info=True)

    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        self._on_bus(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect and carry on
                log.warning("Redis pub/sub listener failed; resubscribing", exc_info=True)
                await asyncio.sleep(0.5)
                try:
                    await self._pubsub.subscribe(self.channel, self.inbox)
                except Exception:  # noqa: BLE001
                    pass

    def _on_bus(self, data: bytes) -> None:
        if data[:1] == b"B":
            for record in _unpack(data):
                self._on_record(record)
        else:
            self._on_record(data)

    def _on_record(self, data: bytes) -> None:
        if data[:2] == b"d ":
            self._on_directed(data)
            return
        try:
            header, rest = data.split(b"\n", 1)
            kind, node, t0, n = header.split(b" ")
            size = int(n)
            topic = rest[:size].decode()
        except (ValueError, UnicodeDecodeError):
            return
        if node == self.node_b:
            return
        if kind == b"m":
            if topic in self.topics:
                self.deliver_frame(topic, rest[size:])  # already a complete WebSocket frame
                metrics.FANOUT.observe(max(0.0, time.time() - float(t0)))
        elif kind == b"c":
            sender = node.decode()
            if topic in self.topics and "-" not in sender:  # "{node}-reaped": gone, not a target
                self._noticed.setdefault(topic, set()).add(sender)
            if self._tracked(topic):
                self._schedule_refresh(topic)
        elif kind == b"r" and topic in self.topics:
            self.recheck_soon(topic, rest[size:].decode() or None)
        elif kind == b"s":
            self.close_sessions(rest[size:].decode(errors="replace").split("\n"))

    def _on_directed(self, data: bytes) -> None:
        """A directed frame another node sent here: to the subscriber holding its addressee's
        peer id, or (it moved, or left) to every local subscriber of the topic, as before."""
        try:
            header, rest = data.split(b"\n", 1)
            _, node, t0, n, m = header.split(b" ")
            size, tsize = int(n), int(m)
            topic = rest[:size].decode()
            to = rest[size:size + tsize].decode()
        except (ValueError, UnicodeDecodeError):
            return
        if node == self.node_b or topic not in self.topics:
            return
        frame = rest[size + tsize:]
        target = self._local_subscriber(topic, to)
        if target is not None:
            metrics.MESSAGES_OUT.inc()
            target.send_frame(frame)
        else:
            self.deliver_frame(topic, frame)
        metrics.FANOUT.observe(max(0.0, time.time() - float(t0)))

    # ------------------------------------------------------------------ liveness
    async def _heartbeat(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.warning("presence heartbeat failed", exc_info=True)

    async def _beat(self) -> None:
        now = time.time()
        added = await self.redis.zadd(f"{self.p}:nodes", {self.node: now})
        if added:  # we had been reaped (stalled longer than the ttl): write our entries again
            log.warning("node %s was reaped while alive; re-registering", self.node)
            for topic, subs in list(self.topics.items()):
                for conn in list(subs.values()):
                    await self._entry_changed(conn, topic, present=True)
        if self._local_owner:
            pipe = self.redis.pipeline(transaction=False)
            for peer_id in self._local_owner:
                pipe.pexpire(self._peer(peer_id), self._owned_ms)
            await pipe.execute()
        dead = await self.redis.zrangebyscore(f"{self.p}:nodes", "-inf", now - self.ttl)
        for node in dead:
            if node != self.node:
                log.info("reaping signaling node %s (no heartbeat for %.1fs)", node, self.ttl)
                await self._purge_node(node, set(await self.redis.smembers(self._noderooms(node))))

    async def _purge_node(self, node: str, topics: set[str]) -> None:
        await self._purge_peers(
            keys=[self._nodepeers(node)], args=[f"|{node}:", f"{self.p}:peer:", int(self.peer_id_grace * 1000)]
        )
        for topic in topics:
            await self._purge(keys=[self._room(topic), f"{self.p}:rooms"], args=[f"{node}:", topic])
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self._noderooms(node))
        pipe.zrem(f"{self.p}:nodes", node)
        for topic in topics:
            pipe.publish(self.channel, f"c {node}-reaped 0 {len(topic)}\n{topic}")
        await pipe.execute()
        for topic in topics:
            if self._tracked(topic) and node != self.node:
                self._schedule_refresh(topic)
