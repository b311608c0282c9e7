"""No value a caller sends wedges a task workflow: each is applied or refused, and no workflow task fails.

The cases are the ones that did (issue 12): each failed the workflow task on every retry on the code
before, so that task was stuck for good.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from core.payloads import CHANGE_UPDATE, SYNC_UPDATE, Recurrence, TaskState
from tests.helpers import task_state, wait_until
from tests.workflows.conftest import Harness
from workflows.task import TaskWorkflow

HOSTILE_SIGNALS: list[tuple[str, Any]] = [
    ("reschedule", {"due_at": "0001-01-01T00:00:00Z"}),  # minus DELIVER_AHEAD overflowed
    ("reschedule", {"due_at": "0001-01-01T00:00:00+23:59"}),
    ("reschedule", {"due_at": "9999-12-31T23:59:59-23:59"}),
    ("snooze", {"until": "0001-01-01T00:00:00Z"}),
    ("snooze", {"minutes": 10**30}),
    ("reschedule", {"due_at": "2026-12-01T10:00:00Z", "timezone": "America"}),  # IsADirectoryError
    ("reschedule", {"due_at": "2026-12-01T10:00:00Z", "timezone": "x" * 300}),  # OSError
    ("reschedule", {"recurrence": {"rrule": "FREQ=DAILY;UNTIL=99999999999999999999"}}),  # OverflowError
    ("reschedule", {"recurrence": {"rrule": "FREQ=DAILY"}, "organization_id": "o" * 10_000}),
    ("complete", {"request_id": ["not", "a", "string"]}),
    ("cancel", [1, 2, 3]),
    ("snooze", 1e308),
]


async def workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        str(event.workflow_task_failed_event_attributes.failure.message)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]


async def test_hostile_signals_are_refused_and_the_task_goes_on(harness: Harness) -> None:
    now = await harness.now()
    state = task_state().model_copy(update={"due_at": now + timedelta(days=1), "created_at": now})
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    for name, payload in HOSTILE_SIGNALS:
        await handle.signal(name, payload)
    # A signal after them is applied: the workflow read and refused each of them.
    new_due = state.due_at + timedelta(hours=2)
    await handle.signal("reschedule", {"due_at": new_due.isoformat()})
    await wait_until(
        lambda: (row := harness.fakes.rows.get(state.task_id)) is not None and row.due_at == new_due,
        what="the valid signal after the hostile ones",
    )
    current = await handle.query(TaskWorkflow.current)
    assert current.status == "open"
    assert current.timezone == "UTC"
    assert current.recurrence is None
    assert await workflow_task_failures(handle) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"action": "reschedule", "due_at": "0001-01-01T00:00:00Z"},
        {"action": "edit", "timezone": "America"},
        {"action": "edit", "recurrence": {"rrule": "FREQ=DAILY;UNTIL=99999999999999999999"}},
        {"action": "snooze", "minutes": -1},
        {"action": "nothing"},
        "not an object",
    ],
)
async def test_hostile_updates_are_refused_before_the_history(harness: Harness, payload: Any) -> None:
    now = await harness.now()
    state = task_state().model_copy(update={"due_at": now + timedelta(days=1), "created_at": now})
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(CHANGE_UPDATE, payload, result_type=TaskState)
    assert (await handle.query(TaskWorkflow.current)).version == state.version
    assert await workflow_task_failures(handle) == []


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0"),
        ("FREQ=DAILY;UNTIL=99999999999999999999", "cannot be evaluated"),
    ],
)
async def test_a_rule_that_cannot_be_used_stops_the_series_not_the_task(
    harness: Harness, rule: str, reason: str
) -> None:
    """A rule that passed yesterday's validator: the reminder fires, then the series stops with a
    reason on the task, and the workflow still takes changes."""
    now = await harness.now()
    recurrence = Recurrence.model_construct(rrule=rule, every=None, unit=None)
    state = task_state(recurrence=None).model_copy(
        update={"due_at": now + timedelta(hours=1), "created_at": now, "recurrence": recurrence}
    )
    handle = await harness.start(state)
    await harness.env.sleep(timedelta(hours=1, minutes=1))
    await wait_until(lambda: harness.fakes.deliveries, what="the first reminder")

    def stopped() -> TaskState | None:
        row = harness.fakes.rows.get(state.task_id)
        return row if row is not None and row.recurrence is None else None

    row = await wait_until(stopped, what="the series to stop")
    assert row is not None
    assert row.status == "open"
    assert row.recurrence_stopped is not None
    assert reason in row.recurrence_stopped
    await handle.signal("complete")
    assert (await handle.result()).status == "done"
    assert len(harness.fakes.deliveries) == 1
    assert await workflow_task_failures(handle) == []
