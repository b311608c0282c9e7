"""REST routes of tasks."""

from __future__ import annotations

import uuid

from quart import Blueprint
from quart_schema import validate_request, validate_response

from web.auth import authenticated, principal
from web.resources import resources
from web.tasks import service
from web.tasks.schemas import TaskCreate, TaskOut

blueprint = Blueprint("tasks", __name__, url_prefix="/v1/tasks")


@blueprint.post("")
@authenticated
@validate_request(TaskCreate)
@validate_response(TaskOut, 201)
async def create_task(data: TaskCreate) -> tuple[TaskOut, int]:
    """Create a task; its reminder fires at `due_at`.

    Answers once the task is stored and its timer armed.
    """
    state = await service.create_task(resources(), principal(), data)
    return TaskOut.from_state(state), 201


@blueprint.get("/<uuid:task_id>")
@authenticated
@validate_response(TaskOut)
async def get_task(task_id: uuid.UUID) -> TaskOut:
    """One task of your organization."""
    task = await service.get_task(resources(), principal(), task_id)
    return TaskOut.model_validate(task, from_attributes=True)
