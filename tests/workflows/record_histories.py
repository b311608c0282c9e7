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
from core.payloads import CHANGE_UPDATE, SYNC_UPDATE, EmailOutcome, Recurrence, TaskChange, TaskState
from tests.workflows.conftest import Harness, fake_worker, start_environment
from tests.workflows.test_email_workflow import FakeMailer, email_worker, start_escalation
from tests.workflows.test_hostile_values import HOSTILE_SIGNALS
from tests.workflows.test_maintenance_workflow import FakeMaintenance, maintenance_worker, run_maintenance
from tests.workflows.test_task_workflow import new_task
from tests.workflows.test_webhook_workflow import FakeReceiver, start_delivery, webhook_worker
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


async def changed_in_the_lead_window(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    """Version 3: armed ahead, edited in the lead window (armed again), moved in it, then delivered."""
    state = await new_task(h, timedelta(hours=1))
    handle = await h.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await h.env.sleep(timedelta(hours=1) - timedelta(seconds=30))
    await handle.execute_update(
        CHANGE_UPDATE, TaskChange(action="edit", title="Call Ana"), result_type=TaskState
    )
    await handle.signal("snooze", {"minutes": 1})
    await h.env.sleep(timedelta(hours=1))
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="complete"), result_type=TaskState)
    await handle.result()
    return handle


async def closed_reopened_then_closed_for_good(h: Harness) -> WorkflowHandle[TaskWorkflow, TaskState]:
    """Issue 17's undo window (the `undo-window` patch): completed, reopened by an update after its
    reminder fell due (which then fires), cancelled by a signal, reopened by one, completed for good."""
    state = await new_task(h, timedelta(minutes=1))
    handle = await h.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    done = TaskChange(action="complete", undo_seconds=600)
    await handle.execute_update(CHANGE_UPDATE, done, result_type=TaskState)
    await h.env.sleep(timedelta(minutes=5))
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="reopen"), result_type=TaskState)
    await h.env.sleep(timedelta(minutes=1))
    await handle.signal("cancel")
    await handle.signal("reopen")
    await handle.execute_update(CHANGE_UPDATE, TaskChange(action="complete"), result_type=TaskState)
    await handle.result()
    return handle


async def email_waits_out_quiet_hours_then_sends(h: Harness) -> WorkflowHandle[Any, Any]:
    """Issue 18: an escalation held by quiet hours, its SMTP server failing once, then sent."""
    start = await h.env.get_current_time()
    script: list[EmailOutcome | Exception] = [
        EmailOutcome(result="quiet hours", wait_until=start + timedelta(hours=9)),
        ConnectionRefusedError("the SMTP server is down"),
        EmailOutcome(result="sent"),
    ]
    async with email_worker(h.env, FakeMailer(h.env, script)) as queue:
        handle = await start_escalation(h.env, queue, start + timedelta(minutes=10))
        await handle.result()
    return handle


async def webhook_retried_then_delivered(h: Harness) -> WorkflowHandle[Any, Any]:
    """Issue 18: a webhook delivery its receiver failed twice, then took."""
    async with webhook_worker(h.env, FakeReceiver(h.env, fail_first=2)) as queue:
        handle = await start_delivery(h.env, queue)
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
    changed_in_the_lead_window,
    closed_reopened_then_closed_for_good,
    email_waits_out_quiet_hours_then_sends,
    webhook_retried_then_delivered,
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
