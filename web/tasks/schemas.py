"""Request and response bodies of the task routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from core.payloads import (
    Recurrence,
    TaskState,
    TaskStatus,
    check_timezone,
    normalize_offsets,
    storable_text,
)
from web.schemas import DueTime, Identifier

Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(storable_text)
]
Notes = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(storable_text)]
Offsets = Annotated[
    list[int],
    AfterValidator(lambda offsets: list(normalize_offsets(offsets))),
    Field(description="Reminders in seconds before due_at, e.g. [86400, 900, 0]; 0 is at due time."),
]
TimeZone = Annotated[
    str, AfterValidator(check_timezone), Field(description="IANA time zone the recurrence is evaluated in.")
]


class TaskCreate(BaseModel):
    # Unknown fields are refused, so a body cannot set organization, status or workflow id.
    model_config = ConfigDict(extra="forbid")

    title: Title
    due_at: DueTime
    notes: Notes | None = None
    assignee_id: Identifier | None = Field(None, description="Defaults to the caller.")
    reminder_offsets: Offsets = [0]
    recurrence: Recurrence | None = None
    timezone: TimeZone = "UTC"


class TaskUpdate(BaseModel):
    """Only the fields sent change; `notes: null` clears the notes, `recurrence: null` ends the series."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    notes: Notes | None = None
    due_at: DueTime | None = None
    reminder_offsets: Offsets | None = None
    recurrence: Recurrence | None = None
    timezone: TimeZone | None = None

    @model_validator(mode="after")
    def _something(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        for name in ("title", "due_at", "reminder_offsets", "timezone"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"`{name}` cannot be null")
        return self


class SnoozeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    until: DueTime | None = None
    minutes: int | None = Field(None, ge=1, le=366 * 24 * 60)

    @model_validator(mode="after")
    def _one(self) -> SnoozeRequest:
        if (self.until is None) == (self.minutes is None):
            raise ValueError("give either `until` or `minutes`")
        return self


class TaskOut(BaseModel):
    id: uuid.UUID
    organization_id: str
    assignee_id: str
    created_by: str
    title: str
    notes: str | None
    due_at: datetime
    status: TaskStatus
    reminder_offsets: list[int]
    recurrence: Recurrence | None
    timezone: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_state(cls, state: TaskState) -> TaskOut:
        return cls.model_validate({"id": state.task_id, **state.model_dump(exclude={"task_id"})})


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page.")


class TaskQuery(BaseModel):
    status: TaskStatus | None = None
    assignee_id: Identifier | None = None
    due_before: AwareDatetime | None = Field(None, description="Only tasks due before this time.")
    due_after: AwareDatetime | None = Field(None, description="Only tasks due at or after this time.")
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200, description="`next_cursor` of the previous page.")
