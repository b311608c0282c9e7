"""The browser's cookie session, tokens in URLs, session expiry on the stream, and the per-user limits."""

from __future__ import annotations

import httpx
import pytest

from core.auth import mint_token
from core.settings import Settings
from tests.helpers import STREAM_DEADLINE, bearer, new_org, open_stream, serve_app


def cookie(settings: Settings, token: str) -> dict[str, str]:
    return {"Cookie": f"{settings.session_cookie_name}={token}"}


async def test_a_bearer_token_buys_an_httponly_strict_cookie(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    org = new_org()
    token = mint_token(settings, user_id="7", organization_id=org, ttl_seconds=600)
    response = await client.post("/v1/session", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "7"
    assert response.json()["organization_id"] == org
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(f"{settings.session_cookie_name}={token};")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert attribute in set_cookie
    max_age = int(set_cookie.split("Max-Age=")[1].split(";")[0])
    assert 590 <= max_age <= 600

    # The cookie alone authenticates every route, the stream too.
    assert (await client.get("/v1/session", headers=cookie(settings, token))).json()["organization_id"] == org
    assert (await client.get("/v1/tasks", headers=cookie(settings, token))).status_code == 200
    async with open_stream(client, cookie(settings, token)) as stream:
        await stream.read_past_heartbeat()

    signed_out = await client.delete("/v1/session")
    assert signed_out.status_code == 204
    assert "Max-Age=0" in signed_out.headers["set-cookie"] or "expires=" in signed_out.headers["set-cookie"]


async def test_a_session_needs_a_bearer_token(client: httpx.AsyncClient, settings: Settings) -> None:
    token = mint_token(settings, user_id="7", organization_id=new_org(), ttl_seconds=600)
    assert (await client.post("/v1/session")).status_code == 401
    assert (await client.post("/v1/session", headers=cookie(settings, token))).status_code == 401
    assert (await client.post("/v1/session", headers={"Authorization": "Bearer nope"})).status_code == 401


@pytest.mark.parametrize("name", ["access_token", "token"])
async def test_a_token_in_the_url_is_refused(
    client: httpx.AsyncClient, settings: Settings, name: str
) -> None:
    token = mint_token(settings, user_id="7", organization_id=new_org(), ttl_seconds=600)
    for path in ("/v1/notifications/stream", "/v1/tasks"):
        response = await client.get(path, params={name: token})
        assert response.status_code == 401
        assert "URL" in response.json()["detail"]
        # Even next to valid credentials: the token has leaked into a log already.
        response = await client.get(path, params={name: token}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401


async def test_the_stream_ends_when_its_token_expires(client: httpx.AsyncClient, settings: Settings) -> None:
    token = mint_token(settings, user_id="7", organization_id=new_org(), ttl_seconds=2)
    async with open_stream(client, cookie(settings, token)) as stream:
        await stream.read_until(lambda line: line == "event: session.expired", within=5)
        with pytest.raises(StopAsyncIteration):
            await stream.read_until(lambda _: False, within=5)
    again = await client.get("/v1/notifications/stream", headers=cookie(settings, token))
    assert again.status_code == 401
    assert "expired" in again.json()["detail"]


async def test_development_sign_in_exists_only_in_development(settings: Settings) -> None:
    body = {"user_id": "7", "organization_id": "42"}
    async with serve_app(settings) as (url, _), httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/session/dev", json=body)
        assert response.status_code == 200
        assert settings.session_cookie_name in response.headers["set-cookie"]
        assert (await client.post("/v1/session/dev", json={"user_id": "7"})).status_code == 422
    production = settings.model_copy(update={"env": "production"})
    async with serve_app(production) as (url, _), httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/v1/session/dev", json=body)).status_code == 404


async def test_the_request_rate_per_user_is_limited(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 5})
    org = new_org()
    me, colleague = bearer(limited, "7", org), bearer(limited, "8", org)
    async with serve_app(limited) as (url, _), httpx.AsyncClient(base_url=url) as client:
        answers = [(await client.get("/v1/tasks", headers=me)).status_code for _ in range(6)]
        assert answers == [200] * 5 + [429]
        refused = await client.get("/v1/tasks", headers=me)
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        assert (await client.get("/v1/tasks", headers=colleague)).status_code == 200


async def test_open_streams_per_user_are_limited(settings: Settings) -> None:
    limited = settings.model_copy(update={"sse_max_streams_per_user": 2})
    me = bearer(limited, "7", new_org())
    async with (
        serve_app(limited) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
        open_stream(client, me) as first,
        open_stream(client, me) as second,
    ):
        await first.read_past_heartbeat()
        await second.read_past_heartbeat()
        third = await client.get("/v1/notifications/stream", headers=me)
        assert third.status_code == 429
        assert "Retry-After" in third.headers
