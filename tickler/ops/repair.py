"""`tickler repair`: one action per finding of the audit, each safe to repeat (docs/decisions.md §23).

The workflow stays the only writer of its row: a repair never writes a task row itself. It starts the
task's workflow again from the row (re-arm), or asks the running workflow to close or to save its row
again through the ``change`` update, as the REST API does; only a workflow that does not answer is
terminated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from core.logs import task_fields
from core.models import Notification, Task, state_of
from core.payloads import (
    CHANGE_CONFLICTS,
    CHANGE_UPDATE,
    SYNC_UPDATE,
    TASK_WORKFLOW,
    WORKFLOW_VERSION,
    TaskChange,
    TaskState,
    TaskWorkflowInput,
)
from core.settings import Settings
from core.temporal import task_search_attributes
from tickler.ops.audit import Finding

log = logging.getLogger(__name__)

# What a call that no worker answers in time raises: the SDK turns the timeout's cancellation of an
# Update into its own error.
UNANSWERED = (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError)


class Outcome(BaseModel):
    finding: Finding
    # What was done (or, in a dry run, would be).
    action: str
    repaired: bool = False
    error: str | None = None


class RepairFailed(Exception):
    pass


def rearm_state(task: Task, delivered: Iterable[tuple[str, datetime, int]], now: datetime) -> TaskState:
    """The state a task's workflow starts again with, from its row and its notification rows
    (``delivered``: dedupe key, due time, offset of each).

    A fresh ``schedule_revision`` (above every revision its notifications used), so that no reminder's
    key collides with an older occurrence's; the reminders of the row's due time that have a row count as
    done, and so do early ones whose time has passed, as at any arming (decisions §5). The last reminder
    stays pending even if its time has passed: it is the one an overdue task still owes. What only the
    workflow kept is lost: the series' first due time (a recurring series starts again at due_at) and the
    ids of recent changes. The version is above the row's, so that its first save applies.
    """
    state = state_of(task)
    revisions, done = [0], set()
    for key, due_at, offset in delivered:
        _, _, rest = key.partition("/")
        revision, _, _ = rest.partition("/")
        if revision.isdigit():
            revisions.append(int(revision))
        if due_at == task.due_at:
            done.add(offset)
    last = min(state.reminder_offsets)
    passed = {
        offset
        for offset in state.reminder_offsets
        if offset != last and state.due_at - timedelta(seconds=offset) <= now
    }
    return state.model_copy(
        update={
            "schedule_revision": max(revisions) + 1,
            "done_offsets": tuple(sorted((done | passed) & set(state.reminder_offsets))),
            "version": task.version + 1,
            "updated_at": now,
        }
    )


class Repairer:
    """Repairs one finding at a time; ``sessionmaker`` runs as the maintenance role (reads only)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], temporal: Client, settings: Settings
    ) -> None:
        self.sessionmaker = sessionmaker
        self.temporal = temporal
        self.settings = settings
        self.timeout = settings.change_timeout_seconds

    def plan(self, finding: Finding) -> str:
        """What :meth:`repair` does about ``finding``, in words (``--dry-run`` prints it)."""
        match finding.kind:
            case "open_without_workflow" if finding.workflow_status == "COMPLETED":
                return "save the row from the result of its last run, which closed the task"
            case "open_without_workflow":
                return "re-arm: start its workflow again from the row"
            case "overdue" if finding.run_id:
                return "terminate its workflow and re-arm it from the row: the reminder fires at once"
            case "overdue":
                return "re-arm: start its workflow again from the row; the reminder fires at once"
            case "workflow_for_closed_task":
                verb = "complete" if finding.row_status == "done" else "cancel"
                return f"{verb} its workflow (terminate it if no worker answers)"
            case "workflow_without_row":
                return "have its workflow save the row again"
            case "due_differs" if self._row_wins(finding):
                return f"reschedule its workflow to the row's due time ({finding.row_due_at})"
            case "due_differs":
                return "have its workflow save the row again: its due time wins"
        raise AssertionError(finding.kind)

    async def repair(self, finding: Finding) -> Outcome:
        action = self.plan(finding)
        fields = task_fields(finding.task_id, finding.workflow_id, finding.organization_id)
        try:
            async with asyncio.timeout(self.timeout * 3):
                done = await self._repair(finding)
        except Exception as exc:
            # Reported, and the other repairs go on; the next audit finds it again.
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("repair of %s failed: %s", finding.kind, why, extra=fields)
            return Outcome(finding=finding, action=action, error=why)
        log.info("repaired %s: %s", finding.kind, done, extra=fields)
        return Outcome(finding=finding, action=done, repaired=True)

    async def _repair(self, finding: Finding) -> str:
        match finding.kind:
            case "open_without_workflow" if finding.workflow_status == "COMPLETED":
                return await self._save_last_result(finding)
            case "open_without_workflow":
                return await self._rearm(finding)
            case "overdue":
                if finding.run_id:
                    await self._terminate(finding, "overdue, no notification: re-armed by tickler repair")
                return await self._rearm(finding)
            case "workflow_for_closed_task":
                return await self._close(finding)
            case "workflow_without_row":
                return await self._change(finding, TaskChange(action="edit"), "its workflow saved its row")
            case "due_differs" if self._row_wins(finding):
                assert finding.row_due_at is not None
                change = TaskChange(action="reschedule", due_at=finding.row_due_at)
                return await self._change(finding, change, "its workflow was moved to the row's due time")
            case "due_differs":
                return await self._change(
                    finding, TaskChange(action="edit"), "its workflow saved the row again, with its due time"
                )
        raise AssertionError(finding.kind)

    @staticmethod
    def _row_wins(finding: Finding) -> bool:
        """The higher version is the later state (each save carries it): the row is ahead of the workflow
        only when Temporal lost history (restored from an older backup than PostgreSQL)."""
        return (
            finding.workflow_version is not None
            and finding.row_version is not None
            and finding.row_version > finding.workflow_version
        )

    async def _rearm(self, finding: Finding) -> str:
        async with self.sessionmaker() as session:
            task = await session.scalar(select(Task).where(Task.id == finding.task_id))
            delivered = (
                await session.execute(
                    select(
                        Notification.dedupe_key,
                        Notification.due_at,
                        Notification.payload["offset_seconds"].as_integer(),
                    ).where(Notification.task_id == finding.task_id)
                )
            ).all()
        if task is None or task.status != "open":
            return f"nothing: the task is {task.status if task else 'gone'} now"
        sent = ((key, due, offset or 0) for key, due, offset in delivered)
        state = rearm_state(task, sent, datetime.now(UTC))
        start: WithStartWorkflowOperation[Any, TaskState] = WithStartWorkflowOperation(
            TASK_WORKFLOW,
            TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
            # A closed run's id may be used again only if that run did not complete (terminated, failed,
            # timed out): a task that completed is never reopened.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            **self._start_options(finding, state),
        )
        saved = await self._in_time(
            self.temporal.execute_update_with_start_workflow(
                SYNC_UPDATE, start_workflow_operation=start, result_type=TaskState
            )
        )
        return (
            f"re-armed from its row: revision {saved.schedule_revision}, due {saved.due_at.isoformat()}, "
            f"{len(saved.pending_reminders())} reminder(s) pending"
        )

    async def _save_last_result(self, finding: Finding) -> str:
        """The last run completed (the task is done or cancelled) but the row says open: PostgreSQL is
        behind Temporal. A run started with that final state saves it and ends at once."""
        last: TaskState = await self._in_time(
            self.temporal.get_workflow_handle(finding.workflow_id, result_type=TaskState).result()
        )
        state = last.model_copy(
            update={
                "version": max(last.version, finding.row_version or 0) + 1,
                "updated_at": datetime.now(UTC),
            }
        )
        handle = await self.temporal.start_workflow(
            TASK_WORKFLOW,
            TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
            # The run ends as soon as it has saved: it cannot arm anything.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            **self._start_options(finding, state),
        )
        saved = await self._in_time(handle.result())
        return f"the row was saved {saved.status} from its workflow's last result"

    def _start_options(self, finding: Finding, state: TaskState) -> dict[str, Any]:
        """How both repairs that start a task's workflow again start it, but for the reuse of its id: a
        run that runs already (started meanwhile) is joined, not doubled."""
        return {
            "id": finding.workflow_id,
            "task_queue": self.settings.temporal_task_queue,
            "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
            "search_attributes": task_search_attributes(state),
            "result_type": TaskState,
        }

    async def _close(self, finding: Finding) -> str:
        action = "complete" if finding.row_status == "done" else "cancel"
        try:
            return await self._change(
                finding, TaskChange(action=action, undo_seconds=0), f"its workflow was {action}d"
            )
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return "nothing: its workflow has closed"
        except UNANSWERED as exc:
            await self._terminate(finding, f"the task is {finding.row_status}: closed by tickler repair")
            return f"its workflow was terminated (no worker answered the {action}: {type(exc).__name__})"

    async def _change(self, finding: Finding, change: TaskChange, done: str) -> str:
        handle = self.temporal.get_workflow_handle(finding.workflow_id)
        try:
            await self._in_time(handle.execute_update(CHANGE_UPDATE, change, result_type=TaskState))
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.type == CHANGE_CONFLICTS:
                return f"nothing: {cause.message}"
            raise RepairFailed(f"the workflow refused the change: {cause}") from exc
        return done

    async def _terminate(self, finding: Finding, reason: str) -> None:
        handle = self.temporal.get_workflow_handle(finding.workflow_id, run_id=finding.run_id)
        try:
            await handle.terminate(reason=reason)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # closed already
                raise

    async def _in_time(self, call: Awaitable[Any]) -> Any:
        """A call that needs a worker to answer, bounded by TICKLER_CHANGE_TIMEOUT_SECONDS."""
        async with asyncio.timeout(self.timeout):
            return await call


async def repair_all(
    findings: AsyncIterator[Finding],
    repairer: Repairer,
    concurrency: int,
    on_outcome: Callable[[Outcome], None],
    *,
    dry_run: bool = False,
) -> None:
    """Repair each finding as the audit yields it, ``concurrency`` at a time; ``on_outcome`` gets each."""
    if dry_run:
        async for finding in findings:
            on_outcome(Outcome(finding=finding, action=repairer.plan(finding)))
        return
    slots = asyncio.Semaphore(concurrency)

    async def one(finding: Finding) -> None:
        try:
            on_outcome(await repairer.repair(finding))
        finally:
            slots.release()

    async with asyncio.TaskGroup() as group:
        async for finding in findings:
            await slots.acquire()
            group.create_task(one(finding))
