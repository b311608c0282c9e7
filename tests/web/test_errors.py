"""Every mistake a client can make gets an RFC 9457 problem with a 4xx status, over real HTTP; never a 500."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from core.settings import Settings
from tests.helpers import bearer, new_org

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return bearer(settings, "7", new_org())


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem


def assert_client_error(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, response.text
    return assert_problem(response, response.status_code)


def soon(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta or {"hours": 1})).isoformat()


# -- authentication ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/tasks", f"/v1/tasks/{uuid.uuid4()}", "/v1/notifications", "/v1/notifications/stream"]
)
async def test_no_token_is_401_with_a_bearer_challenge(client: httpx.AsyncClient, path: str) -> None:
    response = await (client.post(path, json={}) if path == "/v1/tasks" else client.get(path))
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in problem["detail"]


@pytest.mark.parametrize(
    "header",
    # (httpx refuses to send a header value with trailing whitespace, so "Bearer " cannot be tried.)
    ["", "Bearer", "Basic dXNlcjpwYXNz", "Token abc", "bearer", "Bearer\tabc", "Bearer a b c"],
)
async def test_a_malformed_authorization_header_is_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/v1/notifications", headers={"Authorization": header})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def forged(settings: Settings, kind: str) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "7", "org": "42", "iat": now, "exp": now + 600}
    secret = settings.jwt_secret.get_secret_value()
    if kind == "garbage":
        return "not.a.token"
    if kind == "expired":
        return jwt.encode({**claims, "exp": now - 60}, secret, algorithm="HS256")
    if kind == "wrong-secret":
        return jwt.encode(claims, "another-secret-of-at-least-32-bytes!", algorithm="HS256")
    if kind == "alg-none":
        return jwt.encode(claims, "", algorithm="none")
    if kind == "no-org":
        return jwt.encode({k: v for k, v in claims.items() if k != "org"}, secret, algorithm="HS256")
    if kind == "no-exp":
        return jwt.encode({k: v for k, v in claims.items() if k != "exp"}, secret, algorithm="HS256")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "expired", "wrong-secret", "alg-none", "no-org", "no-exp"])
async def test_a_bad_token_is_401(client: httpx.AsyncClient, settings: Settings, kind: str) -> None:
    response = await client.get(
        "/v1/notifications", headers={"Authorization": f"Bearer {forged(settings, kind)}"}
    )
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    if kind == "expired":
        assert "expired" in problem["detail"]


# -- creating a task ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "Call Ana", "due_at": "2030-01-01T10:00:00"}, "due_at"),
        ({"due_at": soon()}, "title"),
        ({"title": "", "due_at": soon()}, "title"),
        ({"title": "   \t\n ", "due_at": soon()}, "title"),
        ({"title": "x" * 201, "due_at": soon()}, "title"),
        ({"title": None, "due_at": soon()}, "title"),
        ({"title": "Call Ana"}, "due_at"),
        ({"title": "Call Ana", "due_at": "tomorrow"}, "due_at"),
        ({"title": "Call Ana", "due_at": soon(days=366 * 20)}, "due_at"),
        ({"title": "Call Ana", "due_at": soon(days=-366 * 2)}, "due_at"),
        ({"title": "Call Ana", "due_at": soon(), "organization_id": "org-evil"}, "organization_id"),
        ({"title": "Call Ana", "due_at": soon(), "status": "done"}, "status"),
        ({"title": "Call Ana", "due_at": soon(), "id": str(uuid.uuid4())}, "id"),
        ({"title": "Call Ana", "due_at": soon(), "created_by": "8"}, "created_by"),
        ({"title": "Call Ana", "due_at": soon(), "assignee_id": "has spaces"}, "assignee_id"),
        ({"title": "Call Ana", "due_at": soon(), "assignee_id": "x" * 65}, "assignee_id"),
        ({"title": "Call Ana", "due_at": soon(), "notes": "n" * 10_001}, "notes"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_an_invalid_task_is_422_naming_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, object], field: str
) -> None:
    problem = assert_problem(await client.post("/v1/tasks", json=body, headers=auth), 422)
    assert field in problem["detail"]
    assert field in [e["field"] for e in problem["errors"]]


MALFORMED_JSON = [b"{", b'{"title": "Call Ana",}', b"{'title': 'Call Ana'}", b"", b"nan nan"]
INVALID_UTF8 = pytest.param(
    b'{"title": "\xff"}',
    id="invalid-utf-8",
)


@pytest.mark.parametrize("content", [*MALFORMED_JSON, INVALID_UTF8])
async def test_malformed_json_is_400(client: httpx.AsyncClient, auth: dict[str, str], content: bytes) -> None:
    response = await client.post(
        "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
    )
    assert_problem(response, 400)


async def test_malformed_json_says_what_to_fix(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.post(
        "/v1/tasks", content=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert "JSON" in assert_problem(response, 400)["detail"]


@pytest.mark.parametrize(
    "content", [b"[]", b'[{"title": "Call Ana"}]', b"null", b'"Call Ana"', b"42", b"true"]
)
async def test_json_that_is_not_an_object_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], content: bytes
) -> None:
    response = await client.post(
        "/v1/tasks", content=content, headers={**auth, "Content-Type": "application/json"}
    )
    assert_client_error(response)


async def test_deeply_nested_json_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    # Small enough to pass the size limit, deep enough to exhaust a recursive parser.
    response = await client.post(
        "/v1/tasks", content=b"[" * 20_000, headers={**auth, "Content-Type": "application/json"}
    )
    assert_client_error(response)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_a_body_that_is_not_json_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], content_type: str | None
) -> None:
    body = b'{"title": "Call Ana", "due_at": "2030-01-01T10:00:00Z"}'
    headers = dict(auth)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/v1/tasks", content=body, headers=headers)
    assert_client_error(response)


async def test_a_body_over_64_kib_is_413(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = {"title": "Call Ana", "due_at": soon(), "notes": "n" * (65 * 1024)}
    assert_problem(await client.post("/v1/tasks", json=body, headers=auth), 413)


async def test_a_chunked_body_over_64_kib_is_413(web_url: str, auth: dict[str, str]) -> None:
    # Over a raw socket, the whole request written at once: a client still sending when the server
    # answers early and closes may see a reset instead of the answer (httpx does), whatever the server.
    url = httpx.URL(web_url)
    body = b'{"title": "Call Ana", "notes": "' + b"n" * (70 * 1024) + b'"}'
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(c), c) for c in (body[i : i + 4096] for i in range(0, len(body), 4096))
    )
    head = (
        "POST /v1/tasks HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).format(host=url.netloc.decode(), token=auth["Authorization"])
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode() + chunks + b"0\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(15):
            raw = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"413", raw[:500]
    assert b"content-type: application/problem+json" in headers.lower()
    problem = json.loads(content)
    assert problem["status"] == 413
    assert problem["detail"]


# -- reading tasks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/tasks/not-a-uuid", f"/v1/tasks/{uuid.uuid4()}", "/v1/tasks/1"])
async def test_a_missing_task_is_404(client: httpx.AsyncClient, auth: dict[str, str], path: str) -> None:
    assert_problem(await client.get(path, headers=auth), 404)


async def test_a_task_of_another_organization_is_404_like_a_missing_one(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    owner, stranger = bearer(settings, "7", new_org()), bearer(settings, "7", new_org())
    created = await client.post("/v1/tasks", json={"title": "Call Ana", "due_at": soon()}, headers=owner)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert (await client.get(f"/v1/tasks/{task_id}", headers=owner)).status_code == 200

    foreign = await client.get(f"/v1/tasks/{task_id}", headers=stranger)
    missing_id = str(uuid.uuid4())
    missing = await client.get(f"/v1/tasks/{missing_id}", headers=stranger)
    foreign_problem = assert_problem(foreign, 404)
    missing_problem = assert_problem(missing, 404)
    # Nothing tells "exists elsewhere" from "does not exist" (but the request each names in `instance`).
    assert {
        **foreign_problem,
        "detail": foreign_problem["detail"].replace(task_id, "<id>"),
        "instance": "<request>",
    } == {
        **missing_problem,
        "detail": missing_problem["detail"].replace(missing_id, "<id>"),
        "instance": "<request>",
    }
    assert foreign.headers.keys() == missing.headers.keys()


# -- routing and the inbox ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/tasks/", "/v2/tasks", "/v1/notifications/nope"])
async def test_an_unknown_route_is_404(client: httpx.AsyncClient, auth: dict[str, str], path: str) -> None:
    assert_problem(await client.get(path, headers=auth), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/tasks"),
        ("PUT", f"/v1/tasks/{uuid.uuid4()}"),
        ("DELETE", "/v1/notifications"),
        ("POST", "/v1/notifications"),
        ("POST", "/v1/notifications/stream"),
        ("POST", "/healthz"),
    ],
)
async def test_a_wrong_method_is_405(
    client: httpx.AsyncClient, auth: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(method, path, headers=auth)
    assert_problem(response, 405)
    assert "allow" in response.headers


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "201"},
        {"limit": "abc"},
        {"cursor": "abc"},
        {"cursor": "-1"},
        {"cursor": "1.5"},
        {"cursor": "9" * 20},
        {"cursor": ""},
    ],
)
async def test_a_bad_inbox_query_is_422(
    client: httpx.AsyncClient, auth: dict[str, str], query: dict[str, str]
) -> None:
    response = await client.get("/v1/notifications", params=query, headers=auth)
    problem = assert_problem(response, 422)
    [name] = query
    assert name in problem["detail"]


async def test_a_cursor_at_the_top_of_its_range_is_not_a_500(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # 19 digits pass the pattern, but exceed a bigint: either an empty page or a 422, never a 500.
    response = await client.get("/v1/notifications", params={"cursor": "9" * 19}, headers=auth)
    if response.status_code != 200:
        assert_problem(response, 422)
    else:
        assert response.json() == {"items": [], "next_cursor": None}


# -- public routes -----------------------------------------------------------------------------------


async def test_openapi_lists_the_routes(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/v1/tasks", "/v1/notifications", "/v1/notifications/stream"):
        assert path in paths
    assert "/healthz" not in paths


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
