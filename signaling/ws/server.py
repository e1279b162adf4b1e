"""``WS /signal`` and ``GET /api/rooms/{id}/presence``.

Transport only: authenticate, apply the per-connection limits, turn frames into hub calls.
The wire format is in :mod:`signaling.ws.protocol`, the room state in the hub
(:mod:`signaling.ws.hub`, in-process or Redis).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiohttp import WSMsgType, web

from ..access import room_role
from ..errors import ApiError
from codesync.backends import Backends, shared_or
from codesync.logs import CONN_ID
from codesync.settings import Settings
from ..principal import Principal, principal_from_token, require_user
from ..rooms import LISTENERS_KEY, add_membership_listener
from ..state import STATE, AppState, get_state
from ..tokens import TokenError
from . import metrics, protocol
from .connection import Connection
from .hub import Hub
from .limits import Limits
from .memory import MemoryHub
from .protocol import ProtocolError

log = logging.getLogger("codesync.signal")

HUB: web.AppKey[Hub] = web.AppKey("codesync_signal_hub", Hub)
LIMITS: web.AppKey[Limits] = web.AppKey("codesync_signal_limits", Limits)
SERVICE_LIMITS: web.AppKey[Limits] = web.AppKey("codesync_signal_service_limits", Limits)


def setup(app: web.Application) -> None:
    app.router.add_get("/signal", signal_handler)
    app.router.add_get("/api/rooms/{room_id}/presence", presence_handler)
    app.cleanup_ctx.append(_hub_context)
    app.on_shutdown.append(_going_away)


# The hub: in this process, or shared by every node through Redis (codesync/backends.py).
HUBS: Backends[Hub] = Backends("hub", shared_or("memory"))


@HUBS.register("memory")
def _memory_hub(settings: Settings, grace: float, cap: tuple[int, int]) -> Hub:
    return MemoryHub(grace, cap)


@HUBS.register("redis")
def _redis_hub(settings: Settings, grace: float, cap: tuple[int, int]) -> Hub:
    from .redis_backend import RedisHub

    return RedisHub(settings.redis_url or "", settings.redis_prefix, settings.presence_ttl, grace, cap)


def make_hub(state: AppState) -> Hub:
    settings = state.settings
    user, service = Limits.from_settings(settings), Limits.for_services(settings)
    # Reservations one principal may hold: every peer id of all its connections, twice over
    # (a reconnect loop only evicts its own oldest).
    cap = (2 * user.max_peer_ids * user.max_conns_per_user, service.max_peer_ids)
    return HUBS.create(settings, settings.signal_peer_id_grace, cap)


async def _hub_context(app: web.Application):
    state = app[STATE]
    hub = make_hub(state)
    await hub.start()
    app[HUB] = hub
    app[LIMITS] = Limits.from_settings(state.settings)
    app[SERVICE_LIMITS] = Limits.for_services(state.settings)

    async def lookup(topic: str, user_ids: Iterable[str]) -> dict[str, str | None]:
        async with state.sessions() as session:
            found = {uid: await room_role(session, topic, uid) for uid in user_ids}
        return {uid: (role.value if role is not None else None) for uid, role in found.items()}

    # Membership changes made through the REST API (on this node) while users are connected.
    hub.role_lookup = lookup
    add_membership_listener(state, hub.membership_changed)
    try:
        yield
    finally:
        listeners = state.extras.get(LISTENERS_KEY, [])
        if hub.membership_changed in listeners:
            listeners.remove(hub.membership_changed)
        await hub.close_all(protocol.CLOSE_GOING_AWAY, "server shutting down")
        await hub.stop()


async def _going_away(app: web.Application) -> None:
    hub = app.get(HUB)
    if hub is not None:
        await hub.close_all(protocol.CLOSE_GOING_AWAY, "server shutting down")


# ----------------------------------------------------------------------------- HTTP
async def presence_handler(request: web.Request) -> web.Response:
    """Who is connected to the room now (members only)."""
    principal = await require_user(request)
    room_id = request.match_info["room_id"]
    state = get_state(request)
    async with state.sessions() as session:
        role = await room_role(session, room_id, principal.user_id or "")
    if role is None:
        raise ApiError(403, "forbidden", "not a member of this room")
    peers = await request.app[HUB].presence(room_id)
    return web.json_response({"room_id": room_id, "peers": peers})


# ----------------------------------------------------------------------------- WebSocket
async def signal_handler(request: web.Request) -> web.WebSocketResponse:
    state = get_state(request)
    hub = request.app[HUB]
    limits = request.app[LIMITS]
    # compress=False: frames are written pre-encoded (connection.encode_text_frame), never deflated.
    ws = web.WebSocketResponse(heartbeat=limits.heartbeat, max_msg_size=limits.max_frame, autoping=True, compress=False)
    await ws.prepare(request)

    principal = await _authenticate(state, ws, request.query.get("token"))
    if principal is None:
        return ws
    if principal.is_service:
        limits = request.app[SERVICE_LIMITS]
    conn = Connection(ws, principal, limits, request.transport, request.writer.drain)
    CONN_ID.set(conn.id)
    if not hub.can_attach(conn, limits.max_conns_per_user):
        metrics.REFUSALS.labels("too_many_connections").inc()
        await _refuse(ws, "too_many_connections", "too many connections for this user", protocol.CLOSE_TOO_MANY_CONNECTIONS)
        return ws

    await hub.attach(conn)
    expiry = _schedule_expiry(conn)
    try:
        async for msg in ws:
            if conn.closed:
                break
            if conn.closing:
                continue
            if msg.type == WSMsgType.TEXT:
                await _handle(state, hub, conn, msg.data)
                await conn.backpressure()
            elif msg.type == WSMsgType.BINARY:
                _bad(conn, ProtocolError("binary_unsupported", "send JSON text frames, not binary"))
            elif msg.type == WSMsgType.ERROR:
                break
        if ws.close_code == protocol.CLOSE_TOO_BIG:
            metrics.REFUSALS.labels("too_large").inc()
    except Exception:  # noqa: BLE001 - never a traceback to the client, never a dead server
        log.exception("signal connection %s failed", conn.id)
        conn.close(protocol.CLOSE_INTERNAL, "internal error")
    finally:
        if expiry is not None:
            expiry.cancel()
        try:
            await hub.detach(conn)
        finally:
            await conn.finish()
    return ws


async def _authenticate(state: AppState, ws: web.WebSocketResponse, token: str | None) -> Principal | None:
    """The connection's principal, or None after closing with 4003 (or 4001 when expired)."""
    if not token:
        metrics.REFUSALS.labels("unauthorized").inc()
        await _refuse(ws, "unauthorized", "missing ?token=", protocol.CLOSE_UNAUTHORIZED)
        return None
    try:
        principal = await principal_from_token(state, token)
    except TokenError as exc:
        expired = exc.code == "token_expired"
        metrics.REFUSALS.labels("token_expired" if expired else "unauthorized").inc()
        code = protocol.CLOSE_TOKEN_EXPIRED if expired else protocol.CLOSE_UNAUTHORIZED
        await _refuse(ws, exc.code if expired else "unauthorized", exc.message, code)
        return None
    if principal.expires_at is not None and principal.expires_at <= time.time():
        metrics.REFUSALS.labels("token_expired").inc()
        await _refuse(ws, "token_expired", "token has expired", protocol.CLOSE_TOKEN_EXPIRED)
        return None
    return principal


async def _refuse(ws: web.WebSocketResponse, code: str, message: str, close_code: int) -> None:
    try:
        await ws.send_str(protocol.error_frame(code, message))
        await asyncio.wait_for(ws.close(code=close_code, message=message.encode()[:120]), 2.0)
    except Exception:  # noqa: BLE001 - the client may already be gone
        pass


def _schedule_expiry(conn: Connection) -> asyncio.TimerHandle | None:
    expires_at = conn.principal.expires_at
    if expires_at is None:
        return None
    loop = asyncio.get_running_loop()

    def expire() -> None:
        metrics.REFUSALS.labels("token_expired").inc()
        conn.send(protocol.error_frame("token_expired", "access token expired: reconnect with a fresh one"))
        conn.close_soon(protocol.CLOSE_TOKEN_EXPIRED, "token expired")

    return loop.call_at(loop.time() + max(0.0, expires_at - time.time()), expire)


def _bad(conn: Connection, exc: ProtocolError) -> None:
    """Answer a bad frame with an ``error`` frame; too many of them close the socket (1008)."""
    metrics.REFUSALS.labels(exc.code).inc()
    conn.strikes += 1
    conn.send(protocol.error_frame(exc.code, exc.message, exc.topic))
    if conn.strikes >= conn.limits.max_strikes and not conn.closing:
        log.info("closing %s: %d bad frames", conn.id, conn.strikes)
        conn.close_soon(protocol.CLOSE_POLICY, "too many bad frames")


_IN = {kind: metrics.MESSAGES_IN.labels(kind) for kind in ("publish", "ping", "subscribe", "unsubscribe", "invalid")}


async def _handle(state: AppState, hub: Hub, conn: Connection, text: str) -> None:
    try:
        await _dispatch(state, hub, conn, text)
    except Exception:  # noqa: BLE001 - e.g. Redis or the database briefly unavailable
        log.exception("handling a frame of %s failed", conn.id)
        metrics.REFUSALS.labels("unavailable").inc()
        conn.send(protocol.error_frame("unavailable", "the server could not handle this frame now; try again"))


async def _dispatch(state: AppState, hub: Hub, conn: Connection, text: str) -> None:
    if not conn.bucket.take():
        _bad(conn, ProtocolError("rate_limited", f"more than {conn.limits.rate:g} frames per second"))
        return
    try:
        message = protocol.parse(text)
    except ProtocolError as exc:
        _IN["invalid"].inc()
        _bad(conn, exc)
        return
    if isinstance(message, protocol.Publish):
        _IN["publish"].inc()
        try:
            await _publish(hub, conn, message)
        except ProtocolError as exc:  # e.g. data too deeply nested to relay
            _bad(conn, exc.__class__(exc.code, exc.message, message.topic))
    elif isinstance(message, protocol.Ping):
        _IN["ping"].inc()
        conn.send(protocol.PONG)
    elif isinstance(message, protocol.Subscribe):
        _IN["subscribe"].inc()
        await _subscribe(state, hub, conn, message.topics)
    elif isinstance(message, protocol.Unsubscribe):
        _IN["unsubscribe"].inc()
        for topic in message.topics:
            await hub.unsubscribe(conn, topic)


async def _subscribe(state: AppState, hub: Hub, conn: Connection, topics: tuple[str, ...]) -> None:
    """Join the frame's new topics, looking at no more of them than the connection has room for.

    Every topic looked at takes a slot of this frame, whether it is joined or refused, so one
    frame costs at most ``max_topics`` membership lookups however many topics it names; the
    rest are refused together in one ``too_many_topics`` error, without lookups. Each refused
    topic is a strike, so a frame of foreign rooms closes the socket (1008) after
    ``max_strikes`` lookups.
    """
    new = [t for t in topics if t not in conn.roles]
    room = max(0, conn.limits.max_topics - len(conn.roles))
    looked, rest = new[:room], new[room:]
    for i, topic in enumerate(looked):
        if conn.closing or conn.closed:  # struck out: the rest of the frame is not looked at
            return
        role: str | None = None
        if not conn.is_service:  # service connections may join every room
            metrics.LOOKUPS.inc()
            async with state.sessions() as session:
                found = await room_role(session, topic, conn.principal.user_id or "")
            if found is None:
                _bad(conn, ProtocolError("forbidden", "not a member of this room", topic))
                continue
            role = found.value
        if conn.closed or topic in conn.roles:  # closed or joined meanwhile (lookups yield)
            continue
        conn.revoked.discard(topic)
        await hub.subscribe(conn, topic, role)
    if rest and not (conn.closing or conn.closed):
        more = f" (and {len(rest) - 1} more)" if len(rest) > 1 else ""
        _bad(conn, ProtocolError(
            "too_many_topics", f"at most {conn.limits.max_topics} topics per connection: refused{more}", rest[0]
        ))


async def _publish(hub: Hub, conn: Connection, message: protocol.Publish) -> None:
    topic = message.topic
    if topic not in conn.roles:
        if topic in conn.revoked:
            # Membership removed while connected: a stock y-webrtc client never learns it and
            # keeps publishing (announces, answers) — refuse without a strike, no 1008 close.
            metrics.REFUSALS.labels("forbidden").inc()
            conn.send(protocol.error_frame("forbidden", "no longer a member of this room", topic))
            return
        _bad(conn, ProtocolError("not_subscribed", "subscribe to a topic before publishing to it", topic))
        return
    refused = await hub.admit(conn, message)
    if refused is not None:
        if refused == "peer_id_taken":
            _bad(conn, ProtocolError(refused, "that peer id belongs to another user (or is kept for them after a disconnect)", topic))
        elif refused == "too_many_peer_ids":
            # No strike: a stock y-webrtc client in more rooms than this over one socket is
            # not abusive, and must not lose its other rooms to a 1008 close.
            metrics.REFUSALS.labels(refused).inc()
            conn.send(protocol.error_frame(refused, f"at most {conn.limits.max_peer_ids} peer ids per connection", topic))
        else:  # relay_refused: a stock client between a viewer and a peer; no strike either
            metrics.REFUSALS.labels(refused).inc()
            conn.send(protocol.error_frame(refused, _RELAY_REFUSED, topic))
        return
    if topic not in conn.roles:  # membership revoked while the frame was being admitted
        metrics.REFUSALS.labels("forbidden").inc()
        conn.send(protocol.error_frame("forbidden", "no longer a member of this room", topic))
        return
    await hub.publish(conn, topic, message.data, message.to)


_RELAY_REFUSED = (
    "not relayed: signalling between a viewer and a peer is relayed only when the other side "
    "enforces roles (announces the capability 'roles'); stock y-webrtc clients do not"
)
