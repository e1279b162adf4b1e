"""``POST /api/service/token``: a service peer trades its (still valid) token for a fresh one.

Service tokens expire (``CODESYNC_SERVICE_TOKEN_TTL``), so a stolen one is not good forever,
but the persistence peer and the runner run for months: they exchange their token well before
it expires (``signaling.servicetoken.ServiceTokenKeeper``) and reconnect ``/signal`` with the
new one when the old one's socket is closed (4001). The fresh token belongs to the same
``service_tokens`` row, so revoking that row (``codesync token revoke``) ends the chain.
"""

from __future__ import annotations

import time

from aiohttp import web

from ..errors import ApiError
from ..principal import bearer_token, principal_from_token
from ..state import get_state
from ..tokens import TokenError

routes = web.RouteTableDef()


@routes.post("/api/service/token")
async def exchange(request: web.Request) -> web.Response:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "send the current service token as Bearer", {"WWW-Authenticate": "Bearer"})
    state = get_state(request)
    if state.tokens.peek_type(token) != "service":
        raise ApiError(403, "forbidden", "only service tokens can be exchanged here")
    try:
        principal = await principal_from_token(state, token, allow_service=True)
    except TokenError as exc:
        raise ApiError(401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
    assert principal.service is not None and principal.token_id is not None
    ttl = state.settings.service_token_ttl
    fresh = state.tokens.issue_service(principal.token_id, principal.service, ttl)
    return web.json_response(
        {"token": fresh, "token_type": "Bearer", "expires_in": ttl, "expires_at": int(time.time()) + ttl}
    )


def setup(app: web.Application) -> None:
    app.add_routes(routes)
