"""Serves the built browser client (``web/dist``) at ``/``.

The client routes with the URL fragment (``#/rooms``…), so the server only needs ``/``,
``/index.html`` and ``/assets/*``; any other unknown GET path outside the API also gets
``index.html`` so deep links never 404. When the client has not been built yet the page
says how to build it instead of failing obscurely. ``settings.web_dist`` overrides the folder.

Every HTML document carries a Content-Security-Policy: scripts only from this origin (no inline
script, no eval), no framing by other sites (``frame-ancestors 'none'``, and
``X-Frame-Options`` for old browsers), no plugins, no ``<base>`` games, fetch/WebSocket only
to this origin. Inline *style attributes* stay allowed: CodeMirror and the remote-cursor
decorations colour elements with ``style="…"`` (a CSS-only foothold, not script). Every
answer carries ``X-Content-Type-Options: nosniff``, so nothing else is ever run as a page.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .state import get_state

DEFAULT_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
# Paths owned by other features: never answered with the client's index.html.
RESERVED_EXACT = ("/api", "/signal", "/healthz", "/metrics")
RESERVED_PREFIX = "/api/"
IMMUTABLE = "public, max-age=31536000, immutable"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# On every answer: never sniff a type (so JSON or text is never run as a page), no Referer.
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# On documents (HTML): the policy, and no framing for browsers that predate frame-ancestors.
DOCUMENT_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Just before a response's headers go out (API errors and 404s included)."""
    if response.status == 101:  # a WebSocket handshake: not a document
        return
    for name, value in COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type in ("text/html", "application/xhtml+xml", "image/svg+xml"):
        for name, value in DOCUMENT_HEADERS.items():
            response.headers.setdefault(name, value)

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CodeSync: web client not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto; padding: 0 1em">
<h1>The CodeSync web client is not built</h1>
<p>The server is running, but it found no built client in <code>{dist}</code>.</p>
<p>Build it with <code>make web</code> (or start everything with <code>make up</code>,
which builds it when needed), then reload this page.</p>
</body></html>
"""


def dist_dir(app: web.Application) -> Path:
    configured = get_state(app).settings.web_dist
    return Path(configured).resolve() if configured else DEFAULT_DIST


def _index(dist: Path) -> web.StreamResponse:
    index = dist / "index.html"
    if not index.is_file():
        return web.Response(
            text=NOT_BUILT.format(dist=dist), status=503, content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


async def serve(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path in RESERVED_EXACT or path.startswith(RESERVED_PREFIX):
        raise web.HTTPNotFound()
    dist = dist_dir(request.app)
    rel = request.match_info.get("tail", "")
    if rel in ("", "index.html"):
        return _index(dist)
    candidate = (dist / rel).resolve()
    if dist.is_dir() and candidate.is_file() and candidate.is_relative_to(dist.resolve()):
        cache = IMMUTABLE if "v" in request.query else "no-cache"
        return web.FileResponse(candidate, headers={"Cache-Control": cache})
    if rel.startswith("assets/"):
        raise web.HTTPNotFound()
    return _index(dist)


def setup(app: web.Application) -> None:
    # Registered last (see app.create_app), so every API route matches before this catch-all.
    app.router.add_get("/{tail:.*}", serve)
    app.on_response_prepare.append(_security_headers)
