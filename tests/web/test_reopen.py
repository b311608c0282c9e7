"""Undo (issue 17): `POST /v1/tasks/<id>/reopen` within the undo window reopens a completed or deleted task
with its reminders as they were; after the window it answers 409. End to end on the suite's servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.client import Client

from core.settings import Settings
from tests.helpers import bearer, new_org, open_stream, serve_app, wait_until, workflow_closed
from tests.test_delivery import create


async def test_a_task_completed_by_mistake_is_reopened_and_its_reminder_fires_then(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = bearer(settings, "7", new_org())
    async with open_stream(client, headers) as stream:
        await stream.read_past_heartbeat()
        task = await create(client, headers, due_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat())
        path = f"/v1/tasks/{task['id']}"
        done = await client.post(f"{path}/complete", headers=headers)
        assert done.status_code == 200, done.text
        # Its due time passes while it is done: nothing fires.
        await wait_until(
            lambda: datetime.now(UTC) > datetime.fromisoformat(task["due_at"]) + timedelta(seconds=1),
            what="the due time to pass",
        )
        assert stream.notifications == []

        reopened = await client.post(f"{path}/reopen", headers=headers)
        assert reopened.status_code == 200, reopened.text
        assert reopened.json()["status"] == "open"
        assert (await client.get(path, headers=headers)).json() == reopened.json()
        # The reminder that fell due while it was done fires on reopen, once.
        await stream.read_until(lambda _: len(stream.notifications) == 1)
        assert json.loads(stream.notifications[0].data)["task_id"] == task["id"]

        again = await client.post(f"{path}/reopen", headers=headers)
        assert again.status_code == 409, again.text
        assert "open" in again.json()["detail"]


async def test_after_the_undo_window_reopen_answers_409_and_says_why(
    settings: Settings, temporal: Client
) -> None:
    short = settings.model_copy(update={"undo_window_seconds": 1.0})
    headers = bearer(short, "7", new_org())
    async with serve_app(short) as (url, _), httpx.AsyncClient(base_url=url, timeout=15) as client:
        task = await create(client, headers, due_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
        path = f"/v1/tasks/{task['id']}"
        deleted = await client.delete(path, headers=headers)
        assert deleted.status_code == 204, deleted.text
        handle = temporal.get_workflow_handle(f"task-{task['id']}")
        await wait_until(
            lambda: workflow_closed(handle), within=15, what="the workflow to close after its window"
        )
        late = await client.post(f"{path}/reopen", headers=headers)
        assert late.status_code == 409, late.text
        assert "undo window has passed" in late.json()["detail"]
        assert (await client.get(path, headers=headers)).json()["status"] == "cancelled"

        unknown = await client.post(f"/v1/tasks/{'0' * 8}-0000-4000-8000-{'0' * 12}/reopen", headers=headers)
        assert unknown.status_code == 404, unknown.text
