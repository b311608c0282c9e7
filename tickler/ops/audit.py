"""`tickler audit`: the tasks table against Temporal (docs/operations.md, "Audit and repair").

Two passes, each in pages, so that memory stays flat whatever the size of the tables:

1. the open tasks, by keyset, ``PAGE`` at a time; for each page one visibility query finds which have a
   running workflow (``WorkflowId IN (...)``), and gives their indexed ``DueAt``; one SQL query per page
   says which are overdue without a notification row;
2. the running task workflows, from visibility, ``PAGE`` at a time; one SQL query per page finds their rows.

Visibility lags its workflows by a moment, and a row may change while it is read: every candidate is
confirmed by one call about that task alone (describe, or the workflow's ``current`` query), at most
TICKLER_AUDIT_CONCURRENCY at a time, before it is reported. Only candidates cost a call each.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from core.maintenance import FINDING_KINDS, AuditSummary, FindingKind
from core.payloads import EARLIEST, STATE_QUERY, TASK_WORKFLOW, TaskState
from core.settings import Settings
from core.temporal import DUE_AT, ORGANIZATION_ID, task_workflow_id

T = TypeVar("T")

# Rows per keyset page, and workflow ids per visibility query (a query of 500 ids is about 22 KB).
PAGE = 500
# How long a workflow may run without its row before it counts: it saves the row right after its start.
ROW_GRACE = timedelta(minutes=1)
# A query that no worker answers in this long is reported as unanswered.
QUERY_TIMEOUT = timedelta(seconds=5)
# Search attributes hold the due time to the millisecond or better; a smaller difference is no finding.
DUE_TOLERANCE = timedelta(milliseconds=1)

Progress = Callable[[Any], None]


class Finding(BaseModel):
    """Something off about one task; at most one per task (core.maintenance.FindingKind's order)."""

    kind: FindingKind
    organization_id: str
    task_id: uuid.UUID
    workflow_id: str
    detail: str
    # The run the finding is about (a running one), if any.
    run_id: str | None = None
    row_status: str | None = None
    row_due_at: datetime | None = None
    row_version: int | None = None
    # The execution status of the workflow's latest run (RUNNING, TERMINATED, ...); None: it has none.
    workflow_status: str | None = None
    workflow_due_at: datetime | None = None
    workflow_version: int | None = None


def visibility_literal(value: str) -> str:
    """``value`` as a string literal of a visibility query: organization ids are the CRM's text."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def running_query(organization_id: str | None = None) -> str:
    """The visibility query of running task workflows (of one organization): the same in the Web UI."""
    query = f"WorkflowType='{TASK_WORKFLOW}' AND ExecutionStatus='Running'"
    if organization_id is not None:
        query += f" AND {ORGANIZATION_ID.name}={visibility_literal(organization_id)}"
    return query


def task_id_of(workflow_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(workflow_id.removeprefix("task-")) if workflow_id.startswith("task-") else None
    except ValueError:
        return None


# -- SQL ---------------------------------------------------------------------------------------------

# The last reminder of a task is its smallest offset; it fires at due_at minus that offset. It is overdue
# when that is past by more than the grace, no notification row has its due time and offset, and it
# cannot have been skipped on purpose: an early reminder (offset > 0) whose time had already passed when
# the schedule was set is skipped by the workflow (decisions §5), and the row's updated_at is when that
# was. A reminder older than the retention may have had its row purged (read, then deleted): not judged.
LAST_REMINDER = """
    CROSS JOIN LATERAL (
        SELECT coalesce(min(o), 0) AS offset_seconds FROM unnest(t.reminder_offsets) AS o
    ) AS last
    CROSS JOIN LATERAL (SELECT t.due_at - make_interval(secs => last.offset_seconds) AS at) AS fire
"""
OVERDUE = """(
    t.status = 'open'
    AND fire.at < :late_before
    AND fire.at >= :kept_since
    AND NOT (last.offset_seconds > 0 AND fire.at <= t.updated_at)
    AND NOT EXISTS (
        SELECT FROM notifications n
        WHERE n.task_id = t.id AND n.due_at = t.due_at
          AND coalesce((n.payload->>'offset_seconds')::int, 0) = last.offset_seconds
    )
)"""

_OPEN_COLUMNS = f"""
    SELECT t.id, t.organization_id, t.due_at, t.status, t.version, fire.at AS fire_at,
           {OVERDUE} AS overdue
    FROM tasks t {LAST_REMINDER}
    WHERE t.status = 'open'
"""
# Every organization: by id, the primary key. One organization: by (due_at, id), the API's index.
_OPEN_PAGE = text(_OPEN_COLUMNS + " AND t.id > :after_id ORDER BY t.id LIMIT :limit")
_OPEN_PAGE_OF_ORG = text(
    _OPEN_COLUMNS
    + " AND t.organization_id = :org AND (t.due_at, t.id) > (:after_due, :after_id)"
    + " ORDER BY t.due_at, t.id LIMIT :limit"
)
_ROWS = text(
    "SELECT id, organization_id, status, due_at, version FROM tasks WHERE id = ANY(:ids)"
).bindparams(bindparam("ids", type_=ARRAY(UUID(as_uuid=True))))


@dataclass(frozen=True)
class OpenTask:
    id: uuid.UUID
    organization_id: str
    due_at: datetime
    status: str
    version: int
    fire_at: datetime
    overdue: bool

    @property
    def workflow_id(self) -> str:
        return task_workflow_id(self.id)


@dataclass(frozen=True)
class RowState:
    organization_id: str
    status: str
    due_at: datetime
    version: int


def overdue_bounds(settings: Settings, now: datetime) -> dict[str, datetime]:
    """The bind values of OVERDUE at ``now``."""
    kept = settings.notification_retention_days
    return {
        "late_before": now - timedelta(seconds=settings.audit_overdue_after_seconds),
        "kept_since": now - timedelta(days=kept) if kept else EARLIEST,
    }


class Auditor:
    """Finds what is off between the tasks table and Temporal. ``sessionmaker`` runs as the maintenance
    role (tickler.ops.connections): it reads every organization's rows."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        temporal: Client,
        settings: Settings,
        *,
        row_grace: timedelta = ROW_GRACE,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.temporal = temporal
        self.settings = settings
        self.row_grace = row_grace
        self.calls = asyncio.Semaphore(settings.audit_concurrency)
        self.open_tasks = 0
        self.running_workflows = 0

    async def findings(
        self, organization_id: str | None = None, progress: Progress | None = None
    ) -> AsyncIterator[Finding]:
        """Every finding, page by page; ``progress`` is called after each page with the counts so far."""
        report = progress or (lambda _: None)
        async for page in self._open_task_pages(organization_id):
            self.open_tasks += len(page)
            for finding in await self._check_open_tasks(page):
                yield finding
            report({"open_tasks": self.open_tasks})
        async for executions in self._running_workflow_pages(organization_id):
            self.running_workflows += len(executions)
            for finding in await self._check_running_workflows(executions):
                yield finding
            report({"open_tasks": self.open_tasks, "running_workflows": self.running_workflows})

    # -- pass 1: open tasks ------------------------------------------------------------------------

    async def _open_task_pages(self, organization_id: str | None) -> AsyncIterator[list[OpenTask]]:
        after_id, after_due = uuid.UUID(int=0), EARLIEST
        while True:
            values: dict[str, Any] = {"limit": PAGE, "after_id": after_id}
            values |= overdue_bounds(self.settings, datetime.now(UTC))
            statement = _OPEN_PAGE
            if organization_id is not None:
                statement = _OPEN_PAGE_OF_ORG
                values |= {"org": organization_id, "after_due": after_due}
            # A short transaction per page: nothing is held while Temporal is asked about it.
            async with self.sessionmaker() as session:
                rows = (await session.execute(statement, values)).all()
            if not rows:
                return
            yield [OpenTask(*row) for row in rows]
            after_id, after_due = rows[-1].id, rows[-1].due_at

    async def _check_open_tasks(self, page: list[OpenTask]) -> list[Finding]:
        running = await self._running_among(task.workflow_id for task in page)
        missing = [task for task in page if task.workflow_id not in running]
        differing = [
            task
            for task in page
            if (execution := running.get(task.workflow_id)) is not None
            and _differs(execution.typed_search_attributes.get(DUE_AT), task.due_at)
        ]
        findings: dict[uuid.UUID, Finding] = {}
        confirmed = await self._each(missing, self._confirm_missing)
        confirmed += await self._each(
            differing, lambda task: self._confirm_due(task, running[task.workflow_id])
        )
        # The row as it is now: a task completed or changed meanwhile is no finding.
        rows = await self._rows(finding.task_id for finding in confirmed if finding is not None)
        for finding in confirmed:
            if finding is None:
                continue
            row = rows.get(finding.task_id)
            if row is None or row.status != "open":
                continue
            if finding.kind == "due_differs" and finding.workflow_due_at == row.due_at:
                continue
            findings[finding.task_id] = finding.model_copy(
                update={"row_due_at": row.due_at, "row_version": row.version}
            )
        for task in page:
            if task.overdue and task.id not in findings:
                execution = running.get(task.workflow_id)
                late = datetime.now(UTC) - task.fire_at
                findings[task.id] = Finding(
                    kind="overdue",
                    organization_id=task.organization_id,
                    task_id=task.id,
                    workflow_id=task.workflow_id,
                    run_id=execution.run_id if execution else None,
                    detail=(
                        f"its last reminder was due at {task.fire_at.isoformat()} "
                        f"({_span(late)} ago) and has no notification row"
                    ),
                    row_status=task.status,
                    row_due_at=task.due_at,
                    row_version=task.version,
                    workflow_status="RUNNING" if execution else None,
                )
        return list(findings.values())

    async def _running_among(self, workflow_ids: Iterable[str]) -> dict[str, WorkflowExecution]:
        ids = ",".join(visibility_literal(workflow_id) for workflow_id in workflow_ids)
        query = f"{running_query()} AND WorkflowId IN ({ids})"
        return {execution.id: execution async for execution in self.temporal.list_workflows(query)}

    async def _confirm_missing(self, task: OpenTask) -> Finding | None:
        """The latest run's status, if visibility did not list it because it is not running."""
        handle = self.temporal.get_workflow_handle(task.workflow_id)
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            status = None
        else:
            if description.status == WorkflowExecutionStatus.RUNNING:
                return None  # visibility had not caught up
            status = description.status.name if description.status else None
        why = f"its workflow is {status}" if status else "it has no workflow"
        return Finding(
            kind="open_without_workflow",
            organization_id=task.organization_id,
            task_id=task.id,
            workflow_id=task.workflow_id,
            detail=f"the task is open but {why}: no reminder of it will fire",
            row_status=task.status,
            workflow_status=status,
        )

    async def _confirm_due(self, task: OpenTask, execution: WorkflowExecution) -> Finding | None:
        """The workflow's own due time (its ``current`` query). A workflow that does not answer (no
        worker polls its queue) is no finding here: if it owes a reminder, it is ``overdue``."""
        handle = self.temporal.get_workflow_handle(task.workflow_id, run_id=execution.run_id)
        try:
            state = await handle.query(STATE_QUERY, result_type=TaskState, rpc_timeout=QUERY_TIMEOUT)
        except (RPCError, WorkflowQueryFailedError):
            return None
        if state.status != "open" or state.due_at == task.due_at:
            return None
        return Finding(
            kind="due_differs",
            organization_id=task.organization_id,
            task_id=task.id,
            workflow_id=task.workflow_id,
            run_id=execution.run_id,
            detail=f"the row is due at {task.due_at.isoformat()}, the workflow at {state.due_at.isoformat()}",
            row_status=task.status,
            workflow_status="RUNNING",
            workflow_due_at=state.due_at,
            workflow_version=state.version,
        )

    # -- pass 2: running workflows ----------------------------------------------------------------

    async def _running_workflow_pages(
        self, organization_id: str | None
    ) -> AsyncIterator[list[WorkflowExecution]]:
        page: list[WorkflowExecution] = []
        async for execution in self.temporal.list_workflows(running_query(organization_id), page_size=PAGE):
            page.append(execution)
            if len(page) == PAGE:
                yield page
                page = []
        if page:
            yield page

    async def _check_running_workflows(self, executions: list[WorkflowExecution]) -> list[Finding]:
        by_task = {
            task_id: execution
            for execution in executions
            if (task_id := task_id_of(execution.id)) is not None
        }
        rows = await self._rows(by_task)
        now = datetime.now(UTC)
        started_before = now - self.row_grace
        candidates: list[tuple[uuid.UUID, WorkflowExecution, RowState | None]] = []
        for task_id, execution in by_task.items():
            row = rows.get(task_id)
            if row is None and execution.start_time < started_before:
                candidates.append((task_id, execution, None))
            elif row is not None and row.status != "open":
                candidates.append((task_id, execution, row))

        async def still_running(candidate: tuple[uuid.UUID, WorkflowExecution, RowState | None]) -> bool:
            handle = self.temporal.get_workflow_handle(candidate[1].id, run_id=candidate[1].run_id)
            try:
                if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                    return False
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return False
                raise
            if candidate[2] is None:
                return True
            # A task done or cancelled keeps its workflow running through its undo window: it waits for
            # a reopen, and closes by itself after it. Unanswered (no worker), it is a finding still.
            try:
                state = await handle.query(STATE_QUERY, result_type=TaskState, rpc_timeout=QUERY_TIMEOUT)
            except (RPCError, WorkflowQueryFailedError):
                return True
            return not (
                state.status != "open" and state.reopen_until is not None and state.reopen_until > now
            )

        running = await self._each(candidates, still_running)
        # The rows again, after the describes: a row saved meanwhile (a new task's first save) is fine.
        rows_now = await self._rows(task_id for task_id, _, row in candidates if row is None)
        findings = []
        for (task_id, execution, row), is_running in zip(candidates, running, strict=True):
            organization = execution.typed_search_attributes.get(ORGANIZATION_ID) or ""
            common: dict[str, Any] = {
                "organization_id": organization,
                "task_id": task_id,
                "workflow_id": execution.id,
                "run_id": execution.run_id,
                "workflow_status": "RUNNING",
                "workflow_due_at": execution.typed_search_attributes.get(DUE_AT),
            }
            if not is_running:
                continue
            if row is None:
                if task_id in rows_now:
                    continue
                findings.append(
                    Finding(
                        kind="workflow_without_row",
                        detail=f"its workflow runs since {execution.start_time.isoformat()}; no row",
                        **common,
                    )
                )
            else:
                findings.append(
                    Finding(
                        kind="workflow_for_closed_task",
                        detail=f"the task is {row.status} but its workflow still runs",
                        row_status=row.status,
                        row_due_at=row.due_at,
                        row_version=row.version,
                        **common | {"organization_id": row.organization_id},
                    )
                )
        return findings

    # -- shared ------------------------------------------------------------------------------------

    async def _rows(self, task_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, RowState]:
        ids = list(task_ids)
        if not ids:
            return {}
        async with self.sessionmaker() as session:
            rows = (await session.execute(_ROWS, {"ids": ids})).all()
        return {row.id: RowState(row.organization_id, row.status, row.due_at, row.version) for row in rows}

    async def _each(self, items: list[Any], call: Callable[[Any], Awaitable[T]]) -> list[T]:
        """``call`` on every item, at most TICKLER_AUDIT_CONCURRENCY at a time across this audit."""

        async def bounded(item: Any) -> T:
            async with self.calls:
                return await call(item)

        return list(await asyncio.gather(*(bounded(item) for item in items)))


def _differs(indexed: datetime | None, due_at: datetime) -> bool:
    return indexed is None or abs(indexed - due_at) > DUE_TOLERANCE


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def summary_of(counts: dict[FindingKind, int], auditor: Auditor, started: float) -> AuditSummary:
    return AuditSummary(
        findings={kind: counts[kind] for kind in FINDING_KINDS if counts.get(kind)},
        open_tasks=auditor.open_tasks,
        running_workflows=auditor.running_workflows,
        seconds=round(time.monotonic() - started, 3),
    )
