"""The messages that the web app, the task workflow and the activities exchange through Temporal.

New fields only with defaults: recorded histories must still deserialize.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

# Imported here, not where used: the workflow sandbox refuses late imports, and rrulestr imports the
# parser (UNTIL) and tz (TZID) modules on first use.
import dateutil.parser
import dateutil.tz  # noqa: F401
from dateutil.rrule import rrulestr
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

TaskStatus = Literal["open", "done", "cancelled"]
TASK_STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)


def exactly_one_of(*groups: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    """JSON schema of a model that takes one group of its fields, all of them not null, with the first
    field of every other group absent or null (their other fields are ignored)."""

    def state(schema: dict[str, Any]) -> None:
        properties = schema["properties"]

        def given(name: str) -> Any:
            field = properties[name]
            return next((s for s in field.get("anyOf", [field]) if s.get("type") != "null"), field)

        schema["oneOf"] = [
            {
                "required": list(group),
                "properties": {
                    **{other[0]: {"type": "null"} for other in groups if other is not group},
                    **{name: given(name) for name in group},
                },
            }
            for group in groups
        ]

    return state


def _json_integer(value: object) -> object:
    # JSON has one number type, so 5.0 is an integer; true and "5" are not (pydantic's lax mode takes them).
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


# Makes an int field take integers as JSON Schema's `integer` means them. After the field's bounds in its
# Annotated: before them, pydantic cannot write the bounds into the JSON schema.
JSON_INTEGER = BeforeValidator(_json_integer)


class Recurrence(BaseModel):
    """Remind again after each occurrence: an RFC 5545 RRULE, or every N days or weeks.

    Evaluated in the task's IANA time zone, so "every Tuesday 10:00" stays 10:00 across DST changes.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=exactly_one_of(("rrule",), ("every", "unit"))
    )

    rrule: str | None = Field(None, max_length=500, description='e.g. "FREQ=WEEKLY;BYDAY=TU"')
    every: Annotated[int, Field(ge=1, le=366), JSON_INTEGER] | None = None
    unit: Literal["days", "weeks"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Recurrence:
        if (self.rrule is None) == (self.every is None):
            raise ValueError("give either `rrule` or `every` with `unit`")
        if self.every is not None and self.unit is None:
            raise ValueError("`every` needs a `unit` (days or weeks)")
        return self


def _rule_syntax(recurrence: Recurrence) -> Recurrence:
    if recurrence.rrule is not None:
        check_rrule(recurrence.rrule)
    return recurrence


# A rule a caller sends (REST, signal, update): its syntax is checked, and its use judged by running it
# (core/recurrence.py). A stored state keeps the plain Recurrence, so that a state saved under older,
# looser checks still loads: a workflow whose input no longer decodes fails every workflow task.
NewRecurrence = Annotated[Recurrence, AfterValidator(_rule_syntax)]


def storable_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone UTF-16 surrogates (which JSON can carry): refuse them."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (it has a lone surrogate)") from exc
    return value


Text = Annotated[str, AfterValidator(storable_text)]


def check_rrule(rule: str) -> None:
    """The rule's syntax, in workflow code too (a signal's rule): parsing is linear in its 500 characters.
    Whether the rule is usable is judged by running it, off the event loop (core/recurrence.py)."""
    body = rule.removeprefix("RRULE:")
    if "DTSTART" in body.upper() or "\n" in rule or "\r" in rule:
        raise ValueError("give the RRULE body only, e.g. FREQ=WEEKLY;BYDAY=TU (due_at is its start)")
    if "FREQ=" not in body.upper():
        raise ValueError("the rule needs a FREQ, e.g. FREQ=WEEKLY;BYDAY=TU")
    try:
        rrulestr(body, dtstart=datetime(2000, 1, 1, tzinfo=UTC))
    except Exception as exc:  # user data: OverflowError for a huge UNTIL, whatever else dateutil raises
        raise ValueError(f"not a valid RRULE: {exc}") from exc


# Every time a caller sends (REST, signal or update) lies in [EARLIEST, LATEST): checked wherever it is
# parsed, workflow code included, so that no arithmetic on it can overflow. A new due time must also lie
# within MAX_PAST before and MAX_FUTURE after now, checked with the clock of whoever applies it
# (the web process, or workflow.now() in the workflow): check_due_window.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_PAST = timedelta(days=366)
MAX_FUTURE = timedelta(days=3660)


def bounded_instant(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError("must have an offset (a naive time names no instant)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError("must be between 2000-01-01 and 2100-01-01 (UTC)")
    return value


def check_due_window(due: datetime, now: datetime) -> None:
    if not now - MAX_PAST <= due <= now + MAX_FUTURE:
        raise ValueError("must be within one year in the past and ten years in the future")


# An aware time within [EARLIEST, LATEST).
Instant = Annotated[AwareDatetime, AfterValidator(bounded_instant)]


class TaskState(BaseModel):
    """A task as its workflow holds it; the ``tasks`` row is a copy written by the workflow."""

    model_config = ConfigDict(frozen=True)

    task_id: uuid.UUID
    organization_id: str
    assignee_id: str
    created_by: str
    title: str
    notes: str | None = None
    due_at: datetime
    status: TaskStatus = "open"
    # Reminders, in seconds before due_at (0 = at due time); they all move with due_at.
    reminder_offsets: tuple[int, ...] = (0,)
    recurrence: Recurrence | None = None
    timezone: str = "UTC"
    # Why the series stopped, when its rule could not be used (core/recurrence.py); cleared by a new rule.
    recurrence_stopped: str | None = None
    # The first due time of the series: its occurrences are the rule's from there, so that a day whose
    # wall time does not exist, or a snooze, does not move the series, and COUNT counts from it. None:
    # the series starts at due_at (a new rule, zone or due time starts it again). Not in the row.
    series_start: datetime | None = None
    # Bumped by every change; the row keeps the highest version it saw.
    version: int = 1
    # Bumped whenever due_at moves (a reschedule, the next occurrence): each arming is its own occurrence.
    schedule_revision: int = 1
    # Offsets of this revision already delivered (or skipped: their time had passed when it was armed).
    done_offsets: tuple[int, ...] = ()
    # Hash of the create request that carried an Idempotency-Key, to tell a replay from a different body.
    request_hash: str | None = None
    # Ids of recent change requests, so that a retried signal or update applies once, across continue-as-new.
    recent_request_ids: tuple[str, ...] = ()
    created_at: datetime
    updated_at: datetime
    # Done or cancelled: until when a reopen is taken (the workflow waits for it). Not in the row.
    reopen_until: datetime | None = None

    def pending_reminders(self) -> list[tuple[datetime, int]]:
        """(fire time, offset) of the reminders still to deliver for this revision, soonest first."""
        if self.status != "open":
            return []
        pending = [
            (self.due_at - timedelta(seconds=offset), offset)
            for offset in self.reminder_offsets
            if offset not in self.done_offsets
        ]
        return sorted(pending)

    def dedupe_key(self, offset: int) -> str:
        return f"{self.task_id}/{self.schedule_revision}/{offset}"

    def skipping_passed_reminders(self, now: datetime) -> TaskState:
        """Mark as done the early reminders whose time has passed when the schedule is set; the one at
        due time always stays, so a task created or rescheduled into the past fires at once."""
        passed = tuple(
            offset
            for offset in self.reminder_offsets
            if offset > 0 and self.due_at - timedelta(seconds=offset) <= now
        )
        return self.model_copy(update={"done_offsets": passed})


# The task workflow's behaviour version, carried in its input so that a running workflow keeps the
# behaviour it started with (replay) at no cost in its history, and continue-as-new moves it to this one.
# A change to the workflow's command sequence is a new version (or a workflow.patched): docs/decisions.md
# §12 says how to add one. The workflow runs the versions from OLDEST_WORKFLOW_VERSION to this one.
# 2: the timer fires DELIVER_AHEAD early, a local activity waits for the instant and delivers it.
# 3: a timer ARM_LEAD ahead arms the reminder in the worker's delivery wheel (ARM_REMINDER), which
#    delivers it at the instant with every other reminder due then; a timer DELIVERY_GRACE after the
#    instant delivers it from the workflow if the wheel did not (docs/decisions.md §29).
# (1, an activity task at the instant, was never deployed and is gone: its inputs are refused.)
WORKFLOW_VERSION = 3
OLDEST_WORKFLOW_VERSION = 2


class TaskWorkflowInput(BaseModel):
    state: TaskState
    # True when continued as new: the row already holds this state.
    saved: bool = False
    # Every starter passes WORKFLOW_VERSION. Absent, it is 1, as inputs written before the field meant:
    # refused, like every version below OLDEST_WORKFLOW_VERSION (WORKFLOW_VERSION_UNSUPPORTED).
    version: int = 1


class DeliverReminderInput(BaseModel):
    task_id: uuid.UUID
    organization_id: str
    dedupe_key: str
    due_at: datetime
    offset_seconds: int = 0
    # The instant the reminder is for: the activity waits for it on the clock before it writes, so that
    # the workflow can arm its timer DELIVER_AHEAD early. Required: only a local activity takes this
    # input, and a local activity's input is not in the history, so no recorded event lacks it.
    not_before: datetime
    # Armed ahead (ARM_REMINDER): the task row's version and assignee the reminder was armed with. The
    # delivery writes nothing unless the row still has that version (a change confirmed before the
    # instant wins); the assignee orders a batch's locks. None: delivered as the row is now.
    version: int | None = None
    assignee_id: str | None = None


# How far ahead of a reminder's instant its timer fires. The wake-up, its workflow task and the start of
# the local activity fit in this margin, then the activity waits for the exact instant: delivery lands on
# time, never before (docs/performance.md). It also bounds that wait, whatever a clock says.
DELIVER_AHEAD = timedelta(milliseconds=250)

# Version 3 (docs/decisions.md §29, §30). A reminder is armed in a worker's delivery wheel between
# ARM_LEAD and ARM_LEAD + ARM_SPREAD ahead of its instant, the lead drawn from its task id: the arming
# workflow tasks of a burst due at one instant (10,000 take about two minutes of both cores) run spread
# over nine minutes before it rather than all at one moment, where they slowed the creations still going
# on to half their rate. A worker holds only what falls due in the next ten minutes.
ARM_LEAD = timedelta(seconds=60)
ARM_SPREAD = timedelta(seconds=540)
# After its instant, the workflow's own timer delivers a reminder the wheel did not (its worker died or
# restarted in the lead window, or the database refused the batch): between DELIVERY_GRACE and
# DELIVERY_GRACE + GRACE_SPREAD after it, drawn from the task id, which bounds how late such a reminder
# is. Most of the time it finds the wheel's delivery done and only records it; spread, the grace
# workflow tasks of a burst do not compete with the wheel's own delivery at the instant.
DELIVERY_GRACE = timedelta(seconds=3)
GRACE_SPREAD = timedelta(seconds=30)
_SPREAD_STEPS = 10_007  # a prime: the task id's bits below and above 64 give two independent fractions


def arm_lead(task_id: uuid.UUID) -> timedelta:
    """How far ahead of its instants a task's reminders are armed: the same for every run and replay."""
    return ARM_LEAD + ARM_SPREAD * ((task_id.int % _SPREAD_STEPS) / _SPREAD_STEPS)


def delivery_grace(task_id: uuid.UUID) -> timedelta:
    """How long after its instants a task's workflow delivers what its wheel did not."""
    return DELIVERY_GRACE + GRACE_SPREAD * (((task_id.int >> 64) % _SPREAD_STEPS) / _SPREAD_STEPS)


# A create with an Idempotency-Key takes its task id from the key, in a namespace of its own: the same
# key of the same user is the same task.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0c7a4e-4a57-4bd7-9c55-3f8a3c0d9e21")


# What short_grace_key looks for: the least grace and one second.
SHORT_GRACE = DELIVERY_GRACE + timedelta(seconds=1)


def idempotent_task_id(organization_id: str, user_id: str, key: str) -> uuid.UUID:
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{organization_id}\0{user_id}\0{key}")


def short_grace_key(
    organization_id: str,
    user_id: str,
    prefix: str,
    at_most: timedelta = DELIVERY_GRACE + timedelta(seconds=1),
) -> str:
    """An Idempotency-Key (``prefix`` and a number) whose task's grace step comes within ``at_most`` of
    each instant (the grace is drawn from the task id, which the key decides): for tests and the chaos
    suite's small scale, which would otherwise wait up to 33 s for what a grace step does. ~60 tries for
    the default."""
    for n in range(1_000_000):
        key = f"{prefix}{n}"
        if delivery_grace(idempotent_task_id(organization_id, user_id, key)) <= at_most:
            return key
    raise ValueError(f"no key gives a grace of at most {at_most}")


TaskAction = Literal["edit", "reschedule", "snooze", "complete", "cancel", "reopen"]
# Email escalation (issue 18): a notification unread this long is mailed, within these bounds.
MIN_EMAIL_DELAY_SECONDS = 10
MAX_EMAIL_DELAY_SECONDS = 7 * 24 * 3600
# How long a task completed or cancelled can be reopened, unless the change says (the API sends
# TICKLER_UNDO_WINDOW_SECONDS); at most MAX_UNDO_SECONDS, the workflow running on meanwhile.
DEFAULT_UNDO_SECONDS = 10.0
MAX_UNDO_SECONDS = 3600.0
ClearableField = Literal["notes", "recurrence"]


class TaskChange(BaseModel):
    """One change of a task: the input of the ``change`` update (REST) and of every signal.

    Signals carry the same fields as JSON; ``action`` comes from the signal's name. Fields left out
    (None) are unchanged; the fields named in ``clear`` are emptied: the one way to clear a field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: TaskAction
    title: Text | None = Field(None, min_length=1, max_length=200)
    notes: Text | None = Field(None, max_length=10_000)
    due_at: Instant | None = None
    until: Instant | None = Field(None, description="snooze: the new due time")
    minutes: int | None = Field(None, ge=1, le=366 * 24 * 60, description="snooze: minutes from now")
    reminder_offsets: tuple[int, ...] | None = None
    recurrence: NewRecurrence | None = None
    # Bounded before the dedupe below: a signal could otherwise send a 2 MB list of one name.
    clear: tuple[ClearableField, ...] = Field(
        (), max_length=10, description='Fields to empty, e.g. ["notes"].'
    )
    # How the series was ended before `clear`: recorded histories and older senders carry it, so it is
    # still read, and folded into `clear` (_legacy_clear); nothing reads the flag itself.
    clear_recurrence: SkipJsonSchema[bool] = Field(False, exclude=True)
    timezone: str | None = None
    # complete, cancel: how long the task can be reopened (None: DEFAULT_UNDO_SECONDS).
    undo_seconds: float | None = Field(None, ge=0, le=MAX_UNDO_SECONDS)
    # Another user of the same organization (a CRM id, as the API's Identifier).
    assignee_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")
    # Optional on signals: when given, it must be the task's organization.
    organization_id: str | None = Field(None, max_length=64)
    # Optional: a change with an id seen recently is applied once.
    request_id: str | None = Field(None, max_length=100)

    @model_validator(mode="before")
    @classmethod
    def _legacy_clear(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("clear_recurrence") is True
            and isinstance(data.get("clear", ()), list | tuple)
        ):
            return {**data, "clear": (*data.get("clear", ()), "recurrence")}
        return data

    @field_validator("clear")
    @classmethod
    def _once_each(cls, value: tuple[ClearableField, ...]) -> tuple[ClearableField, ...]:
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _given_or_cleared(self) -> TaskChange:
        for name in self.clear:
            if getattr(self, name) is not None:
                raise ValueError(f"`{name}` is both given and cleared")
        return self

    @field_validator("reminder_offsets")
    @classmethod
    def _offsets(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return None if value is None else normalize_offsets(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)


MAX_REMINDERS = 10
MAX_OFFSET = 366 * 24 * 3600


def normalize_offsets(offsets: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    if not 1 <= len(offsets) <= MAX_REMINDERS:
        raise ValueError(f"give between 1 and {MAX_REMINDERS} reminder offsets")
    if any(not 0 <= offset <= MAX_OFFSET for offset in offsets):
        raise ValueError("reminder offsets are seconds before due_at, between 0 and one year")
    return tuple(sorted(set(offsets), reverse=True))


# The zones a task may name: tzdata's list (a dependency), the same on every machine. Resolving a name
# against the file system instead answers IsADirectoryError for "America" and OSError for a long name.
TIMEZONES = frozenset(resources.files("tzdata").joinpath("zones").read_text().split())
MAX_TIMEZONE_LENGTH = max(map(len, TIMEZONES))


def check_timezone(name: str) -> str:
    if len(name) > MAX_TIMEZONE_LENGTH or name not in TIMEZONES:
        raise ValueError(
            f"unknown IANA time zone {name[:MAX_TIMEZONE_LENGTH]!r}: use a name like Europe/Berlin"
        )
    try:
        ZoneInfo(name).utcoffset(EARLIEST)  # judged by using it
    except Exception as exc:
        raise ValueError(f"time zone {name!r} cannot be loaded") from exc
    return name


class NextOccurrenceInput(BaseModel):
    recurrence: Recurrence
    timezone: str
    after: datetime
    # The series' first due time, whose wall time and COUNT the rule keeps (None: `after`, as before).
    start: datetime | None = None


class TaskOut(BaseModel):
    """A task as the API shows it: `GET /v1/tasks/<id>`, the answers of changes, and the data of the
    stream's `task.changed` event (activities/tasks.py), one shape for all three."""

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
    recurrence_stopped: str | None = Field(
        None, description="Why the series stopped when its rule could not be used; a new rule clears it."
    )
    timezone: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_state(cls, state: TaskState) -> TaskOut:
        return cls.model_validate({"id": state.task_id, **state.model_dump(exclude={"task_id"})})


class NotificationEvent(BaseModel):
    """What the web processes receive on the Redis channel and forward to one user's streams."""

    organization_id: str
    user_id: str
    event: str
    id: int | None = None
    data: dict[str, object]
    # The id of the same user's notification before this one (0: none), read under the per-user lock
    # that orders their inserts. A stream whose last sent id is that one sends this event as it is;
    # any other stream reads PostgreSQL for what it lacks (None: the publisher does not know).
    previous_id: int | None = None


# Names of the workflow, its handlers and its activities: each side refers to them by name, so that
# web/ need not import workflows/, nor workflows/ import activities/.
TASK_WORKFLOW = "TaskWorkflow"
# The stream event that carries a task (TaskOut) to its assignee's streams whenever its row changes.
TASK_CHANGED = "task.changed"
SYNC_UPDATE = "sync"
CHANGE_UPDATE = "change"
STATE_QUERY = "current"
SIGNALS: tuple[TaskAction, ...] = ("reschedule", "snooze", "complete", "cancel", "reopen")
# workflow.patched id of the undo window (issue 17): a task done or cancelled waits for a reopen first.
UNDO_PATCH = "undo-window"
SAVE_TASK = "save_task"
DELIVER_REMINDER = "deliver_reminder"
ARM_REMINDER = "arm_reminder"
# Sent by a worker that stops to each task whose reminder it holds armed: arm it again (on the worker
# that runs the task's next workflow task). Harmless at any other time: the task arms what it would.
REARM_SIGNAL = "rearm"
NEXT_OCCURRENCE = "next_occurrence"
# The types of the ApplicationError with which the change update refuses a change (web/tasks/service.py
# answers 409 and 422 for them).
CHANGE_CONFLICTS = "Conflict"  # the change does not fit the task's state (it is done or cancelled)
CHANGE_INVALID = "Invalid"  # the change itself cannot apply (a reschedule without a time)
# The type of the non-retryable failure of NEXT_OCCURRENCE whose rule cannot be used: the series stops.
RECURRENCE_UNUSABLE = "RecurrenceUnusable"
# The type of the non-retryable failure with which a task workflow refuses, at its start, an input whose
# version it no longer runs (below OLDEST_WORKFLOW_VERSION).
WORKFLOW_VERSION_UNSUPPORTED = "WorkflowVersionUnsupported"


# -- email escalation (issue 18) ----------------------------------------------------------------------

EMAIL_WORKFLOW = "EmailEscalation"
EMAIL_NOTIFICATION = "email_notification"


def email_workflow_id(organization_id: str, notification_id: int) -> str:
    """One escalation per notification: a second start of it is refused (the id is taken)."""
    return f"email-{organization_id}-{notification_id}"


class EmailInput(BaseModel):
    """A notification to mail if it is still unread at ``send_after``."""

    model_config = ConfigDict(frozen=True)

    organization_id: str
    notification_id: int
    send_after: datetime


class EmailOutcome(BaseModel):
    """What the escalation's activity did: ``sent``, or why not (``read``, ``off``, ``gone``); or, with
    ``wait_until``, nothing yet (quiet hours, or a delay the user lengthened)."""

    result: str
    wait_until: datetime | None = None


# -- webhooks (issue 18) ------------------------------------------------------------------------------

WEBHOOK_EVENTS = ("reminder.fired", "task.changed")
WebhookEvent = Literal["reminder.fired", "task.changed"]
WEBHOOK_WORKFLOW = "WebhookDelivery"
DELIVER_WEBHOOK = "deliver_webhook"
DISABLE_ENDPOINT = "disable_webhook_endpoint"
WEBHOOK_UNDELIVERABLE = "WebhookUndeliverable"


def webhook_workflow_id(endpoint_id: uuid.UUID, event_id: str) -> str:
    """One delivery per event and endpoint: a second start of it is refused (the id is taken)."""
    return f"webhook-{endpoint_id}-{event_id}"


class WebhookInput(BaseModel):
    """One event for one endpoint; ``body`` is fixed at the event, the same for every attempt."""

    model_config = ConfigDict(frozen=True)

    organization_id: str
    endpoint_id: uuid.UUID
    event_id: str
    event_type: str
    body: str


class DisableEndpoint(BaseModel):
    organization_id: str
    endpoint_id: uuid.UUID
    reason: str
