"""Task operations behind the routes: reads come from PostgreSQL, changes go through the task's workflow."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError

from core.auth import Principal
from core.errors import NotFound, Unavailable
from core.models import Task
from core.payloads import SYNC_UPDATE, TASK_WORKFLOW, TaskState, TaskWorkflowInput
from core.temporal import ASSIGNEE_ID, DUE_AT, ORGANIZATION_ID, TASK_STATUS, task_workflow_id
from web.resources import Resources
from web.tasks.schemas import TaskCreate

# How long a request waits for the worker to confirm a change before answering 503.
CONFIRM_TIMEOUT = timedelta(seconds=10)


def _search_attributes(state: TaskState) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(ORGANIZATION_ID, state.organization_id),
            SearchAttributePair(ASSIGNEE_ID, state.assignee_id),
            SearchAttributePair(TASK_STATUS, state.status),
            SearchAttributePair(DUE_AT, state.due_at),
        ]
    )


async def create_task(res: Resources, who: Principal, body: TaskCreate) -> TaskState:
    """Start the task's workflow and wait until it has written the row: the workflow is the only writer."""
    now = datetime.now(UTC)
    state = TaskState(
        task_id=uuid.uuid4(),
        organization_id=who.organization_id,
        assignee_id=body.assignee_id or who.user_id,
        created_by=who.user_id,
        title=body.title,
        notes=body.notes,
        due_at=body.due_at,
        created_at=now,
        updated_at=now,
    )
    start: WithStartWorkflowOperation[Any, TaskState] = WithStartWorkflowOperation(
        TASK_WORKFLOW,
        TaskWorkflowInput(state=state),
        id=task_workflow_id(state.task_id),
        task_queue=res.settings.temporal_task_queue,
        # A retried start attaches to the running workflow; a finished task's id is never reused.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=_search_attributes(state),
        result_type=TaskState,
    )
    try:
        async with asyncio.timeout(CONFIRM_TIMEOUT.total_seconds()):
            return await res.temporal.execute_update_with_start_workflow(
                SYNC_UPDATE, start_workflow_operation=start, result_type=TaskState
            )
    except TimeoutError as exc:
        raise Unavailable(
            "The task was accepted but no worker confirmed it in time; it will appear once a worker runs."
        ) from exc
    except RPCError as exc:
        raise Unavailable(f"Temporal is unavailable ({exc.status.name}); retry shortly.") from exc


async def get_task(res: Resources, who: Principal, task_id: uuid.UUID) -> Task:
    async with res.sessionmaker() as session:
        task = await session.scalar(
            select(Task).where(Task.id == task_id, Task.organization_id == who.organization_id)
        )
    if task is None:
        raise NotFound(f"No task {task_id} in your organization.")
    return task
