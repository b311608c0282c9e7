"""Request and response bodies of the task routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.payloads import TaskState, TaskStatus
from web.schemas import DueTime, Identifier

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Notes = Annotated[str, StringConstraints(max_length=10_000)]


class TaskCreate(BaseModel):
    # Unknown fields are refused, so a body cannot set organization, status or workflow id.
    model_config = ConfigDict(extra="forbid")

    title: Title
    due_at: DueTime
    notes: Notes | None = None
    assignee_id: Identifier | None = Field(None, description="Defaults to the caller.")


class TaskOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    assignee_id: str
    created_by: str
    title: str
    notes: str | None
    due_at: datetime
    status: TaskStatus
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_state(cls, state: TaskState) -> TaskOut:
        return cls(id=state.task_id, **state.model_dump(exclude={"task_id"}))
