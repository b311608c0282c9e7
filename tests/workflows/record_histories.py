"""Record the histories that test_replay.py replays: `make histories`.

Re-record only on purpose: a replay failure means a change of workflow code would break workflows
already running in production. A new workflow version or patch first moves the recordings it replaces
into a sub-folder, unchanged (docs/decisions.md §12). Each scenario runs on the time-skipping test server
with fake activities; `python -m tests.workflows.record_histories NAME...` records only those named.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from core.maintenance import MaintenanceInput
from core.payloads import CHANGE_UPDATE, SYNC_UPDATE, Recurrence, TaskChange, TaskState
from tests.workflows.conftest import Harness, fake_worker, start_environment
from tests.workflows.test_hostile_values import HOSTILE_SIGNALS
from tests.workflows.test_maintenance_workflow import FakeMaintenance, maintenance_worker, run_maintenance
from tests.workflows.test_task_workflow import new_task
from workflows.task import TaskWorkflow

HISTORIES = Path(__file__).parent / "histories"

Scenario = Callable[[Harness], Awaitable[WorkflowHandle[Any, Any]]]


async def fires_then_completes(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    handle = await h.start(await new_task(h, timedelta(hours=1)))
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await h.env.sleep(timedelta(hours=2))
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="complete"), result_type=TaskState)
    await handle.result()
    return handle


async def changes_and_signals_then_cancel(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    state = await new_task(h, timedelta(days=1))
    handle = await h.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    change = TaskChange(action="edit", title="Call Ana again", due_at=state.due_at + timedelta(days=1))
    await handle.execute_update(CHANGE_UPDATE, change, result_type=TaskState)
    await handle.signal("snooze", {"minutes": 30})
    await handle.signal("reschedule", {"due_at": "not a time"})
    await handle.signal("reschedule", {"due_at": (state.due_at + timedelta(hours=1)).isoformat()})
    await h.env.sleep(timedelta(days=1))
    await handle.signal("cancel")
    await handle.result()
    return handle


async def reminders_and_recurrence(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    state = await new_task(
        h,
        timedelta(days=2),
        reminder_offsets=(86400, 900, 0),
        recurrence=Recurrence(rrule="FREQ=WEEKLY"),
        timezone="Europe/Lisbon",
    )
    handle = await h.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    for _ in range(20):
        await h.env.sleep(timedelta(days=1))
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="complete"), result_type=TaskState)
    await handle.result()
    return handle


async def hostile_values_then_a_rule_that_stops(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    """Issue 12: refused signals, then a rule that passed an older check stops its series."""
    recurrence = Recurrence.model_construct(rrule="FREQ=DAILY;INTERVAL=0", every=None, unit=None)
    state = (await new_task(h, timedelta(hours=1))).model_copy(update={"recurrence": recurrence})
    handle = await h.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    for name, payload in HOSTILE_SIGNALS:
        await handle.signal(name, payload)
    await h.env.sleep(timedelta(hours=2))
    await handle.signal("reschedule", {"due_at": (state.due_at + timedelta(days=1)).isoformat()})
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="complete"), result_type=TaskState)
    await handle.result()
    return handle


async def maintenance_audits_then_purges(h: Harness) -> WorkflowHandle[Any, Any]:
    """Issue 14: one run of the maintenance Schedule, its activities faked."""
    async with maintenance_worker(h.env, FakeMaintenance()) as queue:
        handle = await run_maintenance(h.env, queue, MaintenanceInput(retention_days=90))
        await handle.result()
    return handle


SCENARIOS: list[Scenario] = [
    fires_then_completes,
    changes_and_signals_then_cancel,
    reminders_and_recurrence,
    hostile_values_then_a_rule_that_stops,
    maintenance_audits_then_purges,
]


async def record(names: list[str]) -> None:
    """Record the named scenarios (all of them without names)."""
    env = await start_environment()
    try:
        async with fake_worker(env) as harness:
            for scenario in SCENARIOS:
                if names and scenario.__name__ not in names:
                    continue
                handle = await scenario(harness)
                history = await handle.fetch_history()
                path = HISTORIES / f"{scenario.__name__}.json"
                path.write_text(history.to_json())
                print(f"recorded {path} ({len(history.events)} events)")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record(sys.argv[1:]))
