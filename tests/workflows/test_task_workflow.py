"""Every transition of the task workflow, with days of waiting skipped by the test server."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from core.payloads import (
    ARM_LEAD,
    ARM_SPREAD,
    CHANGE_UPDATE,
    DELIVER_AHEAD,
    DELIVERY_GRACE,
    GRACE_SPREAD,
    REARM_SIGNAL,
    SYNC_UPDATE,
    TASK_WORKFLOW,
    WORKFLOW_VERSION,
    WORKFLOW_VERSION_UNSUPPORTED,
    Recurrence,
    TaskChange,
    TaskState,
    TaskWorkflowInput,
    arm_lead,
    delivery_grace,
)
from tests.helpers import task_state, wait_until
from tests.workflows.conftest import PAST_GRACE, Harness, fake_worker, start_environment
from workflows.task import TaskWorkflow


async def send_change(handle: WorkflowHandle[Any, Any], change: TaskChange) -> TaskState:
    result: TaskState = await handle.execute_update(CHANGE_UPDATE, change, result_type=TaskState)
    return result


async def new_task(h: Harness, due_in: timedelta, **fields: Any) -> TaskState:
    now = await h.now()
    return task_state(**fields).model_copy(
        update={"due_at": now + due_in, "created_at": now, "updated_at": now}
    )


async def test_fires_once_at_due_time_and_saves_the_row_first(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=2))
    handle = await harness.start(state)
    synced = await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    assert harness.fakes.rows[state.task_id] == synced
    assert harness.fakes.deliveries == []

    await harness.env.sleep(timedelta(days=2) + PAST_GRACE)
    await wait_until(lambda: harness.fakes.deliveries, what="the reminder")
    [delivery] = harness.fakes.deliveries
    assert delivery.at >= state.due_at
    assert delivery.input.dedupe_key == f"{state.task_id}/1/0"

    await harness.env.sleep(timedelta(days=30))
    assert len(harness.fakes.deliveries) == 1


async def test_version_2_fires_ahead_and_the_delivery_waits_for_the_instant(harness: Harness) -> None:
    state = await new_task(harness, timedelta(hours=3))
    handle = await harness.start(state, version=2)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await harness.env.sleep(timedelta(hours=3, seconds=1))
    [delivery] = await wait_until(lambda: harness.fakes.deliveries, what="the reminder")
    assert delivery.input.not_before == state.due_at
    assert harness.fakes.arms == []
    history = await handle.fetch_history()
    [timer] = _timers(history)
    [delivered] = [e for e in history.events if e.HasField("marker_recorded_event_attributes")][-1:]
    assert timer <= timedelta(hours=3) - DELIVER_AHEAD
    # A local activity: the wake-up's own workflow task delivers, no activity task.
    assert delivered.marker_recorded_event_attributes.marker_name == "core_local_activity"
    assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]


async def test_armed_ahead_then_delivered_after_the_grace(harness: Harness) -> None:
    """Version 3 (decisions §29, §30): a timer the task's lead ahead arms the reminder in the worker's
    wheel with the row's version, a timer the task's grace after the instant runs the workflow's own
    delivery; both are local activities, and no workflow task is open at the instant itself."""
    state = await new_task(harness, timedelta(hours=3))
    lead, grace = arm_lead(state.task_id), delivery_grace(state.task_id)
    handle = await harness.start(state)
    synced = await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await harness.env.sleep(timedelta(hours=3) - lead + timedelta(seconds=1))
    [arm] = await wait_until(lambda: harness.fakes.arms, what="the arm")
    assert arm.input.not_before == state.due_at
    assert arm.input.version == synced.version
    assert arm.input.assignee_id == state.assignee_id
    assert state.due_at - lead <= arm.at < state.due_at
    assert harness.fakes.deliveries == []
    await harness.env.sleep(lead + grace)
    [delivery] = await wait_until(lambda: harness.fakes.deliveries, what="the reminder")
    assert delivery.at >= state.due_at + grace
    assert delivery.input.version is None  # the workflow's delivery is not fenced: it is the guarantee
    assert delivery.input.dedupe_key == arm.input.dedupe_key
    history = await handle.fetch_history()
    arm_timer, grace_timer = _timers(history)
    assert timedelta(hours=3) - lead - timedelta(seconds=1) < arm_timer <= timedelta(hours=3) - lead
    assert lead + grace - timedelta(seconds=1) < grace_timer <= lead + grace
    assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]


async def test_a_reminder_handed_back_by_a_stopping_worker_is_armed_again_and_delivered_once(
    harness: Harness,
) -> None:
    """The ``rearm`` signal (a worker that stops, tickler/worker.py) arms the reminder again with the
    same key and version; the grace delivery still comes once. With nothing left to arm it does nothing."""
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    await harness.env.sleep(timedelta(hours=1) - arm_lead(state.task_id) + timedelta(seconds=1))
    [first] = await wait_until(lambda: harness.fakes.arms, what="the arm")
    await handle.signal(REARM_SIGNAL)
    _, again = await wait_until(lambda: harness.fakes.arms[1:] and harness.fakes.arms, what="re-arm")
    assert (again.input.dedupe_key, again.input.version) == (first.input.dedupe_key, first.input.version)
    await harness.env.sleep(arm_lead(state.task_id) + PAST_GRACE)
    [delivery] = await wait_until(lambda: harness.fakes.deliveries, what="the reminder")
    assert delivery.input.dedupe_key == first.input.dedupe_key
    await handle.signal(REARM_SIGNAL)  # nothing left to arm: nothing happens
    await send_change(handle, TaskChange(action="complete"))
    assert (await handle.result()).status == "done"
    assert len(harness.fakes.arms) == 2
    assert len(harness.fakes.deliveries) == 1


def test_leads_and_graces_spread_a_burst_and_never_change_for_a_task() -> None:
    """§30: the reminders of a burst due at one instant arm over nine minutes and fall back to their
    workflow's delivery over thirty seconds, each task always at the same point (replay gives the same
    timers)."""
    ids = [uuid.uuid4() for _ in range(2_000)]
    leads = [arm_lead(task_id) for task_id in ids]
    graces = [delivery_grace(task_id) for task_id in ids]
    assert all(ARM_LEAD <= lead < ARM_LEAD + ARM_SPREAD for lead in leads)
    assert all(DELIVERY_GRACE <= grace < DELIVERY_GRACE + GRACE_SPREAD for grace in graces)
    for values, low, span in ((leads, ARM_LEAD, ARM_SPREAD), (graces, DELIVERY_GRACE, GRACE_SPREAD)):
        tenths = Counter(int(10 * ((value - low) / span)) for value in values)
        assert sorted(tenths) == list(range(10)), tenths
        assert min(tenths.values()) > 100, tenths
    assert [arm_lead(uuid.UUID(str(task_id))) for task_id in ids] == leads
    assert len({(lead, grace) for lead, grace in zip(leads, graces, strict=True)}) > 1_900


async def test_a_change_in_the_lead_window_arms_again_and_is_answered_at_once(harness: Harness) -> None:
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await harness.env.sleep(timedelta(hours=1) - timedelta(seconds=30))
    await wait_until(lambda: harness.fakes.arms, what="the arm")
    edited = await send_change(handle, TaskChange(action="edit", title="Call Ana"))
    # Answered in the lead window: the update did not wait for the instant.
    assert await harness.now() < state.due_at
    first, again = await wait_until(lambda: harness.fakes.arms[1:] and harness.fakes.arms, what="re-arm")
    assert again.input.dedupe_key == first.input.dedupe_key
    assert again.input.version == edited.version == (first.input.version or 0) + 1
    moved = await send_change(handle, TaskChange(action="snooze", minutes=10))
    await harness.env.sleep(timedelta(minutes=15))
    [delivery] = await wait_until(lambda: harness.fakes.deliveries, what="the snoozed reminder")
    assert delivery.input.due_at == moved.due_at
    assert delivery.input.dedupe_key != first.input.dedupe_key
    assert harness.fakes.arms[-1].input.dedupe_key == delivery.input.dedupe_key


def _timers(history: Any) -> list[timedelta]:
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]


@pytest.mark.parametrize("version", [0, 1, None], ids=["0", "1", "absent"])
async def test_an_input_of_a_removed_version_is_refused_at_start(version: int | None) -> None:
    """Version 1 is gone (decisions §12): an input that asks for it, or predates the field (a start by
    hand), fails the workflow for good with a reason, before it saves or arms anything. On a test server
    of its own: waiting for the result on the shared one skipped its clock decades ahead for the tests
    after it."""
    env = await start_environment()
    try:
        async with fake_worker(env) as harness:
            state = await new_task(harness, timedelta(hours=1))
            payload = TaskWorkflowInput(state=state).model_dump(mode="json", exclude={"version"})
            if version is not None:
                payload["version"] = version
            handle = await harness.env.client.start_workflow(
                TASK_WORKFLOW, payload, id=f"task-{state.task_id}", task_queue=harness.task_queue
            )
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
            cause = failed.value.cause
            assert isinstance(cause, ApplicationError)
            assert cause.type == WORKFLOW_VERSION_UNSUPPORTED
            assert cause.non_retryable
            assert f"version {1 if version is None else version} is no longer supported" in cause.message
            assert harness.fakes.saves == 0
            history = await handle.fetch_history()
            assert not [e for e in history.events if e.HasField("timer_started_event_attributes")]
    finally:
        await env.shutdown()


async def test_an_input_of_a_newer_version_waits_for_a_worker_that_runs_it() -> None:
    """A newer build's input (a rollback) is not failed for good: its workflow task fails and is retried
    until a worker of that build takes it; meanwhile this worker does nothing with it. On a test server
    of its own: a workflow task retried on the shared one stops its time-skipping for the next tests."""
    env = await start_environment()
    try:
        async with fake_worker(env) as harness:
            state = await new_task(harness, timedelta(hours=1))
            handle = await harness.start(state, version=WORKFLOW_VERSION + 1)

            async def task_failed() -> bool:
                history = await handle.fetch_history()
                return any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)

            await wait_until(task_failed, what="the workflow task failure")
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
            assert harness.fakes.saves == 0
    finally:
        await env.shutdown()


async def test_reschedule_update_moves_the_timer_and_the_row(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=1))
    handle = await harness.start(state)
    new_due = state.due_at + timedelta(days=2)
    changed = await send_change(handle, TaskChange(action="reschedule", due_at=new_due))
    assert changed.due_at == new_due
    assert harness.fakes.rows[state.task_id].due_at == new_due  # the update returns after the save

    await harness.env.sleep(timedelta(days=2))
    assert harness.fakes.deliveries == []
    await harness.env.sleep(timedelta(days=1) + PAST_GRACE)
    await wait_until(lambda: harness.fakes.deliveries, what="the moved reminder")
    assert harness.fakes.deliveries[0].at >= new_due


@pytest.mark.parametrize(("action", "status"), [("complete", "done"), ("cancel", "cancelled")])
async def test_a_closed_task_never_fires(harness: Harness, action: str, status: str) -> None:
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    closed = await send_change(handle, TaskChange.model_validate({"action": action}))
    assert closed.status == status
    result = await handle.result()
    assert result.status == status
    assert harness.fakes.rows[state.task_id].status == status
    await harness.env.sleep(timedelta(days=1))
    assert harness.fakes.deliveries == []


async def test_reschedule_into_the_past_fires_at_once(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=1))
    handle = await harness.start(state)
    past = (await harness.now()) - timedelta(hours=1)
    await send_change(handle, TaskChange(action="reschedule", due_at=past))
    await wait_until(lambda: harness.fakes.deliveries, what="the immediate reminder")


async def test_a_series_rescheduled_far_into_the_past_reminds_once_and_resumes_ahead(
    harness: Harness,
) -> None:
    """Missed occurrences are not replayed: the one that was due fires, then the next one to come."""
    state = (await new_task(harness, timedelta(days=1))).model_copy(
        update={"recurrence": Recurrence(every=1, unit="days")}
    )
    handle = await harness.start(state)
    now = await harness.now()
    await send_change(handle, TaskChange(action="reschedule", due_at=now - timedelta(days=30)))
    await wait_until(lambda: harness.fakes.deliveries, what="the overdue reminder")
    await wait_until(
        lambda: harness.fakes.rows[state.task_id].due_at > now, what="the series moved to the next occurrence"
    )
    assert len(harness.fakes.deliveries) == 1, "not one per missed day"
    assert harness.fakes.rows[state.task_id].due_at <= now + timedelta(days=1)
    assert (await handle.query(TaskWorkflow.current)).status == "open"


async def test_reschedule_after_firing_arms_it_again(harness: Harness) -> None:
    state = await new_task(harness, timedelta(minutes=5))
    handle = await harness.start(state)
    await harness.env.sleep(timedelta(minutes=6))
    await wait_until(lambda: len(harness.fakes.deliveries) == 1, what="the first reminder")
    later = (await harness.now()) + timedelta(hours=2)
    await send_change(handle, TaskChange(action="reschedule", due_at=later))
    await harness.env.sleep(timedelta(hours=2) + PAST_GRACE)
    await wait_until(lambda: len(harness.fakes.deliveries) == 2, what="the second reminder")
    first, second = harness.fakes.keys()
    assert first != second


async def test_snooze_by_minutes_and_until(harness: Harness) -> None:
    state = await new_task(harness, timedelta(minutes=10))
    handle = await harness.start(state)
    snoozed = await send_change(handle, TaskChange(action="snooze", minutes=60))
    assert snoozed.due_at >= state.due_at + timedelta(minutes=49)
    until = (await harness.now()) + timedelta(days=1)
    snoozed = await send_change(handle, TaskChange(action="snooze", until=until))
    assert snoozed.due_at == until
    await harness.env.sleep(timedelta(hours=2))
    assert harness.fakes.deliveries == []


async def test_several_reminders_move_with_the_due_time(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=3), reminder_offsets=(86400, 900, 0))
    handle = await harness.start(state)
    new_due = state.due_at + timedelta(days=1)
    await send_change(handle, TaskChange(action="reschedule", due_at=new_due))
    await harness.env.sleep(timedelta(days=5))
    await wait_until(lambda: len(harness.fakes.deliveries) == 3, what="three reminders")
    fired = [(d.input.offset_seconds, d.at - new_due) for d in harness.fakes.deliveries]
    assert [offset for offset, _ in fired] == [86400, 900, 0]
    for offset, lateness in fired:
        assert timedelta(seconds=-offset) <= lateness < timedelta(seconds=-offset + 60)
    assert len(set(harness.fakes.keys())) == 3


async def test_early_reminders_already_past_are_skipped(harness: Harness) -> None:
    now = await harness.now()
    state = (await new_task(harness, timedelta(minutes=10), reminder_offsets=(86400, 300, 0))).model_copy(
        update={"created_at": now}
    )
    handle = await harness.start(state.skipping_passed_reminders(now))
    await harness.env.sleep(timedelta(minutes=11))
    await wait_until(lambda: len(harness.fakes.deliveries) == 2, what="the 5-minute and due reminders")
    assert [d.input.offset_seconds for d in harness.fakes.deliveries] == [300, 0]
    assert (await handle.query(TaskWorkflow.current)).status == "open"


async def test_weekly_recurrence_keeps_local_time_across_dst(harness: Harness) -> None:
    lisbon = ZoneInfo("Europe/Lisbon")
    now = await harness.now()
    # Tuesday 10:00 in Lisbon, the next one after the test server's clock; DST changes twice a year,
    # so ten weekly occurrences from any date within 26 weeks of a change cross one... we pick a fixed
    # span that always holds a change: 30 occurrences cross at least one DST transition.
    local = now.astimezone(lisbon).replace(hour=10, minute=0, second=0, microsecond=0) + timedelta(days=1)
    state = (await new_task(harness, timedelta(days=1))).model_copy(
        update={
            "due_at": local.astimezone(UTC),
            "recurrence": Recurrence(rrule="FREQ=WEEKLY"),
            "timezone": "Europe/Lisbon",
        }
    )
    handle = await harness.start(state)
    await harness.skip(timedelta(weeks=30, days=2), step=timedelta(days=3))
    await wait_until(lambda: len(harness.fakes.deliveries) >= 30, what="30 weekly reminders")
    local_times = {d.input.due_at.astimezone(lisbon).strftime("%a %H:%M") for d in harness.fakes.deliveries}
    assert local_times == {local.strftime("%a %H:%M")}
    offsets = {d.input.due_at.astimezone(lisbon).utcoffset() for d in harness.fakes.deliveries}
    assert len(offsets) == 2, "30 weeks always cross a DST change in Lisbon"
    assert len(set(harness.fakes.keys())) == len(harness.fakes.deliveries)
    row = harness.fakes.rows[state.task_id]
    assert row.due_at > harness.fakes.deliveries[-1].input.due_at  # the row shows the next occurrence
    assert (await handle.query(TaskWorkflow.current)).status == "open"


async def test_every_n_days_recurrence_until_completed(harness: Harness) -> None:
    state = (await new_task(harness, timedelta(hours=1))).model_copy(
        update={"recurrence": Recurrence(every=2, unit="days")}
    )
    handle = await harness.start(state)
    await harness.skip(timedelta(days=4, hours=2))
    await wait_until(lambda: len(harness.fakes.deliveries) == 3, what="three occurrences")
    await send_change(handle, TaskChange(action="complete"))
    await handle.result()
    await harness.env.sleep(timedelta(days=10))
    assert len(harness.fakes.deliveries) == 3


async def test_signals_change_the_task_and_bad_payloads_never_wedge_it(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=1))
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    for name, payload in [
        ("reschedule", "not an object"),
        ("reschedule", {"due_at": "tomorrow"}),
        ("reschedule", {"due_at": "2026-12-01T10:00:00"}),  # naive
        ("reschedule", {"due_at": state.due_at.isoformat(), "status": "done"}),  # unknown field
        ("reschedule", {}),
        ("snooze", {"minutes": -5}),
        ("reschedule", {"due_at": state.due_at.isoformat(), "organization_id": "someone-else"}),
    ]:
        await handle.signal(name, payload)
    new_due = state.due_at + timedelta(hours=3)
    await handle.signal("reschedule", {"due_at": new_due.isoformat()})
    await wait_until(lambda: _row_due(harness, state) == new_due, what="the valid signal to reach the row")
    await handle.signal("complete")
    result = await handle.result()
    assert result.status == "done"
    assert result.due_at == new_due


def _row_due(h: Harness, state: TaskState) -> datetime | None:
    row = h.fakes.rows.get(state.task_id)
    return row.due_at if row else None


async def test_a_rejected_update_says_why_and_leaves_no_trace(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=1))
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    before = await _update_events(handle)
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await send_change(handle, TaskChange(action="reschedule"))
    assert isinstance(failed.value.cause, ApplicationError)
    assert failed.value.cause.type == "Invalid"
    assert "needs a new time" in str(failed.value.cause)
    # A validator's rejection records no update in the history (the test server may still record the
    # workflow task that ran the validator; the real server drops it).
    assert await _update_events(handle) == before


async def _update_events(handle: WorkflowHandle[TaskWorkflow, TaskState]) -> list[str]:
    return [
        EventType.Name(event.event_type)
        for event in (await handle.fetch_history()).events
        if "UPDATE" in EventType.Name(event.event_type)
    ]


async def test_a_repeated_request_id_applies_once(harness: Harness) -> None:
    state = await new_task(harness, timedelta(days=1))
    handle = await harness.start(state)
    change = TaskChange(action="snooze", minutes=30, request_id="req-1")
    first = await send_change(handle, change)
    second = await send_change(handle, change)
    assert first.due_at == second.due_at
    assert first.version == second.version


async def test_a_task_reopened_in_its_undo_window_fires_what_fell_due_while_it_was_closed(
    harness: Harness,
) -> None:
    """Undo (issue 17): a done task waits for a reopen until its window ends; reopened, it is open with
    its reminders as they were, and the one that fell due meanwhile is armed and delivered at once."""
    state = await new_task(harness, timedelta(minutes=1))
    handle = await harness.start(state)
    done = await send_change(handle, TaskChange(action="complete", undo_seconds=600))
    assert done.status == "done"
    assert done.reopen_until == done.updated_at + timedelta(seconds=600)
    # Armed at its creation (due within its lead) with version 1: the wheel's delivery of that version
    # writes nothing once the task is done (the database fences it), and the workflow delivers none.
    await harness.env.sleep(timedelta(minutes=5))
    assert [a.input.version for a in harness.fakes.arms] == [state.version]
    assert harness.fakes.deliveries == []
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    reopened = await send_change(handle, TaskChange(action="reopen"))
    assert reopened.status == "open"
    assert reopened.reopen_until is None
    assert harness.fakes.rows[state.task_id].status == "open"

    def armed_again() -> list[Any]:
        return [a for a in harness.fakes.arms if a.input.version == reopened.version]

    [arm] = await wait_until(armed_again, what="the reminder that fell due while closed, armed again")
    assert arm.input.not_before == state.due_at
    await harness.env.sleep(PAST_GRACE)
    [delivery] = await wait_until(lambda: harness.fakes.deliveries, what="its delivery")
    assert delivery.input.dedupe_key == arm.input.dedupe_key

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await send_change(handle, TaskChange(action="reopen"))
    assert isinstance(refused.value.cause, ApplicationError)
    assert "the task is open" in str(refused.value.cause)


async def test_after_its_undo_window_a_closed_task_ends_and_refuses_a_reopen(harness: Harness) -> None:
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    await send_change(handle, TaskChange(action="cancel", undo_seconds=30))
    assert (await handle.result()).status == "cancelled"
    history = await handle.fetch_history()
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]
    assert timedelta(seconds=29) < timers[-1] <= timedelta(seconds=30)
    with pytest.raises(RPCError):
        await handle.signal("reopen")


async def test_a_reopen_signal_within_the_window_reopens(harness: Harness) -> None:
    """Other services undo too: the `reopen` signal, after a `complete` signal with the default window."""
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await handle.signal("complete")
    await wait_until(lambda: harness.fakes.rows[state.task_id].status == "done", what="the completion")
    await handle.signal("reopen", {"request_id": "undo-1"})
    await wait_until(lambda: harness.fakes.rows[state.task_id].status == "open", what="the reopen")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING


async def test_a_reopen_and_a_close_in_one_workflow_task_are_both_saved(harness: Harness) -> None:
    """A reopen signal and a complete update that reach the workflow together: the task closes again and
    the update is answered once its row is saved (the undo window's wait must give way to the save)."""
    state = await new_task(harness, timedelta(hours=1))
    handle = await harness.start(state)
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    await handle.signal("cancel")
    await handle.signal("reopen")
    done = await asyncio.wait_for(send_change(handle, TaskChange(action="complete")), timeout=20)
    assert done.status == "done"
    assert harness.fakes.rows[state.task_id].status == "done"
    assert (await handle.result()).status == "done"
