"""A task rescheduled more times than one run accepts (Temporal caps a run at 10,000 signals), on the
real dev server (the time-skipping test server reports no history length, so it never suggests
continue-as-new) with the real worker and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from core.db import tenant_transaction
from core.models import Task
from core.payloads import STATE_QUERY, TaskState
from core.settings import Settings
from tests.helpers import start_task, task_state, wait_until

# Over the 10,000 signals one run accepts, in whole waves; TICKLER_TEST_RESCHEDULES=20000 for a longer run.
RESCHEDULES = int(os.environ.get("TICKLER_TEST_RESCHEDULES", "10400"))


@pytest.mark.timeout(600)
async def test_more_reschedules_than_one_run_accepts_continue_as_new_and_lose_nothing(
    temporal: Client, worker: Worker, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    state = task_state(due_in=timedelta(days=300))
    handle = await start_task(temporal, state, settings.temporal_task_queue)
    base = state.due_at
    # A few senders at once, in waves that the workflow absorbs before the next: an unpaced storm of
    # hundreds per second keeps every continue-as-new from completing (each is refused while new signals
    # arrive, and each refusal evicts and replays the run) until the server's cap of 10,000 signals per
    # run refuses signals (docs/decisions.md §10). Unpaced, this test failed about one full suite in two.
    batch, wave = 4, 400
    latest = temporal.get_workflow_handle(handle.id)

    async def applied(count: int) -> bool:
        current = await latest.query(STATE_QUERY, result_type=TaskState)
        return current.version >= state.version + count

    for first in range(1, RESCHEDULES + 1, batch):
        # Concurrent within a batch, so only the count and the last one are checked; the last of
        # each batch is sent alone, after the others, so that the final due time is known.
        await asyncio.gather(
            *[
                handle.signal("reschedule", {"due_at": (base + timedelta(minutes=i)).isoformat()})
                for i in range(first, first + batch - 1)
            ]
        )
        last = first + batch - 1
        await handle.signal("reschedule", {"due_at": (base + timedelta(minutes=last)).isoformat()})
        if last % wave == 0:
            await wait_until(partial(applied, last), within=60, what=f"{last} reschedules applied")
    final_due = base + timedelta(minutes=RESCHEDULES)

    async def row_due() -> datetime | None:
        async with tenant_transaction(sessionmaker, state.organization_id) as session:
            row = await session.get(Task, uuid.UUID(str(state.task_id)))
        return row.due_at if row else None

    await wait_until(lambda: _equal(row_due(), final_due), within=120, what="the last reschedule in the row")
    first_run = temporal.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
    assert (await first_run.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    current = await latest.query(STATE_QUERY, result_type=TaskState)
    assert current.version == state.version + RESCHEDULES, "every signal applied exactly once"
    assert current.due_at == final_due
    history = await latest.fetch_history()
    assert len(history.events) < 10_240, "each run stays below Temporal's warning threshold"
    assert datetime.now(UTC) < final_due


async def _equal(value: object, expected: object) -> bool:
    return bool(await value == expected)  # type: ignore[misc]
