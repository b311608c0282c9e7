"""Hostile values on the real stack: each costs its sender a 422, never the others their reminders.

Every case here answered 201 or 500, or froze the worker, on the code before issue 12.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from core.db import tenant_transaction
from core.models import Notification, Task
from core.payloads import Recurrence
from core.settings import Settings
from tests.helpers import bearer, new_org, short_grace_task_id, start_task, task_state, wait_until


def ahead(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"recurrence": {"rrule": "FREQ=DAILY;INTERVAL=0"}}, "INTERVAL=0"),
        # Matches no day: dateutil would walk to year 9999 in one call. Killed at the budget.
        ({"recurrence": {"rrule": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30"}}, "longer than"),
        ({"recurrence": {"rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"}}, "no occurrence"),
        # Around the old "no sub-daily FREQ" check of the text: judged by its occurrences now.
        ({"recurrence": {"rrule": "FREQ=DAILY;BYSECOND=0,1,2,3"}}, "1 second apart"),
        ({"recurrence": {"rrule": "FREQ=WEEKLY;BYMINUTE=0,15,30,45"}}, "15 minutes apart"),
        ({"recurrence": {"rrule": "FREQ=DAILY;UNTIL=99999999999999999999"}}, "not a valid RRULE"),
        ({"timezone": "America"}, "unknown IANA time zone"),
        ({"timezone": "x" * 300}, "unknown IANA time zone"),
        ({"due_at": "0001-01-01T00:00:00Z"}, "2000-01-01"),
        ({"due_at": "9999-12-31T23:59:59-23:59"}, "2000-01-01"),
    ],
)
async def test_a_create_with_a_value_the_product_cannot_use_is_refused(
    client: httpx.AsyncClient, settings: Settings, fields: dict[str, Any], says: str
) -> None:
    headers = bearer(settings, "7", new_org())
    body = {"title": "Call Ana", "due_at": ahead(hours=1), **fields}
    response = await client.post("/v1/tasks", json=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert says in response.json()["detail"]
    listed = await client.get("/v1/tasks", headers=headers)
    assert listed.json()["items"] == []  # nothing half-written


async def test_a_change_is_judged_like_a_create(client: httpx.AsyncClient, settings: Settings) -> None:
    headers = bearer(settings, "7", new_org())
    created = await client.post(
        "/v1/tasks", json={"title": "Call Ana", "due_at": ahead(days=1)}, headers=headers
    )
    url = f"/v1/tasks/{created.json()['id']}"
    for body, says in [
        ({"recurrence": {"rrule": "FREQ=DAILY;INTERVAL=0"}}, "INTERVAL=0"),
        ({"recurrence": {"rrule": "FREQ=HOURLY;BYMINUTE=0,30"}}, "30 minutes apart"),
        ({"timezone": "America"}, "unknown IANA time zone"),
        ({"due_at": "0001-01-01T00:00:00+23:59"}, "2000-01-01"),
    ]:
        response = await client.patch(url, json=body, headers=headers)
        assert response.status_code == 422, response.text
        assert says in response.json()["detail"]
    snoozed = await client.post(f"{url}/snooze", json={"until": "0001-01-01T00:00:00Z"}, headers=headers)
    assert snoozed.status_code == 422, snoozed.text
    listed = await client.get(
        "/v1/tasks", params={"due_before": "0001-01-01T00:00:00+23:59"}, headers=headers
    )
    assert listed.status_code == 422, listed.text
    # The same rule from a sound start is taken, and shown back.
    weekly = await client.patch(
        url, json={"recurrence": {"rrule": "FREQ=DAILY;BYHOUR=9,14"}}, headers=headers
    )
    assert weekly.status_code == 200, weekly.text
    assert weekly.json()["recurrence_stopped"] is None


async def test_a_rule_that_freezes_dateutil_stops_its_series_and_no_other_reminder_waits(
    client: httpx.AsyncClient,
    settings: Settings,
    worker: Worker,
    temporal: Client,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """A rule that passed yesterday's validator, on the real worker: its reminder fires, its next
    occurrence is killed at the budget, the series stops with a reason its user sees, and a control
    reminder of another organization due just after it fires all the same."""
    org, other = new_org(), new_org()
    # The series stops at the reminder's grace step, when the workflow moves to the next occurrence:
    # ~4 s after the instant for this id (3 to 33 s by task id; a 30 s wait failed on a long one).
    rule = Recurrence.model_construct(rrule="FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30")
    hostile = task_state(org=org, due_in=timedelta(seconds=1)).model_copy(
        update={"recurrence": rule, "task_id": short_grace_task_id()}
    )
    handle = await start_task(temporal, hostile, settings.temporal_task_queue)
    control = await client.post(
        "/v1/tasks",
        json={"title": "Control", "due_at": ahead(seconds=2)},
        headers=bearer(settings, "7", other),
    )
    assert control.status_code == 201, control.text

    async def delivered(organization: str) -> list[Notification]:
        async with tenant_transaction(sessionmaker, organization) as session:
            return list((await session.scalars(select(Notification))).all())

    async def stopped() -> Task | None:
        async with tenant_transaction(sessionmaker, org) as session:
            row = await session.get(Task, hostile.task_id)
        return row if row is not None and row.recurrence_stopped else None

    await wait_until(lambda: delivered(other), what="the control reminder")
    row = await wait_until(stopped, what="the hostile series to stop", within=30)
    assert row is not None
    assert row.recurrence is None
    assert row.status == "open"
    assert "longer than" in (row.recurrence_stopped or "")
    assert len(await delivered(org)) == 1  # its own first reminder fired, once
    shown = await client.get(f"/v1/tasks/{hostile.task_id}", headers=bearer(settings, "7", org))
    assert shown.json()["recurrence_stopped"] == row.recurrence_stopped
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]


@pytest.mark.parametrize(
    "due", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "2026-01-01T00:00:00"]
)
async def test_a_made_up_cursor_is_a_time_like_any_other(
    client: httpx.AsyncClient, settings: Settings, due: str
) -> None:
    """A cursor holds a time: one made up to overflow reached the query and answered 500."""
    cursor = base64.urlsafe_b64encode(json.dumps([due, str(uuid.uuid4())]).encode()).decode().rstrip("=")
    response = await client.get(
        "/v1/tasks", params={"cursor": cursor}, headers=bearer(settings, "7", new_org())
    )
    assert response.status_code == 422, response.text
    assert "cursor" in response.json()["detail"]
