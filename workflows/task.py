"""One workflow per task: it sleeps on a durable timer until each reminder is due, then delivers it.

The workflow is the only writer of its ``tasks`` row (docs/decisions.md): every change, from the REST
API (the ``change`` update) or from another service (the signals), goes into the workflow first and
reaches PostgreSQL through the ``save_task`` local activity. Changes are checked by one function,
:func:`check_change`: an update's validator rejects a bad one before it enters the history, a signal's
handler drops it with a log line and a metric, so nothing a caller sends can wedge the workflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from core.logs import task_fields
    from core.payloads import (
        ARM_REMINDER,
        CHANGE_CONFLICTS,
        CHANGE_INVALID,
        CHANGE_UPDATE,
        DEFAULT_UNDO_SECONDS,
        DELIVER_AHEAD,
        DELIVER_REMINDER,
        NEXT_OCCURRENCE,
        OLDEST_WORKFLOW_VERSION,
        REARM_SIGNAL,
        RECURRENCE_UNUSABLE,
        SAVE_TASK,
        STATE_QUERY,
        SYNC_UPDATE,
        TASK_WORKFLOW,
        UNDO_PATCH,
        WORKFLOW_VERSION,
        WORKFLOW_VERSION_UNSUPPORTED,
        DeliverReminderInput,
        NextOccurrenceInput,
        TaskChange,
        TaskState,
        TaskWorkflowInput,
        arm_lead,
        check_due_window,
        delivery_grace,
    )
    from core.temporal import DUE_AT, TASK_STATUS

LOCAL_TIMEOUT = timedelta(seconds=10)
DELIVER_TIMEOUT = timedelta(seconds=30)
# A delivery fails while PostgreSQL or Redis is down: tried again 1, 2 and 4 s later, then every 5 s, so
# that the reminders due during an outage reach their streams within 5 s of its end (docs/reliability.md).
# An attempt against a server that refuses costs a failed connect: 1,000 reminders waiting, 200 a second.
DELIVER_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5))
# A next occurrence that keeps failing for another reason than its rule (no evaluator free, a worker
# restarting) is tried for a few minutes; then the series stops with a reason rather than wait forever.
# Arming only registers the reminder in this worker's memory: if that fails twice, the timer at the
# instant plus its grace delivers it instead.
ARM_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=2)
NEXT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=8
)
# Well below Temporal's limits (51,200 events): a wake-up replays the history, so keep it short.
MAX_HISTORY_EVENTS = 2_000
RECENT_REQUEST_IDS = 100


class ChangeRejected(ApplicationError):
    """A change that does not fit the task's state; the REST API answers 409 or 422 with its message."""

    def __init__(self, message: str, *, conflict: bool) -> None:
        kind = CHANGE_CONFLICTS if conflict else CHANGE_INVALID
        super().__init__(message, type=kind, non_retryable=True)


def check_change(state: TaskState, change: TaskChange, now: datetime) -> None:
    """Raise ChangeRejected if ``change`` cannot apply to ``state`` at ``now``."""
    if change.organization_id is not None and change.organization_id != state.organization_id:
        raise ChangeRejected("the change names another organization", conflict=False)
    if change.action == "reopen":
        if state.status == "open":
            raise ChangeRejected("the task is open", conflict=True)
        if state.reopen_until is None or now >= state.reopen_until:
            raise ChangeRejected(f"the task is {state.status} and its undo window has passed", conflict=True)
        return
    if state.status != "open":
        raise ChangeRejected(f"the task is {state.status}", conflict=True)
    if change.action in ("reschedule", "snooze") or change.due_at is not None:
        new_due = _new_due(state, change, now)
        if new_due is None:
            raise ChangeRejected(f"{change.action} needs a new time", conflict=False)
        try:
            check_due_window(new_due, now)
        except ValueError as exc:
            raise ChangeRejected(f"the new due time {exc}", conflict=False) from None


def _rejection(exc: ValidationError | ChangeRejected) -> str:
    """Why a signal was refused, for the log: never the values it carried (a title, notes)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in errors)
    return str(exc)


def _cause(exc: ActivityError | ApplicationError) -> BaseException:
    """Why an activity failed. The SDK raises an activity task's failure as ActivityError around its
    cause, but a local activity's as the cause itself (temporalio 1.35): both reach here."""
    if isinstance(exc, ActivityError):
        return exc.cause or exc
    return exc


def _check_version(version: int) -> None:
    """Refuse an input whose version this code does not run (core.payloads.WORKFLOW_VERSION): below the
    oldest kept, the workflow fails for good, since no worker will ever run it; above the newest (a
    newer build's, during a rollback), the workflow task fails and is retried until a worker of that
    build takes it, since failing for good would lose the task."""
    if version < OLDEST_WORKFLOW_VERSION:
        raise ApplicationError(
            f"workflow version {version} is no longer supported (oldest: {OLDEST_WORKFLOW_VERSION}): "
            f"start it with version {WORKFLOW_VERSION}",
            type=WORKFLOW_VERSION_UNSUPPORTED,
            non_retryable=True,
        )
    if version > WORKFLOW_VERSION:
        raise RuntimeError(f"workflow version {version} is newer than this worker's {WORKFLOW_VERSION}")


def _new_due(state: TaskState, change: TaskChange, now: datetime) -> datetime | None:
    if change.action == "snooze":
        if change.until is not None:
            return change.until
        return now + timedelta(minutes=change.minutes) if change.minutes is not None else None
    return change.due_at


@workflow.defn(name=TASK_WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, input: TaskWorkflowInput) -> None:
        self.state = input.state
        # What the search attributes say (set at start, or by the previous run).
        self.indexed = (input.state.status, input.state.due_at)
        # A continued run starts with a row that is already saved.
        self.saved_version = input.state.version if input.saved else 0
        # Set by every change; the main loop's waits wake up on it.
        self.changed = False
        # The behaviour this run keeps (core.payloads.WORKFLOW_VERSION), checked by run().
        self.version = input.version

    @workflow.run
    async def run(self, input: TaskWorkflowInput) -> TaskState:
        _check_version(input.version)
        while True:
            if self._history_is_long() and workflow.all_handlers_finished():
                # Checked first, so that a storm of signals cannot postpone it; an update in flight
                # waits for a save, so it is let finish first. The next run saves what is not saved yet.
                saved = self.saved_version >= self.state.version
                # The next run takes today's behaviour (WORKFLOW_VERSION): this one is left behind.
                next_input = TaskWorkflowInput(state=self.state, saved=saved, version=WORKFLOW_VERSION)
                workflow.logger.info(
                    "continuing as new after %d history events",
                    workflow.info().get_current_history_length(),
                    extra=self._log_fields(),
                )
                workflow.continue_as_new(next_input)
            if self.saved_version < self.state.version:
                await self._save()
            elif self.state.status != "open":
                # Done or cancelled: the undo window (issue 17). A reopen, or any change, returns here,
                # so that it is saved first; a workflow that closed before the window existed replays
                # without it (the patch's marker is not in its history).
                until = self.state.reopen_until
                if until is None or workflow.now() >= until or not workflow.patched(UNDO_PATCH):
                    break
                await self._sleep_until(until)
            elif reminders := self.state.pending_reminders():
                fire_at, offset = reminders[0]
                if self.version >= 3:
                    await self._remind(offset, fire_at)
                elif await self._sleep_until(fire_at - DELIVER_AHEAD):
                    await self._deliver(offset, fire_at)
            elif self.state.recurrence is not None:
                if await self._sleep_until(self.state.due_at):
                    await self._advance_to_next_occurrence()
            else:
                self.changed = False
                await workflow.wait_condition(lambda: self.changed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.logger.info("task closed: %s", self.state.status, extra=self._log_fields())
        return self.state

    def _log_fields(self) -> dict[str, str]:
        """The fields of a line about this task (workflow.logger adds the run's own, under
        ``temporal_workflow``)."""
        return task_fields(self.state.task_id, workflow.info().workflow_id, self.state.organization_id)

    # -- the interface -------------------------------------------------------------------------------

    @workflow.query(name=STATE_QUERY)
    def current(self) -> TaskState:
        return self.state

    @workflow.update(name=SYNC_UPDATE)
    async def sync(self) -> TaskState:
        """Return the state once the row in PostgreSQL has caught up with it (used right after a start)."""
        await workflow.wait_condition(lambda: self.saved_version >= self.state.version)
        return self.state

    @workflow.update(name=CHANGE_UPDATE)
    async def change(self, change: TaskChange) -> TaskState:
        """Apply a change from the REST API; returns once the row shows it."""
        self._apply(change)
        version = self.state.version
        await workflow.wait_condition(lambda: self.saved_version >= version)
        return self.state

    @change.validator
    def _validate_change(self, change: TaskChange) -> None:
        if not self._seen(change):
            check_change(self.state, change, workflow.now())

    # Signals for other services, e.g. `temporal workflow signal --name reschedule --input '{"due_at": ...}'`.
    # They take the raw JSON so that a malformed payload reaches our own check instead of being dropped
    # by the data converter without a trace.

    @workflow.signal(name="reschedule")
    def reschedule_signal(self, payload: Any = None) -> None:
        self._signal("reschedule", payload)

    @workflow.signal(name="snooze")
    def snooze_signal(self, payload: Any = None) -> None:
        self._signal("snooze", payload)

    @workflow.signal(name="complete")
    def complete_signal(self, payload: Any = None) -> None:
        self._signal("complete", payload)

    @workflow.signal(name="cancel")
    def cancel_signal(self, payload: Any = None) -> None:
        self._signal("cancel", payload)

    @workflow.signal(name="reopen")
    def reopen_signal(self, payload: Any = None) -> None:
        self._signal("reopen", payload)

    @workflow.signal(name=REARM_SIGNAL)
    def rearm_signal(self, payload: Any = None) -> None:
        """A worker that stops gives back the reminder it held armed (tickler/worker.py): the wait for
        the grace ends, and the loop arms the reminder again, on the worker that runs this task next."""
        if self.state.status == "open":
            self.changed = True

    def _signal(self, action: str, payload: Any) -> None:
        try:
            if payload is not None and not isinstance(payload, dict):
                raise ChangeRejected("the payload must be a JSON object", conflict=False)
            change = TaskChange.model_validate({**(payload or {}), "action": action})
            if not self._seen(change):
                check_change(self.state, change, workflow.now())
        except (ValidationError, ChangeRejected) as exc:
            workflow.logger.warning(
                "rejected %s signal for task %s: %s",
                action,
                self.state.task_id,
                _rejection(exc),
                extra=self._log_fields(),
            )
            workflow.metric_meter().create_counter(
                "tickler_rejected_signals", "Signals refused by a task workflow"
            ).add(1, {"signal": action})
            return
        self._apply(change)

    # -- state changes -------------------------------------------------------------------------------

    def _seen(self, change: TaskChange) -> bool:
        """A change with a request id seen recently was applied already: it applies once."""
        return change.request_id is not None and change.request_id in self.state.recent_request_ids

    def _apply(self, change: TaskChange) -> None:
        if self._seen(change):
            return
        state = self.state
        if change.request_id is not None:
            ids = (*state.recent_request_ids, change.request_id)[-RECENT_REQUEST_IDS:]
            state = state.model_copy(update={"recent_request_ids": ids})
        now = workflow.now()
        fields: dict[str, Any] = {}
        if change.action in ("complete", "cancel"):
            fields["status"] = "done" if change.action == "complete" else "cancelled"
            undo = DEFAULT_UNDO_SECONDS if change.undo_seconds is None else change.undo_seconds
            fields["reopen_until"] = now + timedelta(seconds=undo)
        elif change.action == "reopen":
            # Its reminders as they were: one that fell due while it was closed is pending still, and
            # the loop arms it at once.
            fields["status"] = "open"
            fields["reopen_until"] = None
        else:
            new_due = _new_due(state, change, now)
            if new_due is not None:
                fields["due_at"] = new_due
                # A snooze moves this occurrence only; any other new time starts the series again there.
                snoozed = change.action == "snooze" and state.recurrence is not None
                fields["series_start"] = (state.series_start or state.due_at) if snoozed else None
            if change.title is not None:
                fields["title"] = change.title
            if change.notes is not None:
                fields["notes"] = change.notes or None
            if change.reminder_offsets is not None:
                fields["reminder_offsets"] = change.reminder_offsets
            if change.timezone is not None:
                fields["timezone"] = change.timezone
                fields["series_start"] = None
            if change.assignee_id is not None:
                fields["assignee_id"] = change.assignee_id
            if change.recurrence is not None:
                fields["recurrence"] = change.recurrence
                fields["recurrence_stopped"] = None
                fields["series_start"] = None
            for name in change.clear:
                fields[name] = None
        self.state = state
        self._change(now, **fields)

    def _change(self, now: datetime, **fields: Any) -> None:
        """A new version for the row; a new schedule if due_at or the reminders moved; search attributes."""
        old = self.state
        new = old.model_copy(update={**fields, "version": old.version + 1, "updated_at": now})
        if new.due_at != old.due_at or new.reminder_offsets != old.reminder_offsets:
            new = new.model_copy(update={"schedule_revision": old.schedule_revision + 1})
            new = new.skipping_passed_reminders(now)
        self.state = new
        self.changed = True

    async def _advance_to_next_occurrence(self) -> None:
        state = self.state
        assert state.recurrence is not None
        stopped: str | None = None
        start = state.series_start or state.due_at
        # The next occurrence after now, not after the one just due: a series whose due time lies
        # several occurrences back (rescheduled into the past, or a worker down for days) reminds once for
        # the one that was due and resumes at the next one to come, instead of replaying every missed one
        # (a year back, daily: 365 reminders at once, in one workflow task). On time, the two are the same:
        # no occurrence falls between the due time and the instant its timer fired.
        after = max(state.due_at, workflow.now())
        question = NextOccurrenceInput(
            recurrence=state.recurrence, timezone=state.timezone, after=after, start=start
        )
        try:
            following: datetime | None = await workflow.execute_local_activity(
                NEXT_OCCURRENCE,
                question,
                result_type=datetime,
                start_to_close_timeout=LOCAL_TIMEOUT,
                retry_policy=NEXT_RETRY,
            )
        except (ActivityError, ApplicationError) as exc:
            # The rule cannot be used (or could not be run for minutes): the series stops, the task and
            # its workflow go on, and the reason is on the task for its user and in the log for operators.
            cause = _cause(exc)
            unusable = isinstance(cause, ApplicationError) and cause.type == RECURRENCE_UNUSABLE
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
            stopped = reason if unusable else f"the next occurrence could not be computed ({reason})"
            following = None
            workflow.logger.warning(
                "recurrence of task %s stopped: %s", state.task_id, stopped, extra=self._log_fields()
            )
            workflow.metric_meter().create_counter(
                "tickler_recurrences_stopped", "Series stopped because their rule could not be used"
            ).add(1, {"unusable": str(unusable).lower()})
        if self.state is not state:
            return  # changed meanwhile: the loop looks again
        if following is None:
            self._change(workflow.now(), recurrence=None, recurrence_stopped=stopped)
        else:
            self._change(workflow.now(), due_at=following, series_start=start)

    # -- time and activities -------------------------------------------------------------------------

    async def _sleep_until(self, moment: datetime) -> bool:
        """Wait until ``moment``; False if a change came first (the loop then looks again)."""
        delay = (moment - workflow.now()).total_seconds()
        if delay <= 0:
            return True
        self.changed = False
        try:
            await workflow.wait_condition(lambda: self.changed, timeout=delay)
        except TimeoutError:
            # A change that came in the same workflow task as the timer wins: it may have moved the time.
            return not self.changed
        return False

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > MAX_HISTORY_EVENTS

    async def _save(self) -> None:
        version = self.state.version
        self._index()
        await workflow.execute_local_activity(SAVE_TASK, self.state, start_to_close_timeout=LOCAL_TIMEOUT)
        self.saved_version = max(self.saved_version, version)

    def _index(self) -> None:
        """Bring the search attributes up to date with the row: once per save, not per change, and only
        what changed, since every upsert is a command and an event."""
        status, due_at = self.state.status, self.state.due_at
        updates: list[SearchAttributeUpdate[Any]] = []
        if status != self.indexed[0]:
            updates.append(TASK_STATUS.value_set(status))
        if due_at != self.indexed[1]:
            updates.append(DUE_AT.value_set(due_at))
        if updates:
            workflow.upsert_search_attributes(updates)
            self.indexed = (status, due_at)

    async def _remind(self, offset: int, fire_at: datetime) -> None:
        """Version 3 (decisions §29, §30): arm the reminder in the worker's delivery wheel its lead ahead
        (1 to 10 minutes, from the task id), which delivers it at ``fire_at`` outside any workflow task;
        then, its grace after the instant (3 to 33 s, from the task id), deliver it from here (the
        wheel's delivery is found and only recorded) and mark it done. A change
        meanwhile returns to the loop, which saves it and arms again with the new version: the wheel's
        delivery of the old one writes nothing (the database fences it by version)."""
        task_id = self.state.task_id
        if not await self._sleep_until(fire_at - arm_lead(task_id)):
            return
        try:
            await workflow.execute_local_activity(
                ARM_REMINDER,
                self._delivery(offset, fire_at, armed=True),
                start_to_close_timeout=LOCAL_TIMEOUT,
                retry_policy=ARM_RETRY,
            )
        except (ActivityError, ApplicationError) as exc:
            workflow.logger.warning(
                "reminder %s not armed, delivered after its grace: %s",
                self.state.dedupe_key(offset),
                _cause(exc),
                extra=self._log_fields(),
            )
        if await self._sleep_until(fire_at + delivery_grace(task_id)):
            await self._deliver(offset, fire_at)

    def _delivery(self, offset: int, fire_at: datetime, *, armed: bool = False) -> DeliverReminderInput:
        state = self.state
        return DeliverReminderInput(
            task_id=state.task_id,
            organization_id=state.organization_id,
            dedupe_key=state.dedupe_key(offset),
            due_at=state.due_at,
            offset_seconds=offset,
            not_before=fire_at,
            version=state.version if armed else None,
            assignee_id=state.assignee_id if armed else None,
        )

    async def _deliver(self, offset: int, fire_at: datetime) -> None:
        """Deliver one reminder from the workflow. Version 2: a local activity in the wake-up's own
        workflow task waits on the clock until ``fire_at`` (the timer fired up to DELIVER_AHEAD before
        it), writes the row and publishes; a change that arrives meanwhile applies after it (decisions
        §12). Version 3: the same activity after the instant, the wheel's delivery usually done."""
        state = self.state
        delivery = self._delivery(offset, fire_at)
        try:
            await workflow.execute_local_activity(
                DELIVER_REMINDER,
                delivery,
                start_to_close_timeout=DELIVER_TIMEOUT,
                retry_policy=DELIVER_RETRY,
            )
        except (ActivityError, ApplicationError) as exc:
            # Only non-retryable failures get here (the task's row or organization is gone): nothing
            # will ever deliver this occurrence, so it counts as done rather than retried forever.
            workflow.logger.error(
                "reminder %s not delivered: %s",
                state.dedupe_key(offset),
                _cause(exc),
                extra=self._log_fields(),
            )
        if self.state.schedule_revision == state.schedule_revision:
            # No save needed: the notification row is the durable record of the delivery.
            done = (*self.state.done_offsets, offset)
            self.state = self.state.model_copy(update={"done_offsets": done})
