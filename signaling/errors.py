"""The one error shape of the HTTP API: ``{"error": {"code", "message"}}``.

Handlers raise :class:`ApiError`; the middleware turns it — and anything unexpected — into
JSON, so no traceback ever reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

log = logging.getLogger("codesync.http")

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}  # extra fields of the error object (e.g. the rooms to decide on)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, details: dict[str, Any] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {**(details or {}), "code": code, "message": message}}, status=status, headers=headers
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.details)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        return error_response(exc.status, code, exc.reason or code, None)
    except Exception:  # noqa: BLE001 - the last line of defence
        log.exception("unhandled error on %s %s", request.method, loggable_path(request))
        return error_response(500, "internal", "internal server error")


def loggable_path(request: web.Request) -> str:
    """The request's route pattern (``/api/invites/{token}/accept``), never the raw path:
    paths can carry secrets (invite tokens) and are chosen by the client."""
    route = request.match_info.route if request.match_info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "(unmatched)"


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate a JSON body, answering 400/413/415/422 with a clear message."""
    if request.content_type not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", "send a JSON body (application/json)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large", "request body too large") from None
    try:
        data: Any = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested input
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid", "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(422, "invalid", f"{where}: {first.get('msg', 'invalid value')}") from None
