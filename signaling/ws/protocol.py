"""The ``/signal`` wire format: parsing and validating client frames, building server frames.

Pure functions only (no I/O), so every malformed-input case can be tested without a socket.
The core is y-webrtc's signaling protocol exactly as its reference server speaks it
(``subscribe``/``unsubscribe``/``publish``/``ping``); CodeSync adds ``error``, ``presence``,
``room-active``/``room-idle`` frames and the server-stamped ``sender`` (DESIGN.md,
"Signaling protocol").
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Union

import orjson

MAX_TOPIC_LENGTH = 128
MAX_PEER_ID_LENGTH = 128

# Close codes (documented in README, section "signaling").
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_POLICY = 1008  # repeated abuse (bad frames, flooding)
CLOSE_TOO_BIG = 1009  # a frame above signal_max_frame
CLOSE_INTERNAL = 1011
CLOSE_TOKEN_EXPIRED = 4001  # the access token expired while connected: refresh and reconnect
CLOSE_UNAUTHORIZED = 4003  # no token, a forged/unknown token, wrong kind
CLOSE_SLOW_CONSUMER = 4008  # the client stopped reading; its send buffer overflowed
CLOSE_TOO_MANY_CONNECTIONS = 4029  # connections per user exceeded


class ProtocolError(Exception):
    """A frame that cannot be acted on; becomes an ``error`` frame (and a strike)."""

    def __init__(self, code: str, message: str, topic: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.topic = topic


# NamedTuples, not frozen dataclasses: one is built per frame and they are cheaper to make.
class Subscribe(NamedTuple):
    topics: tuple[str, ...]


class Unsubscribe(NamedTuple):
    topics: tuple[str, ...]


class Publish(NamedTuple):
    topic: str
    data: Any  # a dict (plain rooms) or a base64 string (encrypted rooms), relayed untouched
    peer_id: str | None  # data["from"] when data is an object carrying one
    # data["to"] when it is a string: the one peer id this frame addresses (y-webrtc peers act
    # only on frames without "to" or with their own peer id in it)
    to: str | None = None
    # data["caps"] when it is an array: whether it lists "roles" (None: no caps in this frame)
    roles: bool | None = None


class Ping(NamedTuple):
    pass


Message = Union[Subscribe, Unsubscribe, Publish, Ping]


def parse(text: str | bytes) -> Message:
    """One client text frame -> a message, or :class:`ProtocolError`.

    orjson is strict where the relay must be: it refuses NaN/Infinity, numbers that overflow
    a double, lone surrogates (``"\\ud800"`` would kill every subscriber's UTF-8 encode —
    found by fuzzing) and nesting deeper than 1024. Only a refused frame takes the slow path
    through the standard library, to tell the client which of those it was.
    """
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _why_refused(text) from None
    if type(frame) is not dict:
        raise ProtocolError("invalid_frame", "frame must be a JSON object")
    kind = frame.get("type")
    if kind == "publish":
        return _publish(frame)
    if type(kind) is not str:
        raise ProtocolError("missing_field", "frame needs a string 'type'")
    if kind == "subscribe":
        return Subscribe(_topics(frame))
    if kind == "unsubscribe":
        return Unsubscribe(_topics(frame))
    if kind == "ping":
        return Ping()
    raise ProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}")


def _why_refused(text: str | bytes) -> ProtocolError:
    """The error for a frame orjson refused (bad input only: speed does not matter here)."""
    try:
        frame = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return ProtocolError("malformed_json", "frame is not valid JSON")
    try:
        json.dumps(frame, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return ProtocolError("invalid_unicode", "frame contains a lone surrogate (\\ud800-\\udfff)")
    except (RecursionError, ValueError):
        return ProtocolError("malformed_json", "frame is nested too deeply")
    # e.g. 1e400 (a double overflow the stdlib would turn into Infinity) or nesting > 1024
    return ProtocolError("malformed_json", "frame has a number out of range or is nested too deeply")


def _no_constant(name: str) -> Any:
    """NaN/Infinity are not JSON: a browser's JSON.parse would throw on the relayed frame."""
    raise ValueError(f"{name} is not JSON")


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError("invalid_topic", "a topic is a non-empty string")
    if len(value) > MAX_TOPIC_LENGTH:
        raise ProtocolError("invalid_topic", f"a topic is at most {MAX_TOPIC_LENGTH} characters")
    return value


def _topics(frame: dict[str, Any]) -> tuple[str, ...]:
    if "topics" not in frame:
        raise ProtocolError("missing_field", "frame needs 'topics' (an array of strings)")
    topics = frame["topics"]
    if not isinstance(topics, list):
        raise ProtocolError("invalid_field", "'topics' must be an array of strings")
    # dict.fromkeys: first-seen order without duplicates, linear (a 60 kB frame holds ~6,000)
    return tuple(dict.fromkeys(_topic(value) for value in topics))


def _publish(frame: dict[str, Any]) -> Publish:
    if "topic" not in frame:
        raise ProtocolError("missing_field", "publish needs 'topic'")
    topic = _topic(frame["topic"])
    if "data" not in frame:
        raise ProtocolError("missing_field", "publish needs 'data'", topic)
    data = frame["data"]
    peer_id: str | None = None
    if isinstance(data, dict):
        sender = data.get("from")
        if sender is not None:
            if not isinstance(sender, str) or not sender or len(sender) > MAX_PEER_ID_LENGTH:
                raise ProtocolError("invalid_field", "'data.from' must be a peer id string", topic)
            peer_id = sender
        to = data.get("to")
        caps = data.get("caps")
        return Publish(
            topic,
            data,
            peer_id,
            to if type(to) is str else None,
            ("roles" in caps) if type(caps) is list else None,
        )
    if not isinstance(data, str):
        raise ProtocolError("invalid_field", "'data' must be an object or an encrypted string", topic)
    return Publish(topic, data, peer_id)


# ----------------------------------------------------------------------------- server frames
def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def dumpb(value: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is, like ``ensure_ascii=False``).

    orjson reads 1024 levels of nesting but writes only 255: a publish whose ``data`` lies
    in between is refused as the client's error, not logged as a server failure (found by
    fuzzing)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        raise ProtocolError("malformed_json", "frame is nested too deeply") from None


def error_frame(code: str, message: str, topic: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if topic is not None:
        frame["topic"] = topic
    return dumps(frame)


def publish_head(topic: str) -> bytes:
    """The constant start of every ``publish`` frame of ``topic`` (cached by the hub)."""
    return b'{"type":"publish","topic":' + dumpb(topic) + b',"data":'


def publish_frame(head: bytes, data: Any, clients: int, sender: bytes) -> bytes:
    """What every subscriber receives: the reference server's frame plus ``sender``, as bytes.

    Built fresh (never the client's own dict), so no client-supplied field survives but
    ``data``, and ``sender`` cannot be forged. Built once per publish and shared by every
    receiver; ``head`` (:func:`publish_head`) and ``sender`` (the connection's stamp) are
    pre-serialized, so only ``data`` is encoded here.
    """
    return b"".join((head, dumpb(data), b',"clients":', str(clients).encode(), b',"sender":', sender, b"}"))


def presence_frame(topic: str, peers: list[dict[str, Any]]) -> str:
    return dumps({"type": "presence", "topic": topic, "peers": peers})


def room_state_frame(topic: str, active: bool) -> str:
    return dumps({"type": "room-active" if active else "room-idle", "topic": topic})


PONG = dumps({"type": "pong"})
