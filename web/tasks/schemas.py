"""Request and response bodies of the task routes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from core.payloads import (
    JSON_INTEGER,
    MAX_OFFSET,
    MAX_REMINDERS,
    TIMEZONES,
    NewRecurrence,
    TaskOut,
    TaskStatus,
    check_timezone,
    exactly_one_of,
    normalize_offsets,
    storable_text,
)
from web.schemas import BoundedTime, DueTime, Identifier

# Text PostgreSQL can store: no NUL (storable_text). A title has a character other than white space, as
# str.strip() counts it; it is checked as sent and stored stripped, so that the schema's bounds are the
# server's.
_SPACE = r"\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=rf"^[^\u0000]*[^\u0000{_SPACE}][^\u0000]*$"),
    AfterValidator(storable_text),
    AfterValidator(str.strip),
]
Notes = Annotated[
    str, StringConstraints(max_length=10_000, pattern=r"^[^\u0000]*$"), AfterValidator(storable_text)
]
Offsets = Annotated[
    list[Annotated[int, Field(ge=0, le=MAX_OFFSET), JSON_INTEGER]],
    Field(min_length=1, max_length=MAX_REMINDERS),
    AfterValidator(lambda offsets: list(normalize_offsets(offsets))),
    Field(description="Reminders in seconds before due_at, e.g. [86400, 900, 0]; 0 is at due time."),
]
TimeZone = Annotated[
    str,
    AfterValidator(check_timezone),
    Field(
        description="IANA time zone the recurrence is evaluated in.",
        json_schema_extra={"enum": sorted(TIMEZONES)},
    ),
]


class TaskCreate(BaseModel):
    # Unknown fields are refused, so a body cannot set organization, status or workflow id.
    model_config = ConfigDict(extra="forbid")

    title: Title
    due_at: DueTime
    notes: Notes | None = None
    assignee_id: Identifier | None = Field(None, description="Defaults to the caller.")
    reminder_offsets: Offsets = [0]
    recurrence: NewRecurrence | None = None
    timezone: TimeZone = "UTC"


def _unsendable_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class TaskUpdate(BaseModel):
    """Only the fields sent change; `notes: null` clears the notes, `recurrence: null` ends the series."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # null is refused for these (below): the schema states neither it nor a default of it.
    title: Title | SkipJsonSchema[None] = Field(None, json_schema_extra=_unsendable_default)
    notes: Notes | None = None
    due_at: DueTime | SkipJsonSchema[None] = Field(None, json_schema_extra=_unsendable_default)
    reminder_offsets: Offsets | SkipJsonSchema[None] = Field(None, json_schema_extra=_unsendable_default)
    recurrence: NewRecurrence | None = None
    timezone: TimeZone | SkipJsonSchema[None] = Field(None, json_schema_extra=_unsendable_default)
    assignee_id: Identifier | SkipJsonSchema[None] = Field(
        None,
        description="Give the task to another user of the organization: its reminders go to them.",
        json_schema_extra=_unsendable_default,
    )

    @model_validator(mode="after")
    def _something(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        for name in ("title", "due_at", "reminder_offsets", "timezone", "assignee_id"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"`{name}` cannot be null")
        return self


class SnoozeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of(("until",), ("minutes",)))

    until: DueTime | None = None
    minutes: Annotated[int, Field(ge=1, le=366 * 24 * 60), JSON_INTEGER] | None = None

    @model_validator(mode="after")
    def _one(self) -> SnoozeRequest:
        if (self.until is None) == (self.minutes is None):
            raise ValueError("give either `until` or `minutes`")
        return self


class TaskPage(BaseModel):
    items: list[TaskOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next page.")


class TaskQuery(BaseModel):
    status: TaskStatus | None = None
    assignee_id: Identifier | None = None
    due_before: BoundedTime | None = Field(
        None, description="Only tasks due before this time (RFC 3339, within 2000-01-01 to 2100-01-01)."
    )
    due_after: BoundedTime | None = Field(
        None, description="Only tasks due at or after this time (RFC 3339, within 2000-01-01 to 2100-01-01)."
    )
    limit: int = Field(50, ge=1, le=200)
    # web/tasks/service.py encode_cursor: the due time in microseconds since 1970, and the id.
    cursor: str | None = Field(
        None, pattern=r"^[0-9]{1,16}-[0-9a-f]{32}$", description="`next_cursor` of the previous page."
    )
