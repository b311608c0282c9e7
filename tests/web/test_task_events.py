"""`event: task.changed` on the stream, end to end on the suite's servers: REST and signals alike reach the
streams of the task's assignee (and of the one before, when it moves), as `GET /v1/tasks/<id>` shows it."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.client import Client

from core.settings import Settings
from tests.helpers import StreamReader, bearer, new_org, open_stream, wait_until


def changes(stream: StreamReader, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in stream.events if e.event == "task.changed" and task_id in e.data]


async def changed_to(stream: StreamReader, task_id: str, **fields: Any) -> dict[str, Any]:
    """The first task.changed of ``task_id`` whose fields have these values (read until it comes)."""

    def match() -> dict[str, Any] | None:
        found = [c for c in changes(stream, task_id) if all(c[k] == v for k, v in fields.items())]
        return found[0] if found else None

    await stream.read_until(lambda _: match() is not None)
    event = match()
    assert event is not None
    return event


async def shown(client: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_every_change_of_a_task_reaches_its_assignees_streams_as_get_shows_it(
    client: httpx.AsyncClient, settings: Settings, temporal: Client
) -> None:
    org = new_org()
    ana, ben = bearer(settings, "7", org), bearer(settings, "8", org)
    stranger = bearer(settings, "7", new_org())
    async with contextlib.AsyncExitStack() as stack:
        mine = await stack.enter_async_context(open_stream(client, ana))
        theirs = await stack.enter_async_context(open_stream(client, ben))
        elsewhere = await stack.enter_async_context(open_stream(client, stranger))
        for stream in (mine, theirs, elsewhere):
            await stream.read_past_heartbeat()

        # Created through the API, beside another task of the organization.
        due = datetime.now(UTC) + timedelta(hours=2)
        other = await client.post(
            "/v1/tasks", json={"title": "Send Bo", "due_at": due.isoformat()}, headers=ana
        )
        assert other.status_code == 201, other.text
        created = await client.post(
            "/v1/tasks", json={"title": "Call Ana", "due_at": due.isoformat()}, headers=ana
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        event = await changed_to(mine, task_id, title="Call Ana")
        assert event == await shown(client, ana, task_id) == created.json()

        # Changed by another service's signal: the same event, no reload.
        await temporal.get_workflow_handle(f"task-{task_id}").signal("snooze", {"minutes": 30})
        snoozed = await wait_until(lambda: _due_moved(client, ana, task_id, due), what="the snooze saved")
        assert await changed_to(mine, task_id, due_at=snoozed["due_at"]) == snoozed

        # Given to a colleague: both streams hear of it, with the new assignee.
        moved = await client.patch(f"/v1/tasks/{task_id}", json={"assignee_id": "8"}, headers=ana)
        assert moved.status_code == 200, moved.text
        assert (await changed_to(mine, task_id, assignee_id="8")) == moved.json()
        assert (await changed_to(theirs, task_id, assignee_id="8")) == moved.json()

        # Completed by the colleague: only the assignee's streams now.
        done = await client.post(f"/v1/tasks/{task_id}/complete", headers=ben)
        assert done.status_code == 200, done.text
        assert (await changed_to(theirs, task_id, status="done")) == done.json()
        await mine.read_past_heartbeat()
        await mine.read_past_heartbeat()
        assert [c["status"] for c in changes(mine, task_id)] == ["open"] * len(changes(mine, task_id))

        # Another organization's user of the same id heard nothing; no task.changed carries an `id:` line,
        # so the stream's Last-Event-ID stays a notification id.
        await elsewhere.read_past_heartbeat()
        assert changes(elsewhere, task_id) == []
        for stream in (mine, theirs):
            assert all(not e.id for e in stream.events if e.event == "task.changed")


async def _due_moved(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, before: datetime
) -> dict[str, Any] | None:
    task = await shown(client, headers, task_id)
    return task if datetime.fromisoformat(task["due_at"]) != before else None


async def test_a_cancelled_task_reaches_the_stream_cancelled(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    org = new_org()
    ana = bearer(settings, "7", org)
    async with open_stream(client, ana) as stream:
        await stream.read_past_heartbeat()
        due = datetime.now(UTC) + timedelta(hours=2)
        created = await client.post(
            "/v1/tasks", json={"title": "Call Ana", "due_at": due.isoformat()}, headers=ana
        )
        task_id = created.json()["id"]
        cancelled = await client.delete(f"/v1/tasks/{task_id}", headers=ana)
        assert cancelled.status_code == 204, cancelled.text
        event = await changed_to(stream, task_id, status="cancelled")
        assert event == await shown(client, ana, task_id)
