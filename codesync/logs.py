"""Logging setup shared by every CodeSync process (plain text or one JSON object per line)."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

# Set by the code handling one HTTP request / one WebSocket connection; every log record
# emitted meanwhile (also from tasks started there) carries it, so one grep finds a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("codesync_request_id", default=None)
CONN_ID: ContextVar[str | None] = ContextVar("codesync_conn_id", default=None)


class ContextFilter(logging.Filter):
    """Copies the request / connection id of the current context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, var in (("request_id", REQUEST_ID), ("conn_id", CONN_ID)):
            if getattr(record, key, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str | None = None):
        super().__init__()
        self.service = service  # which CodeSync process wrote the line (compose merges logs)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.service:
            entry["service"] = self.service
        for key in ("conn_id", "request_id", "room", "peer_id", "service"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


QUIET_LIBRARIES = ("httpx", "httpx2", "alembic")


def setup_logging(level: str = "INFO", as_json: bool = False, service: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        prefix = f"[{service}] " if service else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries whose INFO lines are not news to an operator: every request (aiohttp's access
    # log, httpx's "HTTP Request: ..."), alembic's plugin set-up and "Context impl" lines on each
    # start. Their warnings still show; at DEBUG everything does. Applied migrations are logged
    # by codesync.db itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if root.level > logging.DEBUG:
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
