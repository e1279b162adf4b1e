"""OAuth 2 / OpenID Connect sign-in: the provider registry and the authorization-code flow.

Why it looks like this:

* **Authorization code + PKCE (S256) + state (+ nonce for OIDC).** The state names a short-lived
  server-side *flow record* (PKCE verifier, nonce, provider) that is taken exactly once, so a
  replayed, forged, expired or foreign state is refused. The record lives in Redis when the
  server has Redis (any signaling node can finish a flow another node started) and in process
  memory otherwise.
* **Bound to the browser.** ``start`` also sets an HttpOnly cookie; the flow record stores its
  hash and ``callback`` refuses a state presented without it. Without this an attacker could
  send a victim a callback link of the attacker's own flow and sign the victim into the
  attacker's account (login CSRF).
* **OIDC tokens are checked here, not trusted:** signature against the provider's JWKS, ``iss``,
  ``aud`` (+ ``azp``), ``exp``/``iat`` and ``nonce``; email claims missing from the ID token are
  taken from the userinfo endpoint (after checking its ``sub``).
* **Accounts:** an identity is ``(provider, subject)``. A new identity is linked to an existing
  account only through an email the provider says it verified; otherwise a new account is made.

Transport (aiohttp routes) is in ``signaling.api.oauth``; this module knows nothing of HTTP
requests and responses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from . import sessions
from .accounts import AccountError, check_may_sign_in, issue_tokens
from codesync.models import AccountToken, AuthSession, OAuthIdentity, RefreshToken, User, utcnow
from codesync.backends import Backends, shared_or
from codesync.settings import OAuthProvider, Settings

try:  # authlib's httpx integration runs on httpx2 when that is installed, else on httpx
    import httpx2  # type: ignore[import-not-found]

    _HTTP_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, httpx2.HTTPError)
    _STATUS_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPStatusError, httpx2.HTTPStatusError)
except ImportError:  # pragma: no cover - depends on the environment
    _HTTP_ERRORS = (httpx.HTTPError,)
    _STATUS_ERRORS = (httpx.HTTPStatusError,)

if TYPE_CHECKING:  # pragma: no cover
    from redis.asyncio import Redis

    from .state import AppState

log = logging.getLogger("codesync.oauth")

FLOW_TTL = 600.0  # seconds a user has to finish the provider's pages
LINK_TICKET_TTL = 120.0  # seconds between "link a provider" on the account page and its start
HTTP_TIMEOUT = 10.0
METADATA_TTL = 3600.0
OIDC_SCOPE = "openid email profile"
GITHUB_SCOPE = "read:user user:email"
GITHUB_AUTHORIZE_URL = "https://github.com/login/oauth/authorize"
GITHUB_TOKEN_URL = "https://github.com/login/oauth/access_token"
GITHUB_API_URL = "https://api.github.com"
# Asymmetric algorithms only: "none" and HS* (keyed with the client secret) are never accepted.
ID_TOKEN_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
CLOCK_LEEWAY = 60
LABELS = {"google": "Google", "github": "GitHub"}


class OAuthFlowError(Exception):
    """A refused or failed sign-in; ``code`` is machine-readable, ``message`` is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.next_path: str | None = None  # where the web client wanted to go, once known
        self.linking = False  # the flow was linking a provider to a signed-in account


# ----------------------------------------------------------------------------- provider registry


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    label: str
    kind: Literal["oidc", "github"]
    client_id: str
    client_secret: str
    issuer: str | None
    authorize_url: str | None  # github only (OIDC reads it from discovery)
    token_url: str | None
    api_url: str | None

    @property
    def scope(self) -> str:
        return GITHUB_SCOPE if self.kind == "github" else OIDC_SCOPE


def provider_config(raw: OAuthProvider) -> ProviderConfig:
    label = raw.label or LABELS.get(raw.name) or raw.name.replace("_", " ").title()
    if raw.name == "github" and not raw.issuer:
        return ProviderConfig(
            name=raw.name,
            label=label,
            kind="github",
            client_id=raw.client_id,
            client_secret=raw.client_secret,
            issuer=None,
            authorize_url=raw.authorize_url or GITHUB_AUTHORIZE_URL,
            token_url=raw.token_url or GITHUB_TOKEN_URL,
            api_url=(raw.api_url or GITHUB_API_URL).rstrip("/"),
        )
    return ProviderConfig(
        name=raw.name,
        label=label,
        kind="oidc",
        client_id=raw.client_id,
        client_secret=raw.client_secret,
        issuer=(raw.issuer or "").rstrip("/") or None,
        authorize_url=None,
        token_url=None,
        api_url=None,
    )


def configured_providers(settings: Settings) -> dict[str, ProviderConfig]:
    """Every provider the environment configures; OIDC ones need an issuer, others are skipped."""
    found: dict[str, ProviderConfig] = {}
    for name, raw in sorted(settings.oauth_providers().items()):
        config = provider_config(raw)
        if config.kind == "oidc" and not config.issuer:
            log.warning("OAuth provider %s has no CODESYNC_OAUTH_%s_ISSUER; ignored", name, name.upper())
            continue
        found[name] = config
    return found


def redirect_uri(settings: Settings, provider: str) -> str:
    return f"{settings.base_url}/api/auth/oauth/{provider}/callback"


# ----------------------------------------------------------------------------- flow records


class FlowStore(Protocol):
    async def put(self, key: str, record: dict[str, Any], ttl: float) -> None: ...

    async def take(self, key: str) -> dict[str, Any] | None:
        """Return and delete the record (None when unknown, expired or already taken)."""


class MemoryFlowStore:
    """Flow records of a single-process server; bounded so a flood of ``start`` cannot grow it."""

    def __init__(self, max_records: int = 10_000):
        self.max_records = max_records
        self._records: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        now = time.monotonic()
        while self._records:
            oldest_key, (expires, _) = next(iter(self._records.items()))
            if expires > now and len(self._records) < self.max_records:
                break
            del self._records[oldest_key]
        self._records[key] = (now + ttl, record)

    async def take(self, key: str) -> dict[str, Any] | None:
        entry = self._records.pop(key, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]


class RedisFlowStore:
    """Flow records shared by every signaling node (``GETDEL`` makes taking them one-shot)."""

    def __init__(self, redis: "Redis", prefix: str):
        self.redis = redis
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}:oauth:flow:{key}"

    async def put(self, key: str, record: dict[str, Any], ttl: float) -> None:
        await self.redis.set(self._key(key), json.dumps(record), px=max(1, int(ttl * 1000)))

    async def take(self, key: str) -> dict[str, Any] | None:
        raw = await self.redis.getdel(self._key(key))
        return json.loads(raw) if raw else None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def safe_next_path(value: str | None) -> str | None:
    """A web-client route to return to (``/room/abc``); anything else is dropped.

    It is only ever handed back as a parameter inside ``#/oauth?…`` — never used as a redirect
    target — so it cannot become an open redirect; the check just keeps it a plain route.
    """
    if not value or len(value) > 300 or not value.startswith("/") or value.startswith("//"):
        return None
    if any(ch in value for ch in "\\#") or not value.isprintable() or " " in value:
        return None
    return value


# ----------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class Identity:
    """Who the provider says signed in."""

    provider: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


@dataclass(frozen=True)
class StartedFlow:
    url: str  # where to send the browser
    binding: str  # the browser-binding cookie value


@dataclass(frozen=True)
class FinishedFlow:
    tokens: dict[str, Any]  # the ``issue_tokens`` body (empty after linking)
    next_path: str | None
    linked: bool = False  # a provider was linked to a signed-in account (no sign-in happened)


# Flows started on one node may finish on another: shared through Redis when it is configured.
FLOW_STORES: Backends[FlowStore] = Backends("OAuth flow store", shared_or("memory"))


@FLOW_STORES.register("memory")
def _memory_flows(settings: Settings, state: "AppState") -> FlowStore:
    return MemoryFlowStore()


@FLOW_STORES.register("redis")
def _redis_flows(settings: Settings, state: "AppState") -> FlowStore:
    if state.redis is None:
        raise RuntimeError("Redis is configured but not connected yet (the app's startup connects it)")
    return RedisFlowStore(state.redis, settings.redis_prefix)


class OAuthService:
    """The sign-in flow for every configured provider; one per signaling app."""

    def __init__(self, state: "AppState"):
        self.state = state
        self.flow_ttl = FLOW_TTL
        self._flows: FlowStore | None = None
        self._metadata: dict[str, tuple[float, dict[str, Any]]] = {}
        self._jwks: dict[str, KeySet] = {}

    # -- registry
    @property
    def settings(self) -> Settings:
        return self.state.settings

    def providers(self) -> dict[str, ProviderConfig]:
        return configured_providers(self.settings)

    def provider(self, name: str) -> ProviderConfig | None:
        return self.providers().get(name)

    @property
    def flows(self) -> FlowStore:
        """Made on first use (Redis is connected by then when configured)."""
        if self._flows is None:
            self._flows = FLOW_STORES.create(self.settings, self.state)
        return self._flows

    # -- linking a provider to a signed-in account
    async def link_ticket(self, user_id: str) -> str:
        """A one-time ticket (kept in an HttpOnly cookie, never in a URL) that lets the next
        ``start?link=1`` of this browser link a provider to ``user_id``; valid two minutes."""
        ticket = secrets.token_urlsafe(32)
        await self.flows.put(_digest("link:" + ticket), {"link_user": user_id}, LINK_TICKET_TTL)
        return ticket

    async def take_link_ticket(self, ticket: str | None) -> str | None:
        if not ticket or len(ticket) > 100:
            return None
        record = await self.flows.take(_digest("link:" + ticket))
        return record.get("link_user") if record else None

    # -- the two steps
    async def start(
        self, provider: ProviderConfig, binding: str | None, next_path: str | None = None,
        invite: str | None = None, link_user: str | None = None,
    ) -> StartedFlow:
        """Make a flow record and the provider URL to send the browser to."""
        authorize_url = provider.authorize_url
        if provider.kind == "oidc":
            authorize_url = (await self.metadata(provider)).get("authorization_endpoint")
            if not isinstance(authorize_url, str):
                raise OAuthFlowError("provider_error", f"{provider.label} publishes no authorization endpoint")
        assert authorize_url is not None
        binding = binding if binding and 20 <= len(binding) <= 100 else secrets.token_urlsafe(32)
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)  # 86 characters, within PKCE's 43..128
        nonce = secrets.token_urlsafe(24) if provider.kind == "oidc" else None
        await self.flows.put(
            _digest(state),
            {
                "provider": provider.name,
                "verifier": verifier,
                "nonce": nonce,
                "binding": _digest(binding),
                "next": safe_next_path(next_path),
                # A registration's invitation (room or signup invite), for invite-only servers.
                "invite": invite if invite and len(invite) <= 4096 else None,
                # Linking this provider to a signed-in account instead of signing in.
                "link_user": link_user,
            },
            self.flow_ttl,
        )
        extra = {"nonce": nonce} if nonce else {}
        async with self._client(provider) as client:
            url, _ = client.create_authorization_url(authorize_url, state=state, code_verifier=verifier, **extra)
        return StartedFlow(url=url, binding=binding)

    async def finish(
        self, provider: ProviderConfig, params: dict[str, str], binding: str | None
    ) -> FinishedFlow:
        """Check the callback, redeem the code and sign the user in."""
        state = params.get("state") or ""
        if not state:
            # A provider error without state is still worth reporting as what it is.
            if params.get("error"):
                raise _provider_error(provider, params)
            raise OAuthFlowError("missing_state", "the sign-in response carries no state; start again")
        record = await self.flows.take(_digest(state)) if len(state) <= 200 else None
        if record is None or record.get("provider") != provider.name:
            raise OAuthFlowError(
                "invalid_state", "this sign-in link is unknown, expired or was already used; start again"
            )
        if not binding or not secrets.compare_digest(record["binding"], _digest(binding)):
            raise OAuthFlowError(
                "state_mismatch", "this sign-in was started in another browser (or its cookie is gone); start again"
            )
        try:
            tokens = await self._redeem(provider, params, record)
        except OAuthFlowError as exc:
            exc.next_path = record.get("next")
            exc.linking = bool(record.get("link_user"))
            raise
        return FinishedFlow(tokens=tokens, next_path=record.get("next"), linked=bool(record.get("link_user")))

    async def _redeem(self, provider: ProviderConfig, params: dict[str, str], record: dict[str, Any]) -> dict[str, Any]:
        if params.get("error"):
            raise _provider_error(provider, params)
        code = params.get("code") or ""
        if not code:
            raise OAuthFlowError("missing_code", f"{provider.label} sent no authorization code")
        if provider.kind == "oidc":
            # RFC 9207: the response must name the right issuer (defends against mix-up between
            # providers); a provider that promises the parameter must send it.
            meta = await self.metadata(provider)
            iss = params.get("iss")
            if iss is None and meta.get("authorization_response_iss_parameter_supported") is True:
                raise OAuthFlowError("invalid_response", "the sign-in response does not name its issuer")
            if iss is not None and iss.rstrip("/") != provider.issuer:
                raise OAuthFlowError("invalid_response", "the sign-in response names another issuer")
            identity = await self._oidc_identity(provider, meta, code, record["verifier"], record["nonce"])
        else:
            identity = await self._github_identity(provider, code, record["verifier"])
        async with self.state.sessions() as session:
            if record.get("link_user"):
                await link_identity(session, identity, record["link_user"])
                return {}
            return await sign_in(self.state, session, identity, record.get("invite"))

    # -- OpenID Connect
    async def metadata(self, provider: ProviderConfig) -> dict[str, Any]:
        assert provider.issuer
        cached = self._metadata.get(provider.issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        url = f"{provider.issuer}/.well-known/openid-configuration"
        data = await self._get_json(provider, url, "discovery document")
        if not isinstance(data, dict) or str(data.get("issuer", "")).rstrip("/") != provider.issuer:
            raise OAuthFlowError(
                "provider_error", f"{provider.label}'s discovery document names another issuer"
            )
        self._metadata[provider.issuer] = (time.monotonic() + METADATA_TTL, data)
        return data

    async def _oidc_identity(
        self, provider: ProviderConfig, meta: dict[str, Any], code: str, verifier: str, nonce: str
    ) -> Identity:
        token = await self._exchange(provider, meta.get("token_endpoint"), code, verifier, meta)
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OAuthFlowError("invalid_id_token", f"{provider.label} returned no ID token")
        claims = await self.validate_id_token(provider, meta, id_token, nonce)
        if "email" not in claims and isinstance(meta.get("userinfo_endpoint"), str):
            userinfo = await self._get_json(
                provider, meta["userinfo_endpoint"], "userinfo", access_token=token.get("access_token")
            )
            if not isinstance(userinfo, dict) or userinfo.get("sub") != claims["sub"]:
                raise OAuthFlowError("invalid_response", f"{provider.label}'s userinfo is for another user")
            claims = {**userinfo, **claims}
        return Identity(
            provider=provider.name,
            subject=str(claims["sub"]),
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            email_verified=claims.get("email_verified") is True or claims.get("email_verified") == "true",
            name=_first_str(claims, "name", "preferred_username", "nickname"),
        )

    async def validate_id_token(
        self, provider: ProviderConfig, meta: dict[str, Any], id_token: str, nonce: str
    ) -> dict[str, Any]:
        """Signature (JWKS), iss, aud/azp, exp, iat, nonce — or :class:`OAuthFlowError`."""
        supported = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [alg for alg in ID_TOKEN_ALGS if alg in supported] or ["RS256"]
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise OAuthFlowError("provider_error", f"{provider.label} publishes no JWKS")
        try:
            token = None
            for refresh in (False, True):  # keys rotate: refetch the JWKS once if no key fits
                keys = await self._keyset(provider, jwks_uri, refresh)
                try:
                    token = jwt.decode(id_token, keys, algorithms=algorithms)
                    break
                except JoseError as exc:
                    if refresh or exc.error not in ("bad_signature", "invalid_key_id", "missing_key"):
                        raise
            assert token is not None
            JWTClaimsRegistry(
                leeway=CLOCK_LEEWAY,
                iss={"essential": True, "value": provider.issuer},
                sub={"essential": True},
                aud={"essential": True, "value": provider.client_id},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise OAuthFlowError("invalid_id_token", f"{provider.label}'s ID token was refused: {exc}") from None
        claims = dict(token.claims)
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != provider.client_id:
            raise OAuthFlowError("invalid_id_token", f"{provider.label}'s ID token is for another party (azp)")
        return claims

    async def _keyset(self, provider: ProviderConfig, jwks_uri: str, refresh: bool) -> KeySet:
        if not refresh and jwks_uri in self._jwks:
            return self._jwks[jwks_uri]
        data = await self._get_json(provider, jwks_uri, "signing keys (JWKS)")
        try:
            keys = KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OAuthFlowError("provider_error", f"{provider.label}'s signing keys are unusable: {exc}") from None
        self._jwks[jwks_uri] = keys
        return keys

    # -- GitHub (plain OAuth 2 + its REST API)
    async def _github_identity(self, provider: ProviderConfig, code: str, verifier: str) -> Identity:
        token = await self._exchange(provider, provider.token_url, code, verifier)
        access = token.get("access_token")
        user = await self._get_json(provider, f"{provider.api_url}/user", "user", access_token=access)
        emails = await self._get_json(provider, f"{provider.api_url}/user/emails", "emails", access_token=access)
        if not isinstance(user, dict) or user.get("id") in (None, "") or not isinstance(emails, list):
            raise OAuthFlowError("invalid_response", f"{provider.label} returned an unexpected user record")
        primary = next((e for e in emails if isinstance(e, dict) and e.get("primary")), None)
        email = primary.get("email") if primary and isinstance(primary.get("email"), str) else None
        return Identity(
            provider=provider.name,
            subject=str(user["id"]),
            email=email,
            email_verified=bool(primary and primary.get("verified") is True),
            name=_first_str(user, "name", "login"),
        )

    # -- HTTP to the provider
    def _client(self, provider: ProviderConfig, meta: dict[str, Any] | None = None) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret or None,
            token_endpoint_auth_method=_auth_method(provider, meta or {}),
            scope=provider.scope,
            redirect_uri=redirect_uri(self.settings, provider.name),
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
        )

    async def _exchange(
        self, provider: ProviderConfig, url: Any, code: str, verifier: str, meta: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if not isinstance(url, str):
            raise OAuthFlowError("provider_error", f"{provider.label} publishes no token endpoint")
        try:
            async with self._client(provider, meta) as client:
                token = await client.fetch_token(
                    url, grant_type="authorization_code", code=code, code_verifier=verifier,
                    headers={"Accept": "application/json"},
                )
        except AuthlibBaseError as exc:
            detail = (exc.error or "error") + (f" ({exc.description})" if exc.description else "")
            raise OAuthFlowError(
                "token_exchange_failed", f"{provider.label} refused the authorization code: {detail}"
            ) from None
        except _STATUS_ERRORS as exc:
            status = getattr(getattr(exc, "response", None), "status_code", "?")
            raise OAuthFlowError(
                "token_exchange_failed", f"{provider.label}'s token endpoint answered HTTP {status}"
            ) from None
        except (*_HTTP_ERRORS, asyncio.TimeoutError, OSError) as exc:
            raise OAuthFlowError(
                "provider_unreachable", f"could not reach {provider.label}'s token endpoint ({type(exc).__name__})"
            ) from None
        except ValueError:
            raise OAuthFlowError("token_exchange_failed", f"{provider.label}'s token response is not JSON") from None
        if not isinstance(token.get("access_token"), str):
            raise OAuthFlowError("token_exchange_failed", f"{provider.label} returned no access token")
        return dict(token)

    async def _get_json(self, provider: ProviderConfig, url: str, what: str, access_token: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if isinstance(access_token, str):
            headers["Authorization"] = f"Bearer {access_token}"
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
                response = await client.get(url, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise OAuthFlowError(
                "provider_unreachable", f"could not reach {provider.label} for its {what} ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            raise OAuthFlowError(
                "provider_error", f"{provider.label} answered HTTP {response.status_code} for its {what}"
            )
        try:
            return response.json()
        except ValueError:
            raise OAuthFlowError("provider_error", f"{provider.label}'s {what} is not JSON") from None


def _auth_method(provider: ProviderConfig, meta: dict[str, Any]) -> str:
    """How to authenticate at the token endpoint: what the provider supports, Basic preferred."""
    if not provider.client_secret:
        return "none"  # a public client: PKCE alone protects the code
    if provider.kind == "github":
        return "client_secret_post"
    supported = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    if "client_secret_basic" not in supported and "client_secret_post" in supported:
        return "client_secret_post"
    return "client_secret_basic"


def _provider_error(provider: ProviderConfig, params: dict[str, str]) -> OAuthFlowError:
    error = params.get("error", "")[:100]
    description = params.get("error_description", "")[:300]
    code = "access_denied" if error == "access_denied" else "provider_error"
    text = f"{provider.label} did not sign you in: {error}" + (f" ({description})" if description else "")
    return OAuthFlowError(code, text)


def _first_str(data: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


# ----------------------------------------------------------------------------- accounts


async def sign_in(
    state: "AppState", session: AsyncSession, identity: Identity, invite: str | None = None
) -> dict[str, Any]:
    """Find or make the user behind ``identity`` and issue the usual token pair."""
    for attempt in (1, 2):  # a concurrent first sign-in may win a unique index: look again once
        try:
            user, taken_over = await _resolve_user(state, session, identity, invite)
            created = session.info.pop("new_account", False)
            tokens = await issue_tokens(state, session, user)
            if taken_over:  # the squatter's sockets close on every node
                await sessions.announce(state, [sessions.user_key(user.id)])
            if created and invite and state.tokens.peek_type(invite) == "invite":
                await _join_invited_room(state, session, invite, user.id)
            return tokens
        except IntegrityError:
            await session.rollback()
            if attempt == 2:
                raise OAuthFlowError("conflict", "the account changed while signing in; try again") from None
    raise AssertionError("unreachable")


async def _resolve_user(
    state: "AppState", session: AsyncSession, identity: Identity, invite: str | None
) -> tuple[User, bool]:
    """The account to sign in, and whether an unverified password account was taken over.

    - a linked identity signs in to its account;
    - a new identity with a verified email that a *verified* account uses is linked to it
      (its owner proved the address before; their password and sessions stay);
    - a new identity whose verified email an *unverified* account uses takes that account over:
      whoever registered the address with a password never proved it (pre-account-hijacking),
      so that password, every session it opened (their sockets close) and every emailed link
      go; the provider's user owns the account from now on;
    - otherwise a new account, if the registration mode lets this address in.
    """
    email = identity.email.strip().lower() if identity.email else None
    link = (
        await session.exec(
            select(OAuthIdentity).where(
                OAuthIdentity.provider == identity.provider, OAuthIdentity.subject == identity.subject
            )
        )
    ).first()
    if link is not None:
        user = await session.get(User, link.user_id)
        if user is not None:
            _may_sign_in(state, user)
            if email and link.email != email:
                link.email = email[:320]
                session.add(link)
            return user, False
    if not email:
        raise OAuthFlowError("email_missing", "the provider did not share an email address; CodeSync needs one")
    if not identity.email_verified:
        raise OAuthFlowError(
            "email_unverified", "the provider has not verified your email address; verify it there and try again"
        )
    user = (await session.exec(select(User).where(func.lower(User.email) == email))).first()
    taken_over = False
    if user is None:
        from .registration import spend_signup_invite

        signup = await _admit(state, session, email, invite)
        name = (identity.name or email.split("@", 1)[0])[:200]
        user = User(email=email[:320], name=name, email_verified=True)
        session.add(user)
        await session.flush()
        if signup is not None and not await spend_signup_invite(session, signup, user.id):
            raise OAuthFlowError("invite_invalid", "this invitation was used or has expired")
        session.info["new_account"] = True
    elif not user.email_verified:
        _may_sign_in(state, user)
        now = utcnow()
        user.email_verified = True
        user.password_hash = None
        await session.exec(
            update(RefreshToken)
            .where(col(RefreshToken.user_id) == user.id, col(RefreshToken.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.user_id) == user.id, col(AuthSession.revoked_at).is_(None))
            .values(revoked_at=now)
        )
        await session.exec(
            update(AccountToken).where(col(AccountToken.user_id) == user.id, col(AccountToken.used_at).is_(None))
            .values(used_at=now)
        )
        user.sessions_revoked_at = now
        session.add(user)
        taken_over = True
    else:
        _may_sign_in(state, user)
    session.add(OAuthIdentity(user_id=user.id, provider=identity.provider, subject=identity.subject, email=email))
    await session.flush()
    return user, taken_over


def _may_sign_in(state: "AppState", user: User) -> None:
    try:
        check_may_sign_in(state, user)
    except AccountError as exc:
        raise OAuthFlowError(exc.code, exc.message) from None


async def _admit(state: "AppState", session: AsyncSession, email: str, invite: str | None) -> str | None:
    """A first sign-in that makes an account is a registration: the same rules apply. Returns
    the signup invite to spend once the account row exists."""
    from .registration import admit

    try:
        admission = await admit(state, session, email, invite)
    except AccountError as exc:
        raise OAuthFlowError(exc.code, exc.message) from None
    return admission.signup_invite_id


async def _join_invited_room(state: "AppState", session: AsyncSession, invite: str, user_id: str) -> None:
    """The room invite that let a new account in: join it now (the web client also goes on to
    the invite page, where accepting again changes nothing)."""
    from .errors import ApiError
    from .rooms import accept_invite

    try:
        await accept_invite(state, session, invite, user_id)
    except ApiError as exc:
        log.info("new OAuth account could not join the invited room: %s", exc.code)


async def link_identity(session: AsyncSession, identity: Identity, user_id: str) -> None:
    """Link a provider identity to the signed-in account ``user_id`` (the profile page's "link").

    Both sides are proven: the user is signed in here and just signed in at the provider. An
    identity already linked to another account is refused (unlink it there first)."""
    existing = (
        await session.exec(
            select(OAuthIdentity).where(
                OAuthIdentity.provider == identity.provider, OAuthIdentity.subject == identity.subject
            )
        )
    ).first()
    if existing is not None:
        if existing.user_id != user_id:
            raise OAuthFlowError("identity_in_use", "that provider account already signs in to another CodeSync account")
        return
    user = await session.get(User, user_id)
    if user is None or user.disabled_at is not None:
        raise OAuthFlowError("account_disabled", "this account can no longer link providers")
    email = identity.email.strip().lower()[:320] if identity.email else None
    session.add(OAuthIdentity(user_id=user_id, provider=identity.provider, subject=identity.subject, email=email))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise OAuthFlowError("identity_in_use", "that provider account already signs in to another CodeSync account") from None
