"""Activities of the task workflow: persist its state, deliver its reminders.

Both may run more than once (retries, a worker that dies after the write): every write is idempotent.
They run for every create, change and reminder, so their statements are built once, at import
(docs/performance.md): a call only binds values.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import Table, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core import recurrence
from core.db import tenant_transaction
from core.gcwatch import Deliveries
from core.models import Notification, Task, notification_message
from core.payloads import (
    DELIVER_AHEAD,
    DELIVER_REMINDER,
    NEXT_OCCURRENCE,
    SAVE_TASK,
    DeliverReminderInput,
    NextOccurrenceInput,
    NotificationEvent,
    TaskState,
)
from core.pubsub import publish

tasks: Table = Task.__table__  # type: ignore[assignment]
notifications: Table = Notification.__table__  # type: ignore[assignment]

# The row, unless the stored version is newer (a late retry of an older save changes nothing).
_UPSERT_TASK = (stmt := insert(tasks)).on_conflict_do_update(
    index_elements=[tasks.c.id],
    set_={
        c.name: stmt.excluded[c.name]
        for c in tasks.c
        if c.name not in ("id", "organization_id", "created_at", "request_hash")
    },
    where=tasks.c.version < stmt.excluded.version,
)

# The task, by id AND organization, and the lock of its assignee's notifications in the same round
# trip: one user's notification ids then commit in id order (identity ids are drawn at insert, not at
# commit), so that streams sending "every row after the last id sent" never skip one that commits late.
_TASK_AND_LOCK = select(
    tasks.c.assignee_id,
    tasks.c.title,
    tasks.c.status,
    func.pg_advisory_xact_lock(
        func.hashtextextended(tasks.c.organization_id + "/" + tasks.c.assignee_id, 0)
    ).label("locked"),
).where(tasks.c.id == bindparam("task_id"), tasks.c.organization_id == bindparam("organization_id"))

# The occurrence's one row, with the id of the user's row before it. This statement starts after the
# lock is held, so its snapshot has every earlier row of the user: that predecessor is final (the
# streams' shortcut, web/stream/routes.py).
_earlier = notifications.alias("earlier")
_predecessor = (
    select(func.coalesce(func.max(_earlier.c.id), 0))
    .where(
        _earlier.c.organization_id == bindparam("organization_id"),
        _earlier.c.user_id == bindparam("user_id"),
        # The inserted row (RETURNING's table; naming it as a column would add it to the FROM).
        _earlier.c.id < literal_column("notifications.id"),
    )
    .scalar_subquery()
)
_INSERT_NOTIFICATION = (
    insert(notifications)
    .values(
        organization_id=bindparam("organization_id"),
        user_id=bindparam("user_id"),
        task_id=bindparam("task_id"),
        dedupe_key=bindparam("dedupe_key"),
        payload=bindparam("payload"),
        due_at=bindparam("due_at"),
    )
    .on_conflict_do_nothing(index_elements=[notifications.c.dedupe_key])
    .returning(*notifications.c, _predecessor.label("previous_id"))
)
_EXISTING_NOTIFICATION = select(notifications).where(notifications.c.dedupe_key == bindparam("dedupe_key"))


class TaskActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
        channel: str,
        deliveries: Deliveries | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.redis = redis
        self.channel = channel
        # Deliveries in hand, for the worker's garbage collector (core/gcwatch.py).
        self.deliveries = deliveries or Deliveries()

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
        async with tenant_transaction(self.sessionmaker, state.organization_id) as session:
            connection = await session.connection()
            await connection.execute(_UPSERT_TASK, values)

    @activity.defn(name=NEXT_OCCURRENCE)
    async def next_occurrence(self, input: NextOccurrenceInput) -> datetime | None:
        return recurrence.next_occurrence(input.recurrence, input.timezone, input.after)

    @activity.defn(name=DELIVER_REMINDER)
    async def deliver_reminder(self, input: DeliverReminderInput) -> int | None:
        """Write the occurrence's one notification row, then publish it. Returns its id (None: not due).

        Waits for ``input.not_before`` first (at most DELIVER_AHEAD, whatever the clocks say): the
        workflow's timer fires that much early so that this write lands on the instant, never before."""
        with self.deliveries.delivering():
            return await self._deliver(input)

    async def _deliver(self, input: DeliverReminderInput) -> int | None:
        if input.not_before is not None:
            await _wait_for(input.not_before, DELIVER_AHEAD)
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            connection = await session.connection()
            task = (
                await connection.execute(
                    _TASK_AND_LOCK, {"task_id": input.task_id, "organization_id": input.organization_id}
                )
            ).first()
            if task is None:
                raise ApplicationError(
                    f"task {input.task_id} of organization {input.organization_id} does not exist",
                    type="TaskNotFound",
                    non_retryable=True,
                )
            if task.status != "open":
                return None
            row = (
                await connection.execute(
                    _INSERT_NOTIFICATION,
                    {
                        "organization_id": input.organization_id,
                        "user_id": task.assignee_id,
                        "task_id": input.task_id,
                        "dedupe_key": input.dedupe_key,
                        "payload": {"title": task.title, "offset_seconds": input.offset_seconds},
                        "due_at": input.due_at,
                    },
                )
            ).first()
            previous_id: int | None = None
            if row is not None:
                previous_id = row.previous_id
            else:
                # A retry or a duplicated execution: the row exists; publish it again (streams drop
                # duplicates by id), without a predecessor, which only the first delivery knew for sure.
                row = (
                    await connection.execute(_EXISTING_NOTIFICATION, {"dedupe_key": input.dedupe_key})
                ).first()
                if row is None:  # the conflicting row vanished: its task was deleted meanwhile
                    raise ApplicationError(
                        f"task {input.task_id} was deleted during delivery", non_retryable=True
                    )
        if previous_id is not None:
            _record_lateness(input)
        await publish(
            self.redis,
            self.channel,
            NotificationEvent(
                organization_id=row.organization_id,
                user_id=row.user_id,
                event="notification",
                id=row.id,
                data=notification_message(row),
                previous_id=previous_id,
            ),
        )
        notification_id: int = row.id
        return notification_id


def _record_lateness(input: DeliverReminderInput) -> None:
    """How late the reminder fired; due_at minus the offset is when it was meant to."""
    late = datetime.now(UTC) - (input.due_at - timedelta(seconds=input.offset_seconds))
    activity.metric_meter().create_histogram_timedelta(
        "tickler_reminder_lateness", "Time from a reminder's due instant to its notification row", "s"
    ).record(max(late, timedelta(0)))


async def _wait_for(instant: datetime, at_most: timedelta) -> None:
    """Sleep until the wall clock reads ``instant`` (a sleep may end a hair early: look again)."""
    deadline = datetime.now(UTC) + at_most
    while (now := datetime.now(UTC)) < instant and now < deadline:  # noqa: ASYNC110 (a clock, not an event)
        await asyncio.sleep((min(instant, deadline) - now).total_seconds())
