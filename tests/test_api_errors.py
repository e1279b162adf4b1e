"""Bad requests get the one error shape and a fitting status, never a traceback."""

from __future__ import annotations

import httpx

from tests.helpers.api import Api


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, f"{r.status_code} {r.text[:300]}"
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text and 'File "' not in r.text


async def _post_raw(api: Api, path: str, content: bytes, content_type: str = "application/json", **headers) -> httpx.Response:
    return await api.client.post(path, content=content, headers={"Content-Type": content_type, **headers})


async def test_bad_bodies_on_every_json_endpoint(api):
    """Each body-reading endpoint refuses malformed, mistyped and non-JSON bodies the same way."""
    owner = await api.register()
    auth = api.auth(owner)
    room = (await api.client.post("/api/rooms", json={"name": "r", "language": "go"}, headers=auth)).json()
    endpoints = [
        ("/api/auth/register", {}),
        ("/api/auth/login", {}),
        ("/api/auth/refresh", {}),
        ("/api/auth/logout", {}),
        ("/api/rooms", auth),
        (f"/api/rooms/{room['id']}/invites", auth),
    ]
    for path, headers in endpoints:
        assert_error(await _post_raw(api, path, b'{"email": ', **headers), 400, "malformed_json")
        assert_error(await _post_raw(api, path, b"\xff\xfe{}", **headers), 400, "malformed_json")
        assert_error(await _post_raw(api, path, b"{}", "text/plain", **headers), 415, "unsupported_media_type")
        assert_error(await _post_raw(api, path, b"a=b", "application/x-www-form-urlencoded", **headers), 415, "unsupported_media_type")
        for not_an_object in (b"[]", b"null", b"42", b'"text"', b""):
            assert_error(await _post_raw(api, path, not_an_object, **headers), 422, "invalid")
        assert_error(await _post_raw(api, path, b'{"name": 1, "email": [], "role": {}}', **headers), 422, "invalid")
    put = await api.client.put(
        f"/api/rooms/{room['id']}/members/{owner['user']['id']}",
        content=b"{oops",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert_error(put, 400, "malformed_json")


async def test_oversized_body_is_413(api_sqlite):
    owner = await api_sqlite.register()
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'", "language": "python"}'
    assert_error(await _post_raw(api_sqlite, "/api/rooms", big, **api_sqlite.auth(owner)), 413, "payload_too_large")
    assert_error(await _post_raw(api_sqlite, "/api/auth/login", big), 413, "payload_too_large")
    # Just under the limit is read, then refused by validation (name too long) — not by size.
    near = b'{"name": "' + b"x" * (1024 * 1024 - 100) + b'", "language": "python"}'
    assert_error(await _post_raw(api_sqlite, "/api/rooms", near, **api_sqlite.auth(owner)), 422, "invalid")


async def test_hostile_json_is_a_client_error(api_sqlite):
    owner = await api_sqlite.register()
    auth = api_sqlite.auth(owner)
    deep = b"[" * 100_000 + b"]" * 100_000  # blows the parser's recursion limit
    assert_error(await _post_raw(api_sqlite, "/api/rooms", deep, **auth), 400, "malformed_json")
    huge_int = b'{"name": ' + b"9" * 5000 + b', "language": "python"}'  # beyond int() digit limit
    assert_error(await _post_raw(api_sqlite, "/api/rooms", huge_int, **auth), 400, "malformed_json")
    infinite = b'{"name": Infinity, "language": "python"}'
    assert_error(await _post_raw(api_sqlite, "/api/rooms", infinite, **auth), 422, "invalid")
    nul = b'{"name": "a\\u0000b", "language": "python"}'
    assert_error(await _post_raw(api_sqlite, "/api/rooms", nul, **auth), 422, "invalid")
    # The server is still fine.
    assert (await api_sqlite.client.get("/api/rooms", headers=auth)).status_code == 200


async def test_unknown_routes_and_methods(api_sqlite):
    assert_error(await api_sqlite.client.get("/api/nope"), 404, "not_found")
    assert_error(await api_sqlite.client.put("/api/auth/login"), 405, "method_not_allowed")
    assert_error(await api_sqlite.client.patch("/api/rooms"), 405, "method_not_allowed")
    assert_error(await api_sqlite.client.delete("/api/rooms"), 405, "method_not_allowed")
