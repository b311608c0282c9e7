"""The OpenAPI document names every answer a route can give, and states the bounds the server checks.

No servers: the document is made from the app alone. A new route that does not declare its problems
(web/problems.py) fails here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from core.models import Task
from core.settings import Settings
from web.app import create_app
from web.errors import PROBLEM_JSON
from web.notifications.schemas import NotificationQuery
from web.schemas import BoundedTime, DueTime, instant_schema
from web.tasks.schemas import TaskQuery
from web.tasks.service import encode_cursor

PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
OFFSETS = [
    timedelta(0),
    *(sign * timedelta(hours=h, minutes=m) for sign in (1, -1) for h, m in ((5, 30), (14, 0), (23, 59))),
]


@pytest.fixture(scope="module")
async def document() -> dict[str, Any]:
    response = await create_app(Settings()).test_client().get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = await response.get_json()
    return doc


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_route_names_its_problems(document: dict[str, Any]) -> None:
    for label, operation in operations(document):
        responses = {int(status): response for status, response in operation["responses"].items()}
        assert any(200 <= status < 300 for status in responses), f"{label}: document its success"
        problems = {status for status in responses if status >= 400}
        # What the shape of the route alone says it can answer; the services add 404, 409 and 503.
        expected = set()
        if operation.get("security", document["security"]):
            expected |= {401, 429}
        if "requestBody" in operation:
            assert operation["requestBody"].get("required") is True, f"{label}: its body is required"
            expected |= {400, 413, 415, 422}
        locations = {parameter["in"] for parameter in operation.get("parameters", [])}
        if locations & {"query", "header"}:
            expected.add(422)
        if "path" in locations:
            expected.add(404)
        assert expected <= problems, f"{label}: declare @problems({', '.join(map(str, sorted(expected)))})"
        for status in problems:
            assert responses[status]["content"] == PROBLEM, f"{label} {status}: not a problem+json"
        if 401 in problems:
            assert responses[401]["headers"]["WWW-Authenticate"]["required"]
        if 429 in problems:
            assert responses[429]["headers"]["Retry-After"]["required"]


def test_the_problem_model_is_rfc_9457(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"title", "status", "detail"}
    assert {"type", "errors", "retry_after"} <= set(problem["properties"])


def test_ids_in_paths_are_bounded_as_their_routes_match_them(document: dict[str, Any]) -> None:
    for label, operation in operations(document):
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "path":
                continue
            schema = parameter["schema"]
            if schema["type"] == "integer":
                assert (schema["minimum"], schema["maximum"]) == (0, 2**63 - 1), label
            else:
                assert schema["format"] == "uuid", label


def samples(low: datetime, high: datetime) -> Iterator[tuple[str, datetime]]:
    """Times written with various offsets, from three days before each bound to three days after it."""
    for bound in (low, high):
        for minutes in range(-3 * 24 * 60, 3 * 24 * 60, 97):
            instant = bound + timedelta(minutes=minutes, seconds=minutes % 60)
            for offset in OFFSETS:
                yield instant.astimezone(timezone(offset)).isoformat(), instant
            yield instant.isoformat().replace("+00:00", "Z"), instant


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)),
        (datetime(2026, 2, 26, 17, 3, tzinfo=UTC), datetime(2026, 3, 9, 0, 0, tzinfo=UTC)),
    ],
)
def test_a_time_the_pattern_admits_is_within_the_bounds(low: datetime, high: datetime) -> None:
    schema = instant_schema(low, high)
    pattern = re.compile(schema["pattern"])
    admitted = 0
    for text, instant in samples(low, high):
        if pattern.match(text):
            admitted += 1
            assert low <= instant < high, text
        elif low + timedelta(days=2) <= instant < high - timedelta(days=2):
            raise AssertionError(f"{text} is well inside, but the pattern refuses it")
    assert admitted
    assert schema["formatMinimum"] <= schema["formatExclusiveMaximum"]


@pytest.mark.parametrize("field", ["DueTime", "BoundedTime"])
def test_the_server_accepts_every_time_its_document_admits(field: str) -> None:
    adapter: TypeAdapter[datetime] = TypeAdapter(DueTime if field == "DueTime" else BoundedTime)
    schema = adapter.json_schema()
    pattern = re.compile(schema["pattern"])
    low = datetime.fromisoformat(schema["formatMinimum"])
    high = datetime.fromisoformat(schema["formatExclusiveMaximum"])
    checked = 0
    for text, _ in samples(low, high):
        if pattern.match(text):
            adapter.validate_python(text)
            checked += 1
    assert checked


def test_the_due_window_is_stated_as_of_when_the_document_is_made() -> None:
    schema = TypeAdapter(DueTime).json_schema()
    now = datetime.now(UTC)
    assert now - timedelta(days=366) < datetime.fromisoformat(schema["formatMinimum"]) < now
    assert now < datetime.fromisoformat(schema["formatExclusiveMaximum"]) <= now + timedelta(days=3660)
    with pytest.raises(ValidationError):
        TypeAdapter(DueTime).validate_python("2000-01-01T00:00:00Z")


def test_cursors_the_server_makes_fit_the_patterns_it_states() -> None:
    task_cursor = TaskQuery.model_json_schema()["properties"]["cursor"]["anyOf"][0]["pattern"]
    for due in (datetime(2000, 1, 1, tzinfo=UTC), datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)):
        cursor = encode_cursor(Task(id=uuid.uuid4(), due_at=due))
        assert re.match(task_cursor, cursor), cursor
        TaskQuery.model_validate({"cursor": cursor})
    notification_cursor = NotificationQuery.model_json_schema()["properties"]["cursor"]["anyOf"][0]["pattern"]
    for last_id in (1, 2**31, 10**18 - 1):
        assert re.match(notification_cursor, str(last_id))
