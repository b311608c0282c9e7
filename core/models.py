"""ORM models of the two tables, and the owner's table of organization keys. Migrations under migrations/
are the schema's source of truth."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    Time,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import func, text

from core.payloads import TASK_STATUSES, TaskState

# Constraint names are predictable, so that migrations can name what they drop.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Task(Base):
    """A follow-up. Its workflow (``task-<id>``) is the only writer of this row."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"status IN {TASK_STATUSES}", name="status"),
        Index("ix_tasks_org_assignee_due", "organization_id", "assignee_id", "due_at"),
        Index("ix_tasks_org_due_id", "organization_id", "due_at", "id"),
        Index("ix_tasks_org_status_due_id", "organization_id", "status", "due_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    assignee_id: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text)
    reminder_offsets: Mapped[list[int]] = mapped_column(ARRAY(Integer), server_default="{0}")
    recurrence: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    # Why the series stopped, when its rule could not be used (core/recurrence.py).
    recurrence_stopped: Mapped[str | None] = mapped_column(Text)
    # Set when created with an Idempotency-Key: a hash of the request, to tell a retry from another body.
    request_hash: Mapped[str | None] = mapped_column(Text)
    # The workflow's state version; a write with an older version is ignored (out-of-order retries).
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- a task's state and its row: the one mapping between the two ---------------------------------------

# Columns that hold the state's field of the same name, as it is. A column added to Task without a field
# of TaskState fails here, on import, not in a row that silently misses it.
_SAME_AS_STATE = tuple(
    column.key
    for column in Task.__table__.columns
    if column.key not in ("id", "reminder_offsets", "recurrence")
)
assert set(_SAME_AS_STATE) <= set(TaskState.model_fields), "every tasks column is a field of TaskState"


def task_row(state: TaskState) -> dict[str, Any]:
    """The ``tasks`` row of ``state``, as the workflow writes it (activities.tasks.save_task)."""
    return {
        "id": state.task_id,
        "reminder_offsets": list(state.reminder_offsets),
        "recurrence": state.recurrence.model_dump(exclude_none=True) if state.recurrence else None,
        **{name: getattr(state, name) for name in _SAME_AS_STATE},
    }


def state_of(task: Task) -> TaskState:
    """The state a row holds (what only the workflow keeps, its schedule and request ids, is left out)."""
    return TaskState.model_validate(
        {
            "task_id": task.id,
            "reminder_offsets": tuple(task.reminder_offsets),
            "recurrence": task.recurrence,
            **{name: getattr(task, name) for name in _SAME_AS_STATE},
        }
    )


class Notification(Base):
    """One reminder occurrence delivered to one user. Its id is the stream's event id."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_org_user_id", "organization_id", "user_id", "id"),
        Index(
            "ix_notifications_unread",
            "organization_id",
            "user_id",
            "id",
            postgresql_where=text("read_at IS NULL"),
        ),
        # The purge's walk: read notifications by age (tickler/ops/purge.py).
        Index(
            "ix_notifications_read_created",
            "created_at",
            "id",
            postgresql_where=text("read_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    task_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tasks.id", ondelete="CASCADE"), index=True
    )
    # One row per reminder occurrence: a retried or duplicated delivery finds this key taken.
    dedupe_key: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text, server_default="reminder")
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the email escalation's SMTP server took it (issue 18): a retry sends nothing once set.
    emailed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserSettings(Base):
    """A user's own settings (`PUT /v1/me/settings`): email escalation and quiet hours."""

    __tablename__ = "user_settings"

    organization_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    email: Mapped[str | None] = mapped_column(Text)
    # A notification unread this long after it was written is mailed; NULL: never.
    email_unread_after_seconds: Mapped[int | None] = mapped_column(Integer)
    # Quiet hours in `timezone`, both or neither; an email that would fall in them waits for their end.
    quiet_start: Mapped[time | None] = mapped_column(Time)
    quiet_end: Mapped[time | None] = mapped_column(Time)
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookEndpoint(Base):
    """Where an organization's events are POSTed (issue 18); managed by its admins."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text, index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # `whsec_<base64>`, Standard Webhooks' form: it signs every delivery; shown once, at creation.
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set when deliveries failed for a day: nothing more is sent to it.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookDelivery(Base):
    """One attempt at POSTing one event to one endpoint: its answer, or why there was none."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        # The purge's walk, oldest first (tickler/ops/purge.py).
        Index("ix_webhook_deliveries_attempted_at", "attempted_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    organization_id: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


# The keys row-level security accepts organization signatures under, as HMAC-SHA256 padded keys
# (core/db.py, key_pads); the schema owner's alone: no role of the app may read it. `tickler migrate`
# writes it (tickler/migrate.py).
organization_keys_table = Table(
    "tickler_organization_keys",
    Base.metadata,
    Column("inner_pad", LargeBinary, primary_key=True),
    Column("outer_pad", LargeBinary, nullable=False),
    Column("installed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class NotificationFields(Protocol):
    """A notification row: an ORM object or a row a Core statement returned."""

    id: int
    task_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    due_at: datetime
    created_at: datetime
    read_at: datetime | None


def notification_message(notification: NotificationFields) -> dict[str, Any]:
    """A notification as clients see it: in the inbox API, on the stream, and in a replay."""
    return {
        "id": notification.id,
        "task_id": str(notification.task_id),
        "kind": notification.kind,
        **notification.payload,
        "due_at": notification.due_at.isoformat(),
        "created_at": notification.created_at.isoformat(),
        "read_at": notification.read_at.isoformat() if notification.read_at else None,
    }
