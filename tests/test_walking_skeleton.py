"""The walking skeleton end to end on the real servers: REST -> workflow timer -> row -> Redis -> SSE."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.db import tenant_transaction
from core.models import Notification
from core.settings import Settings
from tests.helpers import bearer, new_org, wait_until


async def collect(client: httpx.AsyncClient, headers: dict[str, str], into: list[ServerSentEvent]) -> None:
    async with aconnect_sse(client, "GET", "/v1/notifications/stream", headers=headers) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for event in source.aiter_sse():
            into.append(event)


async def test_a_task_fires_to_the_open_stream_once(
    web_url: str, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], temporal: Client
) -> None:
    org = new_org()
    headers = bearer(settings, "7", org)
    events: list[ServerSentEvent] = []
    async with httpx.AsyncClient(base_url=web_url, timeout=10) as client:
        stream = asyncio.create_task(collect(client, headers, events))
        # The stream is open once the server has sent its retry line.
        await wait_until(lambda: any(e.retry for e in events), what="the stream to open")

        due = datetime.now(UTC) + timedelta(seconds=2)
        created = await client.post(
            "/v1/tasks", json={"title": "Call Ana", "due_at": due.isoformat()}, headers=headers
        )
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["title"] == "Call Ana"
        assert task["status"] == "open"
        assert task["assignee_id"] == "7"
        assert task["organization_id"] == org
        assert datetime.fromisoformat(task["due_at"]) == due

        notifications = await wait_until(
            lambda: [e for e in events if e.event == "notification"], what="the notification"
        )
        stream.cancel()
        event = notifications[0]
        data = json.loads(event.data)
        assert event.id == str(data["id"])
        assert data["task_id"] == task["id"]
        assert data["title"] == "Call Ana"
        assert datetime.fromisoformat(data["due_at"]) == due
        # Never early: the row is written at or after due_at.
        assert datetime.fromisoformat(data["created_at"]) >= due

        listed = (await client.get("/v1/notifications", headers=headers)).json()
        assert [n["id"] for n in listed["items"]] == [data["id"]]
        fetched = await client.get(f"/v1/tasks/{task['id']}", headers=headers)
        assert fetched.status_code == 200
        assert fetched.json() == task

    async with tenant_transaction(sessionmaker, org) as session:
        rows = await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.task_id == uuid.UUID(task["id"]))
        )
    assert rows == 1
    description = await temporal.get_workflow_handle(f"task-{task['id']}").describe()
    assert description.workflow_type == "TaskWorkflow"
    assert description.typed_search_attributes is not None
