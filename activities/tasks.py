"""Activities of the task workflow: persist its state, deliver its reminders.

Both may run more than once (retries, a worker that dies after the write): every write is idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import recurrence
from core.db import tenant_transaction
from core.models import Notification, Task, notification_message
from core.payloads import (
    DELIVER_REMINDER,
    NEXT_OCCURRENCE,
    SAVE_TASK,
    DeliverReminderInput,
    NextOccurrenceInput,
    NotificationEvent,
    TaskState,
)
from core.pubsub import publish


class TaskActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis, channel: str) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.channel = channel

    @activity.defn(name=SAVE_TASK)
    async def save_task(self, state: TaskState) -> None:
        """Upsert the row; a write older than the row's version (a late retry) changes nothing."""
        values = {
            "id": state.task_id,
            "organization_id": state.organization_id,
            "assignee_id": state.assignee_id,
            "created_by": state.created_by,
            "title": state.title,
            "notes": state.notes,
            "due_at": state.due_at,
            "status": state.status,
            "reminder_offsets": list(state.reminder_offsets),
            "recurrence": state.recurrence.model_dump(exclude_none=True) if state.recurrence else None,
            "timezone": state.timezone,
            "request_hash": state.request_hash,
            "version": state.version,
            "created_at": state.created_at,
            "updated_at": state.updated_at,
        }
        stmt = insert(Task).values(values)
        fixed = ("id", "organization_id", "created_at", "request_hash")
        mutable = {k: stmt.excluded[k] for k in values if k not in fixed}
        stmt = stmt.on_conflict_do_update(
            index_elements=[Task.id], set_=mutable, where=Task.version < stmt.excluded.version
        )
        async with tenant_transaction(self.sessionmaker, state.organization_id) as session:
            await session.execute(stmt)

    @activity.defn(name=NEXT_OCCURRENCE)
    async def next_occurrence(self, input: NextOccurrenceInput) -> datetime | None:
        return recurrence.next_occurrence(input.recurrence, input.timezone, input.after)

    @activity.defn(name=DELIVER_REMINDER)
    async def deliver_reminder(self, input: DeliverReminderInput) -> int | None:
        """Write the occurrence's one notification row, then publish it. Returns its id (None: not due)."""
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            task = await session.scalar(
                select(Task).where(Task.id == input.task_id, Task.organization_id == input.organization_id)
            )
            if task is None:
                raise ApplicationError(
                    f"task {input.task_id} of organization {input.organization_id} does not exist",
                    type="TaskNotFound",
                    non_retryable=True,
                )
            if task.status != "open":
                return None
            notification, created = await _insert_once(session, task, input)
        if created:
            # How late the reminder fired; due_at minus the offset is when it was meant to.
            late = datetime.now(UTC) - (input.due_at - timedelta(seconds=input.offset_seconds))
            activity.metric_meter().create_histogram_timedelta(
                "tickler_reminder_lateness", "Time from a reminder's due instant to its notification row", "s"
            ).record(max(late, timedelta(0)))
        await publish(
            self.redis,
            self.channel,
            NotificationEvent(
                organization_id=notification.organization_id,
                user_id=notification.user_id,
                event="notification",
                id=notification.id,
                data=notification_message(notification),
            ),
        )
        return notification.id


async def _insert_once(
    session: AsyncSession, task: Task, input: DeliverReminderInput
) -> tuple[Notification, bool]:
    """The occurrence's row, and whether this call created it."""
    # One user's notification ids commit in id order (identity ids are drawn at insert, not at commit):
    # streams send "every row after the last id sent", which must never skip a row that commits late.
    audience = f"{task.organization_id}/{task.assignee_id}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(audience, 0))))
    stmt = (
        insert(Notification)
        .values(
            organization_id=task.organization_id,
            user_id=task.assignee_id,
            task_id=task.id,
            dedupe_key=input.dedupe_key,
            payload={"title": task.title, "offset_seconds": input.offset_seconds},
            due_at=input.due_at,
        )
        .on_conflict_do_nothing(index_elements=[Notification.dedupe_key])
        .returning(Notification)
    )
    inserted = await session.scalar(stmt)
    if inserted is not None:
        return inserted, True
    # A retry or a duplicated execution: the row exists; publish it again, streams drop duplicates by id.
    existing = await session.scalar(select(Notification).where(Notification.dedupe_key == input.dedupe_key))
    if existing is None:  # the conflicting row vanished: its task was deleted meanwhile
        raise ApplicationError(f"task {task.id} was deleted during delivery", non_retryable=True)
    return existing, False
