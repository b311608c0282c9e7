"""Logs an operator can search, on the real stack: request ids (X-Request-ID, problem `instance`, every line
of the request), one access line per request and two per stream, the ids of a task on every line about
it, and never a task's title or notes, in the web process or the worker."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypercorn.logging import Logger as HypercornLogger
from temporalio.client import Client

from core.logs import make_handler
from core.settings import Settings
from tests.helpers import bearer, new_org, open_stream, wait_until
from web.server import hypercorn_config
from web.stream.hub import TICK_SECONDS, VISIT_GROUPS

NEW_ID = re.compile(r"[0-9a-f]{32}")
TASK_FIELDS = ("task_id", "workflow_id", "organization_id")


class Captured:
    """The JSON lines every logger of this process writes (the web app and the worker run in it)."""

    def __init__(self) -> None:
        self.out = io.StringIO()

    @property
    def text(self) -> str:
        """Every line but those of the test's own HTTP client."""
        return "\n".join(line for line in self.out.getvalue().splitlines() if '"logger": "httpx"' not in line)

    def lines(self, starting: str = "", **match: object) -> list[dict[str, Any]]:
        """The lines whose message starts with ``starting`` and whose keys have the values given (the
        SDK's loggers add their context to the message)."""
        lines = [json.loads(line) for line in self.text.splitlines()]
        return [
            line
            for line in lines
            if line["message"].startswith(starting) and all(line.get(k) == v for k, v in match.items())
        ]

    def access(self, request_id: str) -> list[dict[str, Any]]:
        return self.lines(logger="tickler.access", request_id=request_id)


@pytest.fixture
def captured() -> Iterator[Captured]:
    captured = Captured()
    handler = make_handler("json", captured.out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def soon(seconds: float = 3600) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# -- request ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"abc-123", True),
        (b"3b241101-e2bb-4255-8caf-4136c566a962", True),
        (b"Zm9vYmFy+/=._:", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"two words", False),
        (b'quote"d', False),
        ("caf\u00e9".encode(), False),
        (b"", False),
    ],
)
async def test_a_sane_request_id_is_kept_and_any_other_replaced(
    client: httpx.AsyncClient, settings: Settings, sent: bytes, kept: bool
) -> None:
    auth = bearer(settings, "7", new_org())
    headers = {name.encode(): value.encode() for name, value in auth.items()} | {b"X-Request-ID": sent}
    response = await client.get(f"/v1/tasks/{uuid.uuid4()}", headers=headers)
    assert response.status_code == 404
    request_id = response.headers["x-request-id"]
    if kept:
        assert request_id == sent.decode()
    else:
        assert NEW_ID.fullmatch(request_id), request_id
    assert response.json()["instance"] == f"urn:request:{request_id}"


async def test_without_one_each_request_gets_a_new_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(NEW_ID.fullmatch(request_id) for request_id in ids)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/tasks", None, 401),  # the app's own errors (TicklerError)
        ("GET", "/no/such/route", None, 404),  # routing (HTTPException)
        ("POST", "/v1/tasks", {"title": ""}, 422),  # the request's schema
    ],
)
async def test_every_problem_names_its_request_in_instance(
    client: httpx.AsyncClient, settings: Settings, method: str, path: str, body: object, status: int
) -> None:
    headers = {"X-Request-ID": f"req-{uuid.uuid4().hex}"}
    if status != 401:
        headers |= bearer(settings, "7", new_org())
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["instance"] == f"urn:request:{headers['X-Request-ID']}"
    assert response.headers["x-request-id"] == headers["X-Request-ID"]


# -- the access log ------------------------------------------------------------------------------------


async def test_one_access_line_per_request_with_route_status_time_and_caller(
    client: httpx.AsyncClient, settings: Settings, captured: Captured
) -> None:
    org = new_org()
    task_id = uuid.uuid4()
    request_id = f"req-{uuid.uuid4().hex}"
    response = await client.get(
        f"/v1/tasks/{task_id}",
        params={"fields": "private-query-value"},
        headers={**bearer(settings, "7", org), "X-Request-ID": request_id},
    )
    assert response.status_code == 404
    [line] = await wait_until(lambda: captured.access(request_id), what="the access line")
    assert line["level"] == "INFO"
    assert {k: line[k] for k in ("method", "route", "path", "status", "organization_id", "user_id")} == {
        "method": "GET",
        "route": "/v1/tasks/<uuid:task_id>",
        "path": f"/v1/tasks/{task_id}",
        "status": 404,
        "organization_id": org,
        "user_id": "7",
    }
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    # Query strings are never logged: a token put there by mistake would be in the log.
    assert "private-query-value" not in captured.text


async def test_lines_logged_while_serving_carry_the_request_id(
    client: httpx.AsyncClient, settings: Settings, captured: Captured
) -> None:
    org = new_org()
    request_id = f"req-{uuid.uuid4().hex}"
    response = await client.post(
        "/v1/tasks",
        json={"title": "Call Ana back", "due_at": soon()},
        headers={**bearer(settings, "7", org), "X-Request-ID": request_id},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    [created] = await wait_until(
        lambda: captured.lines(message="task created", task_id=task_id), what="the task's line"
    )
    assert created["request_id"] == request_id
    assert {k: created[k] for k in TASK_FIELDS} == {
        "task_id": task_id,
        "workflow_id": f"task-{task_id}",
        "organization_id": org,
    }
    [access] = await wait_until(lambda: captured.access(request_id), what="the access line")
    assert (access["route"], access["status"]) == ("/v1/tasks", 201)


async def test_a_healthy_probe_has_no_access_line_at_info(
    client: httpx.AsyncClient, captured: Captured
) -> None:
    # A proxy checks each web process every second: a line each would drown the log (they are at DEBUG).
    request_id = f"probe-{uuid.uuid4().hex}"
    assert (await client.get("/healthz", headers={"X-Request-ID": request_id})).status_code == 200
    marker = f"marker-{uuid.uuid4().hex}"
    response = await client.get("/v1/tasks", headers={"X-Request-ID": marker})
    assert response.status_code == 401
    await wait_until(lambda: captured.access(marker), what="the next request's access line")
    assert captured.access(request_id) == []


async def test_a_stream_logs_when_it_opens_and_when_its_client_leaves(
    client: httpx.AsyncClient, settings: Settings, captured: Captured
) -> None:
    org = new_org()
    request_id = f"stream-{uuid.uuid4().hex}"
    async with open_stream(client, {**bearer(settings, "7", org), "X-Request-ID": request_id}) as stream:
        assert stream.response.headers["x-request-id"] == request_id
        # Logged from the stream's own code, which runs while the response is sent: the id is there too.
        [opened] = await wait_until(lambda: captured.lines("stream opened", request_id=request_id))
        assert opened["logger"] == "tickler.access"
        assert (opened["organization_id"], opened["user_id"]) == (org, "7")
        await stream.read_past_heartbeat()
        assert captured.lines(logger="tickler.access", request_id=request_id) == [opened]
    [ended] = await wait_until(
        lambda: [line for line in captured.access(request_id) if "stream_end" in line], what="the end line"
    )
    assert ended["stream_end"] == "client left"
    assert (ended["route"], ended["status"]) == ("/v1/notifications/stream", 200)
    assert (ended["organization_id"], ended["user_id"]) == (org, "7")
    # It lasted until its first heartbeat, which the hub's clock sends half an interval to an interval
    # after the stream opened, less what a run of small groups visits early (web/stream/hub.py).
    early = (VISIT_GROUPS - 1) * TICK_SECONDS
    assert ended["duration_ms"] >= 1000 * (settings.sse_heartbeat_seconds / 2 - early)


async def test_a_stream_says_why_it_ended_when_it_ends_itself(
    client: httpx.AsyncClient, settings: Settings, captured: Captured
) -> None:
    request_id = f"stream-{uuid.uuid4().hex}"
    headers = {**bearer(settings, "7", new_org(), ttl=2), "X-Request-ID": request_id}
    async with open_stream(client, headers) as stream:
        await stream.read_until(lambda line: line == "event: session.expired")
    [ended] = await wait_until(
        lambda: [line for line in captured.access(request_id) if "stream_end" in line], what="the end line"
    )
    assert ended["stream_end"] == "session expired"


def test_hypercorn_logs_through_the_root_handler_and_keeps_no_access_log(settings: Settings) -> None:
    hypercorn = HypercornLogger(hypercorn_config(settings))
    assert hypercorn.access_logger is None, "the app's access log (tickler.access) replaces Hypercorn's"
    error = hypercorn.error_logger
    assert error is not None
    assert (error.name, error.handlers, error.propagate) == ("hypercorn.error", [], True)


# -- a task's lines ------------------------------------------------------------------------------------


async def test_a_fired_reminder_logs_its_ids_and_never_its_title_or_notes(
    client: httpx.AsyncClient, settings: Settings, temporal: Client, captured: Captured
) -> None:
    org = new_org()
    auth = bearer(settings, "7", org)
    # Distinctive and short: pydantic shows the first 25 characters of a value it refuses.
    title, notes = f"T{uuid.uuid4().hex[:10]}", f"N{uuid.uuid4().hex[:10]}"
    async with open_stream(client, auth) as stream:
        response = await client.post(
            "/v1/tasks", json={"title": title, "notes": notes, "due_at": soon(1)}, headers=auth
        )
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        await stream.read_until(lambda line: line == "event: notification")
    changed = await client.patch(
        f"/v1/tasks/{task_id}", json={"title": f"{title}2", "notes": f"{notes}2"}, headers=auth
    )
    assert changed.status_code == 200, changed.text
    # A signal the workflow refuses, whose refusal names what is wrong with the payload.
    handle = temporal.get_workflow_handle(f"task-{task_id}")
    await handle.signal("reschedule", {"due_at": soon(), "title": title + "x" * 300})
    await wait_until(
        lambda: captured.lines(logger="temporalio.workflow", task_id=task_id, level="WARNING"),
        what="the refused signal's line",
    )
    assert (await client.delete(f"/v1/tasks/{task_id}", headers=auth)).status_code == 204
    await wait_until(
        lambda: captured.lines("task closed: cancelled", task_id=task_id), what="the workflow's end"
    )

    assert title not in captured.text
    assert notes not in captured.text
    lines = captured.lines(task_id=task_id)
    expected = {"task_id": task_id, "workflow_id": f"task-{task_id}", "organization_id": org}
    for line in lines:
        assert {k: line[k] for k in TASK_FIELDS} == expected, line
    by_logger = {line["logger"] for line in lines}
    # The web process's lines, the workflow's (workflow.logger keeps our fields beside its own) and the
    # delivery's: the worker's wheel delivers at the instant, outside any activity (decisions §29).
    assert {"web.tasks.service", "temporalio.workflow", "activities.tasks"} <= by_logger, by_logger
    [delivered] = captured.lines("reminder delivered", task_id=task_id)
    assert (delivered["logger"], delivered["outcome"]) == ("activities.tasks", "wheel")
