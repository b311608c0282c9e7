"""Changes made with the session cookie alone must come from Tickler's own pages (no cross-site forgery)."""

from __future__ import annotations

import httpx
import pytest

from core.auth import mint_token
from core.settings import Settings
from tests.helpers import bearer, new_org

# Body-less, state-changing, and harmless to repeat.
CHANGE = "/v1/notifications/read-all"


def cookie(settings: Settings, token: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"{settings.session_cookie_name}={token}", **headers}


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
    ids=["fetch-cross-site", "fetch-same-site", "foreign-origin", "opaque-origin"],
)
async def test_a_cross_site_change_with_the_cookie_is_refused(
    client: httpx.AsyncClient, settings: Settings, headers: dict[str, str]
) -> None:
    token = mint_token(settings, user_id="7", organization_id=new_org(), ttl_seconds=600)
    for method in ("POST", "DELETE"):
        path = CHANGE if method == "POST" else "/v1/tasks/00000000-0000-0000-0000-000000000000"
        response = await client.request(method, path, headers=cookie(settings, token, **headers))
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "this site's own pages" in response.json()["detail"]
    # Reading stays open: a cross-site page cannot see the answer anyway (no CORS).
    assert (await client.get("/v1/tasks", headers=cookie(settings, token, **headers))).status_code == 200


async def test_same_origin_and_bearer_changes_pass(client: httpx.AsyncClient, settings: Settings) -> None:
    org = new_org()
    token = mint_token(settings, user_id="7", organization_id=org, ttl_seconds=600)
    host = httpx.URL(str(client.base_url)).netloc.decode()
    for headers in (
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},  # the browser's word wins
        {"Origin": f"http://{host}"},
        {},  # no browser: nothing another site could have made it send
    ):
        response = await client.post(CHANGE, headers=cookie(settings, token, **headers))
        assert response.status_code < 300, (headers, response.text)
    # A bearer token is no ambient credential: no other site can attach it.
    response = await client.post(
        CHANGE, headers={**bearer(settings, "7", org), "Origin": "https://evil.example"}
    )
    assert response.status_code < 300, response.text
