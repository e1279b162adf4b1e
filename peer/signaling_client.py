"""The WebSocket client to ``/signal``: one connection, any number of rooms (topics).

A user-like peer has one connection for its one room; a service peer (persistence,
runner) joins many rooms over one connection and learns from ``room-active`` /
``room-idle`` frames which rooms need it. The client keeps the connection alive on its
own: an application ``ping`` every ``ping_interval`` seconds, a reconnect when nothing
arrived for ``2 * ping_interval``, exponential backoff with jitter between attempts, and on
every (re)connect it re-subscribes all topics and tells each topic's handler so that the
room re-announces itself (y-webrtc does the same).

It knows nothing of rooms: a topic's frames go to whatever :class:`TopicHandler` subscribed
it (a room's :class:`peer.mesh.Mesh`); service-wide frames (``room-active``, ``room-idle``,
``presence``, errors) are events (:mod:`peer.events`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from .events import Emitter

log = logging.getLogger(__name__)


class TopicHandler(Protocol):
    """What receives one topic's frames (a room's mesh)."""

    def signal_received(self, message: dict[str, Any]) -> None: ...

    def signaling_connected(self) -> None: ...

    def signaling_disconnected(self) -> None: ...


def websocket_url(url: str) -> str:
    """``http://h:p`` → ``ws://h:p/signal``; a ``ws(s)://`` URL is kept (path defaults to /signal)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"not a signaling URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/signal"):
        path = path + "/signal"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def http_base_url(url: str) -> str:
    """The HTTP base of a signaling URL (for ``/api/ice-servers``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/").removesuffix("/signal")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class SignalingClient:
    def __init__(
        self,
        signaling_url: str,
        token: str,
        *,
        ping_interval: float = 15.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
        token_provider: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.url = websocket_url(signaling_url)
        self.http_base = http_base_url(signaling_url)
        self.token = token
        self.token_provider = token_provider  # e.g. a refresh-token exchange for a user peer
        self.ping_interval = ping_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._topics: dict[str, TopicHandler] = {}
        self._events = Emitter("signaling")
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._last_received = 0.0
        self._attempts = 0
        self.connects = 0  # how many times a connection was established (tests, metrics)
        self.last_close_code: int | None = None
        self._ice_servers: list[Any] | None = None

    # ------------------------------------------------------------------ callbacks
    def on_room_active(self, cb: Callable[[str], Any]) -> Callable[[], None]:
        return self._events.subscribe("room-active", cb)

    def on_room_idle(self, cb: Callable[[str], Any]) -> Callable[[], None]:
        return self._events.subscribe("room-idle", cb)

    def on_presence(self, cb: Callable[[str, list[dict[str, Any]]], Any]) -> Callable[[], None]:
        return self._events.subscribe("presence", cb)

    def on_connected(self, cb: Callable[[], Any]) -> Callable[[], None]:
        return self._events.subscribe("connected", cb)

    def on_disconnected(self, cb: Callable[[], Any]) -> Callable[[], None]:
        return self._events.subscribe("disconnected", cb)

    def on_error(self, cb: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Every ``{"type":"error"}`` frame (with or without a topic)."""
        return self._events.subscribe("error-frame", cb)

    # ------------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._connected.is_set()

    async def start(self, wait: bool = True) -> None:
        """Start the connection loop; with ``wait``, return once connected (or raise)."""
        if self._task is None:
            self._stopping = False
            self._session = aiohttp.ClientSession()
            self._task = asyncio.create_task(self._run(), name=f"signaling {self.url}")
        if wait:
            try:
                await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
            except asyncio.TimeoutError:
                await self.stop()
                raise ConnectionError(
                    f"could not connect to {self.url} within {self.connect_timeout}s"
                    + (f" (close code {self.last_close_code})" if self.last_close_code else "")
                ) from None

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if self._ws is not None and not self._ws.closed:
            try:
                await asyncio.wait_for(self._ws.close(), 2)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def ice_servers(self) -> list[Any]:
        """ICE servers from ``GET /api/ice-servers`` (fetched once per client, refreshed on reconnect)."""
        if self._ice_servers is None:
            from .ice import fetch_ice_servers  # loads aiortc: only when a room asks

            self._ice_servers = await fetch_ice_servers(self.http_base, self.token)
        return self._ice_servers

    # ------------------------------------------------------------------ topics
    async def subscribe(self, topic: str, handler: TopicHandler) -> None:
        self._topics[topic] = handler
        if self.connected:
            await self._send({"type": "subscribe", "topics": [topic]})
            handler.signaling_connected()

    async def unsubscribe(self, topic: str) -> None:
        if self._topics.pop(topic, None) is not None and self.connected:
            await self._send({"type": "unsubscribe", "topics": [topic]})

    async def publish(self, topic: str, data: Any) -> bool:
        """Publish into a topic; False when not connected (the frame is dropped)."""
        if not self.connected:
            return False
        return await self._send({"type": "publish", "topic": topic, "data": data})

    async def _send(self, message: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(orjson.dumps(message).decode())
            return True
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            log.info("signaling send failed: %s", exc)
            return False

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        delay = self.backoff_initial
        while not self._stopping:
            opened = False
            try:
                opened = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except aiohttp.WSServerHandshakeError as exc:
                self.last_close_code = exc.status
                log.warning("signaling refused the connection: HTTP %s", exc.status)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                log.info("signaling connection failed: %s", exc)
            except Exception:
                log.exception("signaling connection crashed")
            finally:
                if self._connected.is_set():
                    self._connected.clear()
                    self._ws = None
                    for handler in list(self._topics.values()):
                        try:
                            handler.signaling_disconnected()
                        except Exception:
                            log.exception("room disconnect handler failed")
                    self._events.emit("disconnected")
            if self._stopping:
                break
            if opened:
                delay = self.backoff_initial
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.backoff_max)

    async def _connect_once(self) -> bool:
        assert self._session is not None
        self._attempts += 1
        if self.token_provider is not None and self._attempts > 1:
            try:
                self.token = await self.token_provider()  # access tokens expire; services' do not
            except Exception:
                log.exception("token provider failed; reconnecting with the old token")
        url = self.url + "?" + urlencode({"token": self.token})
        ws = await self._session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0), max_msg_size=4 << 20)
        self._ws = ws
        self._last_received = time.monotonic()
        self.connects += 1
        self._ice_servers = None if self.connects > 1 else self._ice_servers
        if self._topics:
            await self._send({"type": "subscribe", "topics": list(self._topics)})
        self._connected.set()
        self._events.emit("connected")
        for handler in list(self._topics.values()):
            try:
                handler.signaling_connected()
            except Exception:
                log.exception("room connect handler failed")
        pinger = asyncio.create_task(self._ping_loop(ws))
        try:
            async for msg in ws:
                self._last_received = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(msg.data)
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    break
        finally:
            pinger.cancel()
            self.last_close_code = ws.close_code
            if not ws.closed:
                await ws.close()
        return True

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.ping_interval)
            if time.monotonic() - self._last_received > 2 * self.ping_interval:
                log.info("signaling silent for %.0fs; reconnecting", 2 * self.ping_interval)
                await ws.close()
                return
            await self._send({"type": "ping"})

    def _dispatch(self, raw: str) -> None:
        try:
            message = orjson.loads(raw)  # every frame of the room: the stdlib parser was a tenth of a big room's join CPU
        except orjson.JSONDecodeError:
            log.info("ignoring a non-JSON signaling frame")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        topic = message.get("topic")
        if kind == "pong":
            return
        if kind in ("room-active", "room-idle") and isinstance(topic, str):
            self._events.emit(kind, topic)
            return
        if kind == "presence" and isinstance(topic, str):
            peers = message.get("peers") if isinstance(message.get("peers"), list) else []
            self._events.emit("presence", topic, peers)
        if kind == "error":
            log.info("signaling error: %s", {k: message.get(k) for k in ("code", "topic", "message")})
            self._events.emit("error-frame", message)
        handler = self._topics.get(topic) if isinstance(topic, str) else None
        if handler is not None:
            try:
                handler.signal_received(message)
            except Exception:
                log.exception("room failed to handle a signaling frame")
