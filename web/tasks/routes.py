"""REST routes of tasks. Every route is scoped to the caller's organization."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from quart import Blueprint, Response
from quart_schema import validate_headers, validate_querystring, validate_request, validate_response

from core.models import state_of
from core.payloads import ClearableField, TaskChange
from web.auth import authenticated, principal
from web.problems import Header, problems, responds
from web.resources import resources
from web.tasks import service
from web.tasks.schemas import SnoozeRequest, TaskCreate, TaskOut, TaskPage, TaskQuery, TaskUpdate

blueprint = Blueprint("tasks", __name__, url_prefix="/v1/tasks")

IDEMPOTENT_REPLAYED = Header(
    "`true` when this answers a retry with the same Idempotency-Key: nothing new was created.",
    {"type": "string", "enum": ["true"]},
)


IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class CreateHeaders(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    idempotency_key: IdempotencyKey | None = Field(
        None,
        alias="Idempotency-Key",
        description="Retrying with the same key and body returns the same task and creates nothing new.",
    )


class ChangeHeaders(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    idempotency_key: IdempotencyKey | None = Field(
        None,
        alias="Idempotency-Key",
        description=(
            "Retrying with the same key and body applies the change once and answers the task; the same "
            "key with another body is another change. Use a new key for each change you mean."
        ),
    )


@blueprint.post("")
@problems(400, 401, 409, 413, 415, 422, 429, 503)
@responds(201, headers={"Idempotent-Replayed": IDEMPOTENT_REPLAYED})
@authenticated
@validate_headers(CreateHeaders)
@validate_request(TaskCreate)
@validate_response(TaskOut, 201)
async def create_task(data: TaskCreate, headers: CreateHeaders) -> tuple[TaskOut, int, dict[str, str]]:
    """Create a task; its reminders fire at `due_at` minus each offset.

    Answers once the task is stored and its timer armed. With an `Idempotency-Key`, a retry returns the
    same task (header `Idempotent-Replayed: true`); the same key with another body answers 409.
    """
    state, created = await service.create_task(resources(), principal(), data, headers.idempotency_key)
    return TaskOut.from_state(state), 201, {} if created else {"Idempotent-Replayed": "true"}


@blueprint.get("")
@problems(401, 422, 429, 503)
@authenticated
@validate_querystring(TaskQuery)
@validate_response(TaskPage)
async def list_tasks(query_args: TaskQuery) -> TaskPage:
    """Tasks of your organization, soonest due first, a page at a time."""
    rows, cursor = await service.list_tasks(resources(), principal(), query_args)
    return TaskPage(items=[TaskOut.from_state(state_of(row)) for row in rows], next_cursor=cursor)


@blueprint.get("/<uuid:task_id>")
@problems(401, 404, 429, 503)
@authenticated
@validate_response(TaskOut)
async def get_task(task_id: uuid.UUID) -> TaskOut:
    """One task of your organization."""
    task = await service.get_task(resources(), principal(), task_id)
    return TaskOut.from_state(state_of(task))


@blueprint.patch("/<uuid:task_id>")
@problems(400, 401, 404, 409, 413, 415, 422, 429, 503)
@authenticated
@validate_headers(ChangeHeaders)
@validate_request(TaskUpdate)
@validate_response(TaskOut)
async def update_task(task_id: uuid.UUID, data: TaskUpdate, headers: ChangeHeaders) -> TaskOut:
    """Change a task; a new `due_at` reschedules every reminder. 409 if the task is done or cancelled.

    With an `Idempotency-Key`, a retry applies the change once and answers the task.
    """
    # `null` in the body empties the field.
    cleared: tuple[ClearableField, ...] = tuple(
        name
        for name in ("notes", "recurrence")
        if name in data.model_fields_set and getattr(data, name) is None
    )
    change = TaskChange(
        action="edit",
        title=data.title,
        notes=data.notes,
        due_at=data.due_at,
        reminder_offsets=tuple(data.reminder_offsets) if data.reminder_offsets is not None else None,
        recurrence=data.recurrence,
        clear=cleared,
        timezone=data.timezone,
        assignee_id=data.assignee_id,
    )
    return await _change(task_id, change, headers)


@blueprint.post("/<uuid:task_id>/snooze")
@problems(400, 401, 404, 409, 413, 415, 422, 429, 503)
@authenticated
@validate_headers(ChangeHeaders)
@validate_request(SnoozeRequest)
@validate_response(TaskOut)
async def snooze_task(task_id: uuid.UUID, data: SnoozeRequest, headers: ChangeHeaders) -> TaskOut:
    """Move the task's due time to `until`, or `minutes` from now.

    With an `Idempotency-Key`, a retry snoozes once: `minutes` count from the first attempt.
    """
    change = TaskChange(action="snooze", until=data.until, minutes=data.minutes)
    return await _change(task_id, change, headers)


@blueprint.post("/<uuid:task_id>/complete")
@problems(401, 404, 409, 422, 429, 503)
@authenticated
@validate_headers(ChangeHeaders)
@validate_response(TaskOut)
async def complete_task(task_id: uuid.UUID, headers: ChangeHeaders) -> TaskOut:
    """Mark the task done: no reminder of it fires any more, unless it is reopened within the undo window.

    With an `Idempotency-Key`, a retry answers the done task instead of 409.
    """
    change = TaskChange(action="complete", undo_seconds=resources().settings.undo_window_seconds)
    return await _change(task_id, change, headers)


@blueprint.delete("/<uuid:task_id>")
@problems(401, 404, 409, 422, 429, 503)
@responds(204, "Cancelled.")
@authenticated
@validate_headers(ChangeHeaders)
async def cancel_task(task_id: uuid.UUID, headers: ChangeHeaders) -> Response:
    """Cancel the task (status `cancelled`): no reminder of it fires any more, unless it is reopened within
    the undo window.

    With an `Idempotency-Key`, a retry answers 204 again instead of 409.
    """
    change = TaskChange(action="cancel", undo_seconds=resources().settings.undo_window_seconds)
    await _change(task_id, change, headers)
    return Response(status=204)


@blueprint.post("/<uuid:task_id>/reopen")
@problems(401, 404, 409, 422, 429, 503)
@authenticated
@validate_headers(ChangeHeaders)
@validate_response(TaskOut)
async def reopen_task(task_id: uuid.UUID, headers: ChangeHeaders) -> TaskOut:
    """Undo a complete or a delete: the task is open again, with its reminders as they were (one that fell
    due meanwhile fires now). Only within `TICKLER_UNDO_WINDOW_SECONDS` of it; 409 after.
    """
    return await _change(task_id, TaskChange(action="reopen"), headers)


async def _change(task_id: uuid.UUID, change: TaskChange, headers: ChangeHeaders) -> TaskOut:
    state = await service.change_task(resources(), principal(), task_id, change, headers.idempotency_key)
    return TaskOut.from_state(state)
