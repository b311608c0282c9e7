"""Task operations behind the routes: reads come from PostgreSQL, changes go through the task's workflow.

The workflow is the only writer of the task's row (docs/decisions.md): a create starts it with
update-with-start and a change is an Update; both return once the workflow has saved the row, so the
answer and a following GET agree.

What a timeout leaves behind differs. The start of a create is durable: its workflow writes the row once
a worker runs. An Update no worker has accepted is held in the Temporal server's memory only: it may
apply when a worker comes, or never (a server restart drops it). An Idempotency-Key makes a retry safe
for both: a create's key names the task, a change's key becomes its ``request_id``, which the workflow
applies once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.auth import Principal
from core.db import tenant_transaction
from core.errors import Conflict, NotFound, Unavailable, Unprocessable
from core.logs import task_fields
from core.models import Task, state_of
from core.payloads import (
    CHANGE_CONFLICTS,
    CHANGE_INVALID,
    CHANGE_UPDATE,
    SYNC_UPDATE,
    TASK_WORKFLOW,
    WORKFLOW_VERSION,
    Recurrence,
    TaskChange,
    TaskState,
    TaskWorkflowInput,
    idempotent_task_id,
)
from core.recurrence import RuleUnusable, RunnerBusy
from core.temporal import task_search_attributes, task_workflow_id
from web.resources import Resources
from web.tasks.schemas import TaskCreate, TaskQuery

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _confirmed(
    res: Resources, call: Awaitable[T], *, unconfirmed: str, task: dict[str, str] | None = None
) -> T:
    """Wait for the workflow's answer; 503 if Temporal or the worker does not give it in time, saying
    ``unconfirmed``: what became of the request, which only the caller knows. ``task``: the log fields
    of the task it is about."""
    try:
        async with asyncio.timeout(res.settings.change_timeout_seconds):
            return await call
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        # The SDK turns the timeout's cancellation into its own error.
        log.warning("no worker confirmed within %s s (503)", res.settings.change_timeout_seconds, extra=task)
        raise Unavailable(f"No worker confirmed it in time. {unconfirmed}") from exc
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: a change to a closed task (409)
            log.warning("Temporal failed the call with %s (503)", exc.status.name, extra=task)
        raise Unavailable(f"Temporal is unavailable ({exc.status.name}); retry shortly.") from exc


def _settle_start(start: WithStartWorkflowOperation[Any, TaskState]) -> None:
    """Take the start's outcome that nobody will await: cut off by the 503's timeout, the SDK fails the
    operation's handle future with the cancellation, and asyncio would log "Future exception was never
    retrieved" with a traceback for every create a busy worker did not confirm in time (178 in one
    10,000-task bench run). The SDK offers the future only through a coroutine that raises that
    cancellation into the caller, so its private attribute is read, if it is still there."""
    future = getattr(start, "_workflow_handle", None)
    if isinstance(future, asyncio.Future):
        future.add_done_callback(_consume)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _create_unconfirmed(idempotency_key: str | None) -> str:
    if idempotency_key is not None:
        return (
            "If its start reached Temporal, the task is created once a worker runs; retry with the same "
            "Idempotency-Key to get it without creating a second one."
        )
    return (
        "If its start reached Temporal, the task is created once a worker runs, and a retry would create "
        "a second one: send an Idempotency-Key to make retries safe."
    )


def _change_unconfirmed(idempotency_key: str | None) -> str:
    # An Update no worker accepted is held in the server's memory only: it may apply later, or never.
    if idempotency_key is not None:
        return (
            "The change may or may not apply; retry with the same Idempotency-Key and body: it applies "
            "once however often it is sent."
        )
    return (
        "The change may or may not apply; read the task before you retry it, or send an Idempotency-Key "
        "so that a retry applies once."
    )


def _change_request_id(who: Principal, task_id: uuid.UUID, change: TaskChange, idempotency_key: str) -> str:
    """The id the workflow deduplicates a change by (TaskChange.request_id), from the caller's key.

    It covers the change itself too: the same key sent with another change is another request, never
    answered with the outcome of the first one.
    """
    material = "\0".join(
        (who.organization_id, who.user_id, idempotency_key, str(task_id), change.model_dump_json())
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _request_hash(body: TaskCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_request(state_hash: str | None, request_hash: str | None) -> None:
    if request_hash is not None and state_hash != request_hash:
        # The key names a task (idempotent_task_id) that exists with other contents: a clash with that
        # task's state, as when its workflow has closed (create_task), not an invalid request.
        raise Conflict("This Idempotency-Key was used with a different body; use a new key.")


async def _check_recurrence(res: Resources, recurrence: Recurrence, timezone: str, due_at: datetime) -> None:
    """Judge the rule by running it from ``due_at`` (core/recurrence.py), before the workflow sees it."""
    try:
        await res.rules.check(recurrence, timezone, due_at)
    except RuleUnusable as exc:
        raise Unprocessable(
            f"The request is invalid. recurrence: {exc}.",
            errors=[{"field": "recurrence", "message": str(exc)}],
        ) from None
    except RunnerBusy as exc:
        raise Unavailable(f"Recurrence rules cannot be checked right now ({exc}); retry shortly.") from None


async def create_task(
    res: Resources, who: Principal, body: TaskCreate, idempotency_key: str | None = None
) -> tuple[TaskState, bool]:
    """Start the task's workflow and wait until it has written the row. Returns (task, created now)."""
    now = datetime.now(UTC)
    request_hash = None
    task_id = uuid.uuid4()
    if idempotency_key is not None:
        request_hash = _request_hash(body)
        task_id = idempotent_task_id(who.organization_id, who.user_id, idempotency_key)
        existing = await _find(res, who, task_id)
        if existing is not None:
            _same_request(existing.request_hash, request_hash)
            return state_of(existing), False
    if body.recurrence is not None:
        await _check_recurrence(res, body.recurrence, body.timezone, body.due_at)
    state = TaskState(
        task_id=task_id,
        organization_id=who.organization_id,
        assignee_id=body.assignee_id or who.user_id,
        created_by=who.user_id,
        title=body.title,
        notes=body.notes,
        due_at=body.due_at,
        reminder_offsets=tuple(body.reminder_offsets),
        recurrence=body.recurrence,
        timezone=body.timezone,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    ).skipping_passed_reminders(now)
    fields = task_fields(state.task_id, task_workflow_id(state.task_id), state.organization_id)
    start: WithStartWorkflowOperation[Any, TaskState] = WithStartWorkflowOperation(
        TASK_WORKFLOW,
        TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
        id=fields["workflow_id"],
        task_queue=res.settings.temporal_task_queue,
        # A retried or concurrent start attaches to the running workflow; a closed task's id is never
        # reused, so one task id can never have two workflows.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=task_search_attributes(state),
        result_type=TaskState,
    )
    try:
        saved = await _confirmed(
            res,
            res.temporal.execute_update_with_start_workflow(
                SYNC_UPDATE, start_workflow_operation=start, result_type=TaskState
            ),
            unconfirmed=_create_unconfirmed(idempotency_key),
            task=fields,
        )
    except Unavailable:
        _settle_start(start)
        raise
    except WorkflowAlreadyStartedError:
        # Closed already (completed or cancelled) after an earlier request with this key.
        row = await _find(res, who, task_id)
        if row is None:
            raise Conflict("This task's workflow has closed; use a new Idempotency-Key.") from None
        _same_request(row.request_hash, request_hash)
        return state_of(row), False
    _same_request(saved.request_hash, request_hash)
    created = saved.created_at == now
    if created:
        log.info("task created", extra=fields)
    return saved, created


async def change_task(
    res: Resources,
    who: Principal,
    task_id: uuid.UUID,
    change: TaskChange,
    idempotency_key: str | None = None,
) -> TaskState:
    """Send a change to the task's workflow; it answers once the row shows it. The change names the
    caller's organization, so that the workflow refuses it for a task of another one, as it does a
    signal's (the read below answers 404 for such a task first). With an Idempotency-Key, a retry of
    the change applies once and answers the task."""
    change = change.model_copy(update={"organization_id": who.organization_id})
    if idempotency_key is not None:
        request_id = _change_request_id(who, task_id, change, idempotency_key)
        change = change.model_copy(update={"request_id": request_id})
    row = await get_task(res, who, task_id)
    if change.recurrence is not None:
        await _check_recurrence(
            res, change.recurrence, change.timezone or row.timezone, change.due_at or row.due_at
        )
    workflow_id = task_workflow_id(task_id)
    fields = task_fields(task_id, workflow_id, who.organization_id)
    handle = res.temporal.get_workflow_handle(workflow_id)
    try:
        saved = await _confirmed(
            res,
            # The request id doubles as the Update's id. Temporal answers a retry with the first
            # attempt's outcome, while it runs and after, the workflow closed by it included (a retried
            # complete or cancel); the workflow itself (TaskChange.request_id) catches a retry that
            # reaches a later run, after a continue-as-new.
            handle.execute_update(CHANGE_UPDATE, change, id=change.request_id, result_type=TaskState),
            unconfirmed=_change_unconfirmed(idempotency_key),
            task=fields,
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type == CHANGE_CONFLICTS:
            raise Conflict(f"The task cannot change: {cause.message}.") from exc
        if isinstance(cause, ApplicationError) and cause.type == CHANGE_INVALID:
            raise Unprocessable(f"The change is invalid: {cause.message}.") from exc
        raise
    except Unavailable as exc:
        # An update to a closed workflow: the task is done or cancelled.
        if isinstance(exc.__cause__, RPCError) and exc.__cause__.status == RPCStatusCode.NOT_FOUND:
            if change.action == "reopen":
                raise Conflict(
                    f"The task is {row.status} and its undo window has passed: it cannot be reopened."
                ) from exc
            raise Conflict(f"The task is {row.status}; it cannot change any more.") from exc
        raise
    log.info("task changed: %s", change.action, extra=fields)
    return saved


async def _find(res: Resources, who: Principal, task_id: uuid.UUID) -> Task | None:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        task: Task | None = await session.scalar(
            select(Task).where(Task.id == task_id, Task.organization_id == who.organization_id)
        )
    return task


async def get_task(res: Resources, who: Principal, task_id: uuid.UUID) -> Task:
    task = await _find(res, who, task_id)
    if task is None:
        raise NotFound(f"No task {task_id} in your organization.")
    return task


# -- the list: keyset pagination in (due_at, id) order, stable under inserts ----------------------------


# A cursor names the last row of a page: its due time in microseconds since 1970 (UTC) and its id. The
# schema states the form (TaskQuery.cursor), and any string of that form is one this reads: at most 16
# digits are 1970 to 2286, a time any query can take.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def encode_cursor(task: Task) -> str:
    return f"{(task.due_at - EPOCH) // MICROSECOND}-{task.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    micros, _, task_id = cursor.partition("-")
    try:
        return EPOCH + int(micros) * MICROSECOND, uuid.UUID(hex=task_id)
    except (ValueError, OverflowError) as exc:  # the schema's pattern lets none through: a second guard
        raise Unprocessable("`cursor` is not a cursor this API gave out; start again without it.") from exc


def list_query(who: Principal, query: TaskQuery) -> Select[Task]:
    stmt = select(Task).where(Task.organization_id == who.organization_id)
    if query.status is not None:
        stmt = stmt.where(Task.status == query.status)
    if query.assignee_id is not None:
        stmt = stmt.where(Task.assignee_id == query.assignee_id)
    if query.due_before is not None:
        stmt = stmt.where(Task.due_at < query.due_before)
    if query.due_after is not None:
        stmt = stmt.where(Task.due_at >= query.due_after)
    if query.cursor is not None:
        due, task_id = decode_cursor(query.cursor)
        stmt = stmt.where(or_(Task.due_at > due, and_(Task.due_at == due, Task.id > task_id)))
    return stmt.order_by(Task.due_at, Task.id).limit(query.limit + 1)


async def list_tasks(res: Resources, who: Principal, query: TaskQuery) -> tuple[list[Task], str | None]:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        rows = list((await session.scalars(list_query(who, query))).all())
    page = rows[: query.limit]
    return page, encode_cursor(page[-1]) if len(rows) > query.limit else None
