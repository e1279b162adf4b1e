"""HTTP routes of OAuth / OpenID Connect sign-in (the flow itself is ``signaling.oauth``).

The browser navigates here (not ``fetch``), so outcomes are redirects into the web client:

* success: ``{base_url}/#/oauth?access_token=…&refresh_token=…&token_type=Bearer&expires_in=…``
* failure: ``{base_url}/#/oauth?error=<code>&message=<text>``

Both carry ``next=<route>`` when ``start`` was given ``?next=/some/route`` (e.g. the room the
user was about to open), so the web client can go on where it was.

Tokens travel in the URL *fragment*, which browsers never send to a server or in a Referer.
Only an unknown provider is answered with a JSON 404, as a mistyped API URL would be.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from ..errors import ApiError
from ..oauth import OAuthFlowError, OAuthService, ProviderConfig, safe_next_path
from ..state import STATE, get_state

log = logging.getLogger("codesync.oauth")

SERVICE_KEY = "oauth"
BINDING_COOKIE = "codesync_oauth"
LINK_COOKIE = "codesync_link"  # a one-time ticket naming the signed-in account to link a provider to
COOKIE_PATH = "/api/auth/oauth/"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


def service(request: web.Request) -> OAuthService:
    return get_state(request).extras[SERVICE_KEY]


def _provider(request: web.Request) -> ProviderConfig:
    name = request.match_info["provider"]
    provider = service(request).provider(name)
    if provider is None:
        raise ApiError(404, "unknown_provider", f"no OAuth provider named {name!r} is configured")
    return provider


def _client_redirect(request: web.Request, params: dict[str, Any]) -> web.Response:
    base = get_state(request).settings.base_url
    location = f"{base}/#/oauth?{urlencode({k: str(v) for k, v in params.items()})}"
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def _account_redirect(request: web.Request, params: dict[str, Any]) -> web.Response:
    """Linking ends on the web client's account page: ``#/account?linked=…`` or ``?error=…``."""
    base = get_state(request).settings.base_url
    location = f"{base}/#/account?{urlencode({k: str(v) for k, v in params.items()})}"
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def _error_redirect(request: web.Request, code: str, message: str, next_path: str | None = None) -> web.Response:
    params = {"error": code, "message": message}
    if next_path:
        params["next"] = next_path
    return _client_redirect(request, params)


async def list_providers(request: web.Request) -> web.Response:
    """``GET /api/auth/providers`` → ``[{name, label, start_url}]`` for the sign-in buttons."""
    base = get_state(request).settings.base_url
    body = [
        {"name": p.name, "label": p.label, "start_url": f"{base}/api/auth/oauth/{p.name}/start"}
        for p in service(request).providers().values()
    ]
    return web.json_response(body)


def invite_in(next_path: str | None) -> str | None:
    """The invitation a registration would use, from the web client's ``next`` route:
    ``/invite/<room invite>`` or ``/register?invite=<signup invite>``."""
    if not next_path:
        return None
    if next_path.startswith("/invite/"):
        return next_path[len("/invite/"):] or None
    if next_path.startswith("/register?"):
        return parse_qs(next_path.split("?", 1)[1]).get("invite", [None])[0]
    return None


async def start(request: web.Request) -> web.StreamResponse:
    """``GET /api/auth/oauth/{provider}/start`` → 302 to the provider's authorization page.

    ``?link=1`` (after ``POST /api/me/identities/{provider}/link`` set the link cookie): link
    the provider to the signed-in account instead of signing in."""
    provider = _provider(request)
    settings = get_state(request).settings
    next_path = safe_next_path(request.query.get("next"))
    link_user = None
    if request.query.get("link"):
        link_user = await service(request).take_link_ticket(request.cookies.get(LINK_COOKIE))
        if link_user is None:
            return _account_redirect(request, {"error": "link_expired", "message": "linking took too long or was already started; try again"})
    try:
        flow = await service(request).start(
            provider, request.cookies.get(BINDING_COOKIE), next_path, invite=invite_in(next_path), link_user=link_user
        )
    except OAuthFlowError as exc:
        log.warning("oauth start with %s failed: %s: %s", provider.name, exc.code, exc.message)
        if link_user:
            return _account_redirect(request, {"error": exc.code, "message": exc.message})
        return _error_redirect(request, exc.code, exc.message, next_path)
    except Exception:  # noqa: BLE001 - e.g. Redis down: still a page the web client understands
        log.exception("oauth start with %s failed", provider.name)
        return _error_redirect(request, "internal", "sign-in could not start; try again later", next_path)
    response = web.Response(status=302, headers={"Location": flow.url, **NO_STORE})
    response.set_cookie(
        BINDING_COOKIE,
        flow.binding,
        max_age=int(service(request).flow_ttl) + 60,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Lax",  # sent on the provider's top-level redirect back to the callback
        secure=settings.base_url.startswith("https://"),
    )
    if link_user:
        response.del_cookie(LINK_COOKIE, path=COOKIE_PATH)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """``GET /api/auth/oauth/{provider}/callback`` → 302 into the web client with tokens or an error."""
    provider = _provider(request)
    params = {k: v for k, v in request.query.items()}
    try:
        done = await service(request).finish(provider, params, request.cookies.get(BINDING_COOKIE))
    except OAuthFlowError as exc:
        log.info("oauth sign-in with %s refused: %s: %s", provider.name, exc.code, exc.message)
        if exc.linking:
            return _account_redirect(request, {"error": exc.code, "message": exc.message})
        return _error_redirect(request, exc.code, exc.message, exc.next_path)
    except Exception:  # noqa: BLE001 - never a traceback to the browser
        log.exception("oauth sign-in with %s failed", provider.name)
        return _error_redirect(request, "internal", "sign-in failed on the server; try again later")
    if done.linked:
        log.info("oauth: %s linked to a signed-in account", provider.name)
        return _account_redirect(request, {"linked": provider.name})
    body = done.tokens
    log.info("oauth sign-in with %s: user %s", provider.name, body["user"]["id"])
    result = {
        "access_token": body["access_token"],
        "refresh_token": body["refresh_token"],
        "token_type": body.get("token_type", "Bearer"),
        "expires_in": body["expires_in"],
    }
    if done.next_path:
        result["next"] = done.next_path
    return _client_redirect(request, result)


def setup(app: web.Application) -> None:
    app[STATE].extras[SERVICE_KEY] = OAuthService(app[STATE])
    app.router.add_get("/api/auth/providers", list_providers)
    app.router.add_get("/api/auth/oauth/{provider}/start", start)
    app.router.add_get("/api/auth/oauth/{provider}/callback", callback)
