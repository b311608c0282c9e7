"""One workflow per task: it sleeps on a durable timer until the reminder is due, then delivers it.

The workflow is the only writer of its ``tasks`` row (see docs/decisions.md): every change goes into
the workflow first and reaches PostgreSQL through the ``save_task`` local activity.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from core.payloads import (
        DELIVER_REMINDER,
        SAVE_TASK,
        SYNC_UPDATE,
        TASK_WORKFLOW,
        DeliverReminderInput,
        TaskState,
        TaskWorkflowInput,
    )
    from core.temporal import DUE_AT, TASK_STATUS

SAVE_TIMEOUT = timedelta(seconds=10)
DELIVER_TIMEOUT = timedelta(seconds=30)
DELIVER_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn(name=TASK_WORKFLOW)
class TaskWorkflow:
    @workflow.init
    def __init__(self, input: TaskWorkflowInput) -> None:
        self.state = input.state
        self.saved_version = 0
        # Set by every change; the main loop's waits wake up on it.
        self.changed = False

    @workflow.run
    async def run(self, input: TaskWorkflowInput) -> TaskState:
        while True:
            if self.saved_version < self.state.version:
                await self._save()
            elif self.state.status != "open":
                break
            elif self.state.reminder_pending:
                if await self._sleep_until_due():
                    await self._deliver()
            else:
                self.changed = False
                await workflow.wait_condition(lambda: self.changed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    @workflow.query
    def current(self) -> TaskState:
        return self.state

    @workflow.update(name=SYNC_UPDATE)
    async def sync(self) -> TaskState:
        """Return the state once the row in PostgreSQL has caught up with it (used right after a start)."""
        await workflow.wait_condition(lambda: self.saved_version >= self.state.version)
        return self.state

    async def _sleep_until_due(self) -> bool:
        """Wait for due_at; False if a change came first (the loop then looks again)."""
        delay = (self.state.due_at - workflow.now()).total_seconds()
        if delay <= 0:
            return True
        self.changed = False
        try:
            await workflow.wait_condition(lambda: self.changed, timeout=delay)
        except TimeoutError:
            return True
        return False

    async def _save(self) -> None:
        version = self.state.version
        await workflow.execute_local_activity(SAVE_TASK, self.state, start_to_close_timeout=SAVE_TIMEOUT)
        self.saved_version = max(self.saved_version, version)

    async def _deliver(self) -> None:
        state = self.state
        try:
            await workflow.execute_activity(
                DELIVER_REMINDER,
                DeliverReminderInput(
                    task_id=state.task_id,
                    organization_id=state.organization_id,
                    dedupe_key=state.dedupe_key,
                    due_at=state.due_at,
                ),
                start_to_close_timeout=DELIVER_TIMEOUT,
                retry_policy=DELIVER_RETRY,
            )
        except ActivityError as exc:
            # Only non-retryable failures get here (the task's row or organization is gone): nothing
            # will ever deliver this occurrence, so mark it done rather than retry it forever.
            workflow.logger.error("reminder %s not delivered: %s", state.dedupe_key, exc.cause)
        # Recording delivery needs no save: the notification row itself is the durable record.
        revision = max(self.state.delivered_revision, state.schedule_revision)
        self.state = self.state.model_copy(update={"delivered_revision": revision})

    def _change(self, **fields: object) -> None:
        """Apply a change: a new version for the row, fresh search attributes, and wake the loop."""
        old = self.state
        self.state = old.model_copy(
            update={**fields, "version": old.version + 1, "updated_at": workflow.now()}
        )
        if self.state.due_at != old.due_at:
            self.state = self.state.model_copy(update={"schedule_revision": old.schedule_revision + 1})
        workflow.upsert_search_attributes(
            [TASK_STATUS.value_set(self.state.status), DUE_AT.value_set(self.state.due_at)]
        )
        self.changed = True
