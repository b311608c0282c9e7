"""Property-based tests on the real stack: any JSON in any signal or change update of a running task
workflow is applied or refused, no workflow task ever fails, and a control reminder on the same worker
still fires; the REST routes answer the same generators with a 2xx or a 4xx, never a 5xx."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.worker import Worker

from core.db import tenant_transaction
from core.models import Notification
from core.payloads import CHANGE_UPDATE, STATE_QUERY, TaskState
from core.settings import Settings
from tests.helpers import bearer, new_org, serve_app, start_task, task_state, wait_until
from tests.strategies import check_property, create_bodies, patch_bodies, signal_calls, update_payloads

EXAMPLES = 120


async def test_any_signal_or_update_is_applied_or_refused_and_no_workflow_task_fails(
    temporal: Client, settings: Settings, worker: Worker, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org, control_org = new_org(), new_org()
    queue = settings.temporal_task_queue
    control = task_state(org=control_org, due_in=timedelta(seconds=5))
    await start_task(temporal, control, queue)
    handles: list[WorkflowHandle[Any, TaskState]] = []

    async def target() -> WorkflowHandle[Any, TaskState]:
        """The task the examples hit, replaced once an example has closed it."""
        if handles:
            state = await handles[-1].query(STATE_QUERY, result_type=TaskState)
            if state.status == "open":
                return handles[-1]
        handles.append(await start_task(temporal, task_state(org=org), queue))
        return handles[-1]

    async def signal(call: tuple[str, Any]) -> None:
        name, payload = call
        handle = await target()
        await handle.signal(name, payload)
        await handle.query(STATE_QUERY, result_type=TaskState)  # answered after the signal's task

    async def update(payload: Any) -> None:
        handle = await target()
        # Refused with the reason that the REST API turns into a 409 or a 422, or applied.
        with contextlib.suppress(WorkflowUpdateFailedError):
            await handle.execute_update(CHANGE_UPDATE, payload, result_type=TaskState)

    await check_property(signal_calls, signal, EXAMPLES)
    await check_property(update_payloads, update, EXAMPLES)

    for handle in handles:
        history = await handle.fetch_history()
        failed = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
        assert failed == [], failed[0].workflow_task_failed_event_attributes.failure.message
    async with tenant_transaction(sessionmaker, control_org) as session:
        delivered = await wait_until(
            lambda: session.scalar(select(Notification)), what="the control reminder", within=30
        )
    # Within seconds of its instant, while the examples ran: no example froze the worker.
    assert delivered.created_at - control.due_at < timedelta(seconds=10)


async def test_the_rest_api_answers_hostile_bodies_with_a_4xx(settings: Settings, worker: Worker) -> None:
    fuzzed = settings.model_copy(update={"rate_limit_per_minute": 0})
    headers = bearer(fuzzed, "7", new_org())
    async with serve_app(fuzzed) as (url, _), httpx.AsyncClient(base_url=url, timeout=60) as client:
        created = await client.post(
            "/v1/tasks", json={"title": "x", "due_at": datetime.now(UTC).isoformat()}, headers=headers
        )
        task_url = f"/v1/tasks/{created.json()['id']}"

        async def create(body: dict[str, Any]) -> None:
            response = await client.post("/v1/tasks", json=body, headers=headers)
            assert response.status_code in (201, 413, 422), response.text[:2000]

        async def patch(body: dict[str, Any]) -> None:
            response = await client.patch(task_url, json=body, headers=headers)
            assert response.status_code in (200, 409, 413, 422), response.text[:2000]

        await check_property(create_bodies, create, EXAMPLES)
        await check_property(patch_bodies, patch, EXAMPLES)
