"""JWTs: access tokens, service tokens and invite tokens, all HS256 with the algorithm pinned.

Every token carries ``typ`` so that one kind can never be used as another (an invite is not
an access token), and ``aud`` so that tokens of another deployment sharing a key do not
validate. Decoding accepts exactly ``HS256`` — ``none`` and RS/HS confusion are refused by
construction. Refresh tokens are *not* JWTs: they are opaque random strings whose SHA-256 is
stored (see ``signaling.accounts``).

Access tokens carry ``sid``, the session (one sign-in = one refresh-token family) they belong
to, so that signing out ends them at once instead of at their expiry (``signaling.sessions``).
Service tokens carry ``jti`` = the id of their ``service_tokens`` row (what revocation acts on)
and always expire; a service trades its token for a fresh one before that
(``POST /api/service/token``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt

ALGORITHM = "HS256"
AUDIENCE = "codesync"

TokenType = Literal["access", "service", "invite", "verify_email", "reset_password", "change_email", "signup"]
# Emailed links and signup invites: signed tokens naming a database row that makes them single-use.
LINK_TYPES = ("verify_email", "reset_password", "change_email", "signup")
SERVICE_SCOPES = ("persistence", "runner")


class TokenError(Exception):
    """A token that is malformed, forged, expired or of the wrong kind."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    jti: str
    issued_at: int
    expires_at: int
    session_id: str | None = None  # None only for tokens made outside a sign-in (tests, tools)


@dataclass(frozen=True)
class ServiceClaims:
    token_id: str
    scope: str
    issued_at: int = 0
    expires_at: int = 0


@dataclass(frozen=True)
class LinkClaims:
    purpose: str  # one of LINK_TYPES
    row_id: str  # account_tokens.id (signup: signup_invites.id)
    subject: str  # the user id (signup: "signup")
    expires_at: int


@dataclass(frozen=True)
class InviteClaims:
    invite_id: str
    room_id: str
    role: str
    expires_at: int


class TokenService:
    def __init__(
        self,
        secret: str,
        access_ttl: int = 900,
        invite_ttl: int = 7 * 24 * 3600,
        service_ttl: int = 24 * 3600,
    ):
        if len(secret) < 32:
            raise ValueError("secret key must be at least 32 characters")
        self._secret = secret
        self.access_ttl = access_ttl
        self.invite_ttl = invite_ttl
        self.service_ttl = service_ttl

    # ------------------------------------------------------------------ encode
    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue_access(
        self, user_id: str, ttl: int | None = None, session_id: str | None = None
    ) -> tuple[str, AccessClaims]:
        now = int(time.time())
        exp = now + (self.access_ttl if ttl is None else ttl)
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {"typ": "access", "sub": user_id, "aud": AUDIENCE, "iat": now, "exp": exp, "jti": jti}
        if session_id is not None:
            claims["sid"] = session_id
        return self._encode(claims), AccessClaims(user_id, jti, now, exp, session_id)

    def issue_service(self, token_id: str, scope: str, ttl: int | None = None) -> str:
        """A service token for the ``service_tokens`` row ``token_id``, valid ``ttl`` seconds."""
        if scope not in SERVICE_SCOPES:
            raise ValueError(f"unknown service scope {scope!r}")
        ttl = self.service_ttl if ttl is None else ttl
        if ttl <= 0:
            raise ValueError("a service token needs a positive lifetime")
        now = int(time.time())
        return self._encode(
            {
                "typ": "service",
                "sub": f"service:{scope}",
                "scope": scope,
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + ttl,
                "jti": token_id,
            }
        )

    def issue_invite(self, invite_id: str, room_id: str, role: str, expires_at: int) -> str:
        now = int(time.time())
        return self._encode(
            {"typ": "invite", "sub": room_id, "role": role, "aud": AUDIENCE, "iat": now, "exp": expires_at, "jti": invite_id}
        )

    def issue_link(self, purpose: str, row_id: str, subject: str, expires_at: int) -> str:
        """An emailed link's token (or a signup invite's): ``typ`` = ``purpose``, ``jti`` = the row."""
        if purpose not in LINK_TYPES:
            raise ValueError(f"unknown link purpose {purpose!r}")
        now = int(time.time())
        return self._encode({"typ": purpose, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": expires_at, "jti": row_id})

    # ------------------------------------------------------------------ decode
    def _decode(self, token: str, typ: TokenType, require: list[str]) -> dict[str, Any]:
        if not token or len(token) > 4096:
            raise TokenError("invalid_token", "missing or oversized token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": require},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("invalid_token", "token is for another audience") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError("invalid_token", f"invalid token ({type(exc).__name__})") from None
        if claims.get("typ") != typ:
            raise TokenError("invalid_token", f"not an {typ} token")
        return claims

    def decode_access(self, token: str) -> AccessClaims:
        c = self._decode(token, "access", ["exp", "iat", "sub", "jti", "aud"])
        sid = c.get("sid")
        if sid is not None and (not isinstance(sid, str) or not sid or len(sid) > 64):
            raise TokenError("invalid_token", "malformed session id")
        return AccessClaims(str(c["sub"]), str(c["jti"]), int(c["iat"]), int(c["exp"]), sid)

    def decode_service(self, token: str) -> ServiceClaims:
        # ``exp`` is required: a service token without an expiry (made before they had one)
        # is refused; make a new one with ``codesync token``.
        c = self._decode(token, "service", ["iat", "exp", "sub", "jti", "aud"])
        scope = c.get("scope")
        if scope not in SERVICE_SCOPES:
            raise TokenError("invalid_token", "unknown service scope")
        return ServiceClaims(str(c["jti"]), str(scope), int(c["iat"]), int(c["exp"]))

    def decode_invite(self, token: str) -> InviteClaims:
        c = self._decode(token, "invite", ["exp", "iat", "sub", "jti", "aud"])
        return InviteClaims(str(c["jti"]), str(c["sub"]), str(c.get("role")), int(c["exp"]))

    def decode_link(self, token: str, purpose: str) -> LinkClaims:
        if purpose not in LINK_TYPES:
            raise ValueError(f"unknown link purpose {purpose!r}")
        c = self._decode(token, purpose, ["exp", "iat", "sub", "jti", "aud"])  # type: ignore[arg-type]
        return LinkClaims(purpose, str(c["jti"]), str(c["sub"]), int(c["exp"]))

    @staticmethod
    def peek_type(token: str) -> str | None:
        """The unverified ``typ`` claim, only to route a token to the right decoder."""
        try:
            return jwt.decode(token, options={"verify_signature": False}).get("typ")
        except jwt.InvalidTokenError:
            return None


def new_refresh_token() -> tuple[str, str]:
    """A fresh opaque refresh token and the hash to store for it."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
