"""Access tokens: every kind of bad token is refused by ``GET /api/me``.

Attack tokens are built by hand (base64url JSON + real signatures) so that no library
safeguard on the *encoding* side hides a weakness on the decoding side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from codesync.models import ServiceToken, User
from signaling.state import STATE
from signaling.tokens import AUDIENCE, TokenError, TokenService


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs_token(header: dict, claims: dict, key: bytes, digest=hashlib.sha256) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def access_claims(user_id: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"typ": "access", "sub": user_id, "aud": AUDIENCE, "iat": now, "exp": now + 600, "jti": "j" * 32}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_bad_access_tokens_are_refused(api, rsa_key):
    reg = await api.register()
    uid = reg["user"]["id"]
    state = api.server.app[STATE]
    secret = api.settings.effective_secret_key.encode()
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs = {"alg": "HS256", "typ": "JWT"}

    good = hs_token(hs, access_claims(uid), secret)
    assert (await api.client.get("/api/me", headers=api.auth(good))).status_code == 200  # the builder is right

    async with state.sessions() as session:
        service_row = ServiceToken(scope="runner")
        session.add(service_row)
        ghost = User(email="ghost@example.com", name="Ghost")
        session.add(ghost)
        await session.commit()
        ghost_token, _ = state.tokens.issue_access(ghost.id)
        await session.delete(ghost)
        await session.commit()
    header_b64, payload_b64, sig_b64 = good.split(".")
    tampered_payload = b64(json.dumps(access_claims("someone-else")).encode())
    invite_id = "i" * 32

    cases: dict[str, tuple[str, str]] = {
        "forged signature (other key)": (hs_token(hs, access_claims(uid), b"another-deployment-secret-0123456789"), "invalid_token"),
        "payload swapped under a valid signature": (f"{header_b64}.{tampered_payload}.{sig_b64}", "invalid_token"),
        "signature stripped": (f"{header_b64}.{payload_b64}.", "invalid_token"),
        "expired": (state.tokens.issue_access(uid, ttl=-60)[0], "token_expired"),
        "alg none": (
            f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload_b64}.",
            "invalid_token",
        ),
        "alg None spelled oddly": (
            f"{b64(json.dumps({'alg': 'nOnE'}).encode())}.{payload_b64}.",
            "invalid_token",
        ),
        "RS256 with a real RSA key": (jwt.encode(access_claims(uid), rsa_key, algorithm="RS256"), "invalid_token"),
        "HS256 keyed with the RSA public key (confusion)": (hs_token(hs, access_claims(uid), public_pem), "invalid_token"),
        "HS512 with the right secret (algorithm pinned)": (
            hs_token({"alg": "HS512", "typ": "JWT"}, access_claims(uid), secret, hashlib.sha512),
            "invalid_token",
        ),
        "wrong audience": (hs_token(hs, access_claims(uid, aud="another-app"), secret), "invalid_token"),
        "no audience": (hs_token(hs, access_claims(uid, aud=None), secret), "invalid_token"),
        "no expiry": (hs_token(hs, access_claims(uid, exp=None), secret), "invalid_token"),
        "no jti": (hs_token(hs, access_claims(uid, jti=None), secret), "invalid_token"),
        "no typ": (hs_token(hs, access_claims(uid, typ=None), secret), "invalid_token"),
        "typ refresh": (hs_token(hs, access_claims(uid, typ="refresh"), secret), "invalid_token"),
        "invite token as access token": (
            state.tokens.issue_invite(invite_id, "room", "editor", int(time.time()) + 600),
            "invalid_token",
        ),
        "invite-shaped claims with sub = user": (
            state.tokens.issue_invite(invite_id, uid, "editor", int(time.time()) + 600),
            "invalid_token",
        ),
        "service token as access token": (state.tokens.issue_service(service_row.id, "runner"), "invalid_token"),
        "user deleted since": (ghost_token, "invalid_token"),
        "refresh token as access token": (reg["refresh_token"], "invalid_token"),
        "garbage": ("not-a-jwt", "invalid_token"),
        "oversized": ("a" * 5000, "invalid_token"),
        "payload not an object": (f"{header_b64}.{b64(b'[1,2]')}.{sig_b64}", "invalid_token"),
    }
    for what, (token, code) in cases.items():
        r = await api.client.get("/api/me", headers=api.auth(token))
        assert r.status_code == 401, f"{what}: {r.status_code} {r.text}"
        body = r.json()
        assert body["error"]["code"] == code, f"{what}: {body}"
        assert "Traceback" not in r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer")

    for header in ("Basic dXNlcjpwYXNz", "Bearer", f"Token {good}", good):  # wrong scheme, empty, no scheme
        r = await api.client.get("/api/me", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", header


def test_token_service_round_trips_and_pins_kinds():
    ts = TokenService("k" * 40, access_ttl=60)
    token, claims = ts.issue_access("u1")
    assert ts.decode_access(token) == claims
    assert claims.expires_at - claims.issued_at == 60 and len(claims.jti) == 32
    assert ts.peek_type(token) == "access" and ts.peek_type("junk") is None
    assert ts.decode_service(ts.issue_service("t1", "persistence")).scope == "persistence"
    inv = ts.decode_invite(ts.issue_invite("i1", "room1", "viewer", int(time.time()) + 60))
    assert (inv.invite_id, inv.room_id, inv.role) == ("i1", "room1", "viewer")
    with pytest.raises(TokenError):
        ts.decode_invite(token)
    with pytest.raises(TokenError):
        ts.decode_access(ts.issue_service("t1", "runner"))
    with pytest.raises(TokenError):
        TokenService("k" * 41).decode_access(token)  # another deployment's key
    with pytest.raises(ValueError):
        ts.issue_service("t1", "admin")
    with pytest.raises(ValueError):
        TokenService("short")
    expired = ts.issue_invite("i1", "room1", "viewer", int(time.time()) - 60)
    with pytest.raises(TokenError) as err:
        ts.decode_invite(expired)
    assert err.value.code == "token_expired"
