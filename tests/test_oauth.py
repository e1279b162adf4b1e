"""OAuth / OpenID Connect sign-in against a real OpenID provider on loopback.

The provider is the npm ``oidc-provider`` package (tests/oidc/provider.mjs) in a child process;
the signaling app runs in-process on a port the provider knows as its redirect URI. The test
plays the browser with httpx: start → the provider's login and consent forms → callback.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from sqlmodel import select

from signaling.api.oauth import SERVICE_KEY
from codesync.models import OAuthIdentity, User
from signaling.oauth import OAuthService, RedisFlowStore, _digest
from codesync.settings import Settings
from signaling.state import STATE
from tests.helpers.api import Api, in_process_api
from tests.helpers.components import free_port
from tests.helpers.oauth import LOCAL, Browser, client_fragment, settings_for

pytestmark = pytest.mark.timeout(90)

# ----------------------------------------------------------------------------- the signaling app


@pytest.fixture
async def app(make_settings, sqlite_url, oauth_env) -> AsyncIterator[Api]:
    async with in_process_api(settings_for(make_settings, oauth_env, database_url=sqlite_url), oauth_env.signaling_port) as a:
        yield a


@pytest.fixture
async def app_any_db(make_settings, database_url, oauth_env) -> AsyncIterator[Api]:
    async with in_process_api(settings_for(make_settings, oauth_env, database_url=database_url), oauth_env.signaling_port) as a:
        yield a


def oauth_service(api: Api) -> OAuthService:
    return api.server.app[STATE].extras[SERVICE_KEY]


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts._replace(query=urlencode(query)).geturl()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def me(api: Api, access_token: str) -> dict:
    r = await api.client.get("/api/me", headers=api.auth(access_token))
    assert r.status_code == 200, r.text
    return r.json()


async def identities(api: Api) -> list[OAuthIdentity]:
    async with api.server.app[STATE].sessions() as session:
        return list((await session.exec(select(OAuthIdentity))).all())


async def users(api: Api) -> list[User]:
    async with api.server.app[STATE].sessions() as session:
        return list((await session.exec(select(User))).all())


def user_id_of(body: dict) -> str:
    return body["id"]


# ----------------------------------------------------------------------------- tests


async def test_providers_list_and_unknown_provider(app: Api) -> None:
    r = await app.client.get("/api/auth/providers")
    assert r.status_code == 200
    base = app.settings.base_url
    assert r.json() == [
        {"name": "github", "label": "GitHub", "start_url": f"{base}/api/auth/oauth/github/start"},
        {"name": "local", "label": "Local IdP", "start_url": f"{base}/api/auth/oauth/local/start"},
    ]
    for step in ("start", "callback"):
        r = await app.client.get(f"/api/auth/oauth/nope/{step}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "unknown_provider"


async def test_start_redirects_with_state_pkce_and_nonce(app: Api) -> None:
    async with Browser(app) as browser:
        url = await browser.start()
    q = query_of(url)
    assert url.startswith(oauth_service(app).provider("local").issuer + "/auth?")
    assert q["response_type"] == "code"
    assert q["client_id"] == LOCAL["client_id"]
    assert q["redirect_uri"] == f"{app.settings.base_url}/api/auth/oauth/local/callback"
    assert set(q["scope"].split()) == {"openid", "email", "profile"}
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 32 and len(q["nonce"]) >= 24


async def test_full_flow_tokens_work_and_second_login_is_same_user(app_any_db: Api) -> None:
    api = app_any_db
    async with Browser(api) as browser:
        first = await browser.sign_in("alice")
    assert set(first) == {"access_token", "refresh_token", "token_type", "expires_in"}, first
    assert first["token_type"] == "Bearer" and int(first["expires_in"]) > 0
    profile = await me(api, first["access_token"])
    assert profile["email"] == "alice@example.test"
    # The refresh token is a normal one: it rotates like after a password login.
    r = await api.client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text

    async with Browser(api) as browser:  # a fresh browser: new provider session, same account
        second = await browser.sign_in("alice")
    assert user_id_of(await me(api, second["access_token"])) == user_id_of(profile)
    [identity] = await identities(api)
    assert (identity.provider, identity.subject, identity.email) == ("local", "alice", "alice@example.test")
    [user] = await users(api)
    assert user.email == "alice@example.test" and user.email_verified and user.password_hash is None
    assert user.name == "Test alice"


async def test_links_existing_password_account_by_verified_email(app_any_db: Api) -> None:
    api = app_any_db
    account = await api.register(email="Dana@Example.test", name="Dana")
    async with Browser(api) as browser:
        tokens = await browser.sign_in("dana")
    assert user_id_of(await me(api, tokens["access_token"])) == account["user"]["id"]
    [identity] = await identities(api)
    assert identity.user_id == account["user"]["id"]
    assert len(await users(api)) == 1
    # The password was set by someone who never proved the address (pre-account-hijacking):
    # once the provider proves who owns it, that password and its sessions stop working.
    r = await api.client.post("/api/auth/login", json={"email": "dana@example.test", "password": account["password"]})
    assert r.status_code == 401, r.text
    r = await api.client.post("/api/auth/refresh", json={"refresh_token": account["refresh_token"]})
    assert r.status_code == 401, r.text
    assert (await me(api, tokens["access_token"]))["email"] == "dana@example.test"


async def test_unverified_email_is_not_linked(app: Api) -> None:
    account = await app.register(email="erin@example.test")
    async with Browser(app) as browser:
        result = await browser.sign_in("unverified-erin")  # the provider says erin@example.test, unverified
    assert result["error"] == "email_unverified", result
    assert "verif" in result["message"]
    assert await identities(app) == []
    assert [u.id for u in await users(app)] == [account["user"]["id"]]


async def test_missing_email_is_refused(app: Api) -> None:
    async with Browser(app) as browser:
        result = await browser.sign_in("noemail-frank")
    assert result["error"] == "email_missing", result
    assert await users(app) == []


async def test_github_code_path_against_local_endpoints(app: Api) -> None:
    async with Browser(app) as browser:
        url = await browser.start("github")
        q = query_of(url)
        assert "nonce" not in q and q["code_challenge_method"] == "S256"
        assert set(q["scope"].split()) == {"read:user", "user:email"}
        tokens = await browser.finish(await browser.authorize(url, "gina"))
    assert "access_token" in tokens, tokens
    [identity] = await identities(app)
    assert (identity.provider, identity.subject, identity.email) == ("github", "gh-gina", "gina@example.test")
    async with Browser(app) as browser:  # GitHub's primary email unverified: refused
        result = await browser.sign_in("unverified-hal", provider="github")
    assert result["error"] == "email_unverified", result


async def test_state_mismatch_and_foreign_browser_refused(app: Api) -> None:
    async with Browser(app) as victim, Browser(app) as attacker:
        callback = await victim.authorize(await victim.start(), "ivan")
        # A state CodeSync never issued.
        forged = await victim.finish(with_query(callback, state=secrets.token_urlsafe(32)))
        assert forged["error"] == "invalid_state", forged
        # The victim's own callback link opened in another browser (login CSRF): refused...
        foreign = await attacker.finish(callback)
        assert foreign["error"] == "state_mismatch", foreign
        # ...and the flow is spent, so it cannot be finished afterwards either.
        spent = await victim.finish(callback)
        assert spent["error"] == "invalid_state", spent
    assert await users(app) == []


async def test_missing_replayed_and_expired_state_refused(app: Api) -> None:
    async with Browser(app) as browser:
        missing = await browser.finish(f"{app.settings.base_url}/api/auth/oauth/local/callback?code=abc")
        assert missing["error"] == "missing_state", missing

        callback = await browser.authorize(await browser.start(), "judy")
        ok = await browser.finish(callback)
        assert "access_token" in ok, ok
        replay = await browser.finish(callback)
        assert replay["error"] == "invalid_state", replay

        # A state for one provider is no good at another's callback.
        callback = await browser.authorize(await browser.start(), "judy")
        other = await browser.finish(callback.replace("/oauth/local/", "/oauth/github/"))
        assert other["error"] == "invalid_state", other

        oauth_service(app).flow_ttl = 0.0  # every flow expires at once
        callback = await browser.authorize(await browser.start(), "judy")
        expired = await browser.finish(callback)
        assert expired["error"] == "invalid_state", expired
        assert "expired" in expired["message"]


async def test_pkce_mismatch_refused_by_the_provider(app: Api) -> None:
    """An intercepted code injected into another flow is redeemed with the wrong verifier."""
    async with Browser(app) as victim, Browser(app) as attacker:
        stolen = await victim.authorize(await victim.start(), "kim")
        attacker_flow = await attacker.start()  # the attacker's own state, cookie and verifier
        injected = with_query(
            f"{app.settings.base_url}/api/auth/oauth/local/callback",
            code=query_of(stolen)["code"],
            state=query_of(attacker_flow)["state"],
            iss=query_of(stolen)["iss"],
        )
        refused = await attacker.finish(injected)
        assert refused["error"] == "token_exchange_failed", refused
        assert "invalid_grant" in refused["message"]
        assert await users(app) == []
        # The very same code with the right verifier is accepted: it was PKCE that refused.
        ok = await victim.finish(stolen)
        assert "access_token" in ok, ok


async def test_wrong_nonce_in_id_token_refused(app: Api) -> None:
    async with Browser(app) as browser:
        callback = await browser.authorize(await browser.start(), "leo")
        record = oauth_service(app).flows._records[_digest(query_of(callback)["state"])][1]
        record["nonce"] = "not-the-nonce-sent"
        result = await browser.finish(callback)
    assert result["error"] == "invalid_id_token", result
    assert "nonce" in result["message"]
    assert await users(app) == []


async def test_provider_error_access_denied(app: Api) -> None:
    async with Browser(app) as browser:
        callback = await browser.authorize(await browser.start(), "mia", abort=True)
        assert query_of(callback)["error"] == "access_denied"
        result = await browser.finish(callback)
    assert result["error"] == "access_denied", result
    assert "Local IdP" in result["message"]
    assert await users(app) == []


async def test_next_route_is_handed_back_to_the_web_client(app: Api) -> None:
    async with Browser(app) as browser:
        ok = await browser.finish(await browser.authorize(await browser.start(next="/room/abc?tab=run"), "pia"))
        assert ok["next"] == "/room/abc?tab=run" and "access_token" in ok, ok
        for bad in ("//evil.example/x", "https://evil.example/", "room", "/a#b", "/a b"):
            dropped = await browser.finish(await browser.authorize(await browser.start(next=bad), "pia"))
            assert "access_token" in dropped and "next" not in dropped, (bad, dropped)
    async with Browser(app) as browser:  # a fresh browser, so the provider shows its login page
        denied = await browser.finish(await browser.authorize(await browser.start(next="/room/x"), "pia", abort=True))
        assert (denied["error"], denied["next"]) == ("access_denied", "/room/x"), denied


async def test_unreachable_provider_is_a_clear_error(make_settings, sqlite_url, oauth_env, monkeypatch) -> None:
    monkeypatch.setenv("CODESYNC_OAUTH_DOWN_CLIENT_ID", "x")
    monkeypatch.setenv("CODESYNC_OAUTH_DOWN_ISSUER", f"http://127.0.0.1:{free_port()}")
    settings = settings_for(make_settings, oauth_env, database_url=sqlite_url)
    async with in_process_api(settings, oauth_env.signaling_port) as api:
        r = await api.client.get("/api/auth/oauth/down/start")
        assert r.status_code == 302
        result = client_fragment(api, r.headers["location"])
        assert result["error"] == "provider_unreachable", result
        assert "Traceback" not in result["message"]

        # The provider goes away between start and callback: the token endpoint is unreachable.
        async with Browser(api) as browser:
            callback = await browser.authorize(await browser.start(), "nora")
            issuer = oauth_service(api).provider("local").issuer
            meta = oauth_service(api)._metadata[issuer][1]
            token_endpoint, meta["token_endpoint"] = meta["token_endpoint"], f"http://127.0.0.1:{free_port()}/token"
            result = await browser.finish(callback)
            assert result["error"] == "provider_unreachable", result
            assert "token endpoint" in result["message"]

            # The signing keys cannot be fetched: the ID token cannot be checked, so no sign-in.
            meta["token_endpoint"] = token_endpoint
            meta["jwks_uri"] = f"http://127.0.0.1:{free_port()}/jwks"
            callback = await browser.authorize(await browser.start(), "nora")
            result = await browser.finish(callback)
            assert result["error"] == "provider_unreachable", result
            assert "JWKS" in result["message"]
        assert await users(api) == []


@pytest.mark.redis
async def test_flow_started_on_one_node_finishes_on_another(
    make_settings, sqlite_url, oauth_env, redis_url, redis_prefix
) -> None:
    """With Redis, flow records are shared: node B redeems what node A started, exactly once."""
    settings = settings_for(make_settings, oauth_env, database_url=sqlite_url, redis_url=redis_url,
                            redis_prefix=redis_prefix)
    node_b_port = free_port()
    async with in_process_api(settings, oauth_env.signaling_port) as node_a, in_process_api(settings, node_b_port):
        async with Browser(node_a) as browser:
            callback = await browser.authorize(await browser.start(), "olga")
            redis = node_a.server.app[STATE].redis
            assert await redis.exists(f"{redis_prefix}:oauth:flow:{_digest(query_of(callback)['state'])}")
            assert isinstance(oauth_service(node_a).flows, RedisFlowStore)  # nothing kept in the node
            on_b = callback.replace(f":{oauth_env.signaling_port}/", f":{node_b_port}/")
            tokens = await browser.finish(on_b)
            assert "access_token" in tokens, tokens
            replay = await browser.finish(callback)  # node A: the record is gone everywhere
            assert replay["error"] == "invalid_state", replay
        assert user_id_of(await me(node_a, tokens["access_token"]))
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}:oauth:*")]
        assert keys == []


@pytest.mark.redis
async def test_redis_flow_store_is_one_shot_and_expires(redis_url, redis_prefix) -> None:
    from redis.asyncio import Redis

    from tests.helpers.wait import wait_for

    redis = Redis.from_url(redis_url)
    try:
        store = RedisFlowStore(redis, redis_prefix)
        await store.put("a", {"provider": "local", "verifier": "v"}, ttl=60)
        assert await redis.ttl(f"{redis_prefix}:oauth:flow:a") > 50
        assert await store.take("a") == {"provider": "local", "verifier": "v"}
        assert await store.take("a") is None  # taken exactly once

        await store.put("b", {"provider": "local"}, ttl=0.05)
        async def expired() -> bool:
            return await redis.exists(f"{redis_prefix}:oauth:flow:b") == 0

        await wait_for(expired, timeout=5, what="the flow record to expire")
        assert await store.take("b") is None
    finally:
        await redis.aclose()


def test_providers_from_dotenv_file_environment_wins(tmp_path, monkeypatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CODESYNC_OAUTH_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "CODESYNC_OAUTH_GOOGLE_CLIENT_ID=from-file\nCODESYNC_OAUTH_DEX_CLIENT_ID=dex\nCODESYNC_OAUTH_DEX_ISSUER=https://dex.test\n"
    )
    monkeypatch.setenv("CODESYNC_OAUTH_DEX_CLIENT_ID", "from-env")
    providers = Settings().oauth_providers()
    assert providers["google"].client_id == "from-file"
    assert providers["google"].issuer == "https://accounts.google.com"
    assert (providers["dex"].client_id, providers["dex"].issuer) == ("from-env", "https://dex.test")


async def test_forged_id_tokens_refused(app: Api) -> None:
    """Tokens not signed by the provider's JWKS key are refused: forged key, HS256 with the secret, none."""
    import base64
    import time

    from joserfc import jwt as jose_jwt
    from joserfc.jwk import OctKey, RSAKey

    from signaling.oauth import OAuthFlowError

    service = oauth_service(app)
    provider = service.provider("local")
    meta = await service.metadata(provider)
    async with httpx.AsyncClient() as http:
        real_kid = (await http.get(meta["jwks_uri"])).json()["keys"][0].get("kid")
    now = int(time.time())
    claims = {"iss": provider.issuer, "sub": "mallory", "aud": provider.client_id, "iat": now, "exp": now + 300,
              "nonce": "n", "email": "victim@example.test", "email_verified": True}

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    forged_key = RSAKey.generate_key(2048, parameters={"kid": real_kid})
    tokens = {
        "foreign RSA key, provider's kid": jose_jwt.encode({"alg": "RS256", "kid": real_kid}, claims, forged_key),
        "HS256 keyed with the client secret": jose_jwt.encode(
            {"alg": "HS256"}, claims, OctKey.import_key(LOCAL["client_secret"]), algorithms=["HS256"]
        ),
        "alg none": f"{b64({'alg': 'none'})}.{b64(claims)}.",
    }
    for what, token in tokens.items():
        with pytest.raises(OAuthFlowError) as refused:
            await service.validate_id_token(provider, meta, token, "n")
        assert refused.value.code == "invalid_id_token", what
