"""Activities of the task workflow: persist its state, deliver its reminders.

Both may run more than once (retries, a worker that dies after the write): every write is idempotent.
They run for every create, change and reminder, so their statements are built once, at import, and a
delivery is one round trip (docs/performance.md): a call only binds values.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy import Table, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError

from core.db import organization_signer, tenant_transaction
from core.gcwatch import Deliveries
from core.logs import task_fields
from core.models import Task, notification_message, task_row
from core.payloads import (
    DELIVER_AHEAD,
    DELIVER_REMINDER,
    NEXT_OCCURRENCE,
    RECURRENCE_UNUSABLE,
    SAVE_TASK,
    DeliverReminderInput,
    NextOccurrenceInput,
    NotificationEvent,
    TaskState,
)
from core.pubsub import Channel, publish
from core.recurrence import RuleRunner, RuleUnusable
from core.temporal import task_workflow_id

tasks: Table = Task.__table__  # type: ignore[assignment]

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

# A reminder's whole write, in one round trip outside an explicit transaction: the organization (signed,
# core/db.py), the task by id AND organization, the lock of its assignee's notifications, the
# occurrence's one row and the id of the user's row before it (migrations/versions/
# 2026_11_28_deliver_function.py says how; 2026_11_30_signed_organization.py added the signature).
_DELIVER = text(
    "SELECT * FROM deliver_notification("
    ":task_id, :organization_id, :signature, :dedupe_key, :offset_seconds, :due_at)"
)


# Why a delivery failed for good (a non-retryable failure, after which nothing delivers the reminder).
TASK_DELETED = "task_deleted"
TASK_MISSING = "task_missing"


class DeliveryMetrics:
    """What the delivery counts, on the worker's runtime meter (core/temporal.py exports it; the no-op
    meter by default). Made once per worker, every counter at 0 from the start: a series that appears
    with its first increment hides that increment from rate() and increase(), so an alert on a rare
    failure would miss the first one."""

    def __init__(self, meter: MetricMeter) -> None:
        lateness = meter.create_histogram_timedelta(
            "tickler_reminder_lateness",
            "Time from a reminder's due instant to its notification row (stage=row, once per reminder) "
            "and to its publication on Redis (stage=published, each publication)",
            "s",
        )
        self.row_lateness = lateness.with_additional_attributes({"stage": "row"})
        self.published_lateness = lateness.with_additional_attributes({"stage": "published"})
        self.delivered = meter.create_counter(
            "tickler_reminders_delivered", "Reminders whose notification row was written"
        )
        self.retries = meter.create_counter(
            "tickler_delivery_retries",
            "Attempts of the delivery activity after the first: each is a due reminder not delivered yet",
        )
        failed = meter.create_counter(
            "tickler_deliveries_failed",
            "Deliveries failed for good: the reminder's task or organization is gone",
        )
        self.failed = {
            reason: failed.with_additional_attributes({"reason": reason})
            for reason in (TASK_DELETED, TASK_MISSING)
        }
        for counter in (self.delivered, self.retries, *self.failed.values()):
            counter.add(0)


class TaskActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis,
        channel: Channel,
        deliveries: Deliveries | None = None,
        *,
        rules: RuleRunner | None = None,
        metric_meter: MetricMeter | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        # Deliveries call one function and need no transaction of their own (no BEGIN, no COMMIT).
        engine: AsyncEngine = sessionmaker.kw["bind"]
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.signer = organization_signer(engine)
        self.redis = redis
        self.channel = channel
        # Recurrence rules are user data: they run in child processes, killed at their time budget.
        self.rules = rules
        # Deliveries in hand, for the worker's garbage collector (core/gcwatch.py).
        self.deliveries = deliveries or Deliveries()
        self.metrics = DeliveryMetrics(metric_meter or MetricMeter.noop)

    @activity.defn(name=SAVE_TASK)
    async def save_task(self, state: TaskState) -> None:
        """Upsert the row; a write older than the row's version (a late retry) changes nothing."""
        values = task_row(state)
        async with tenant_transaction(self.sessionmaker, state.organization_id) as session:
            connection = await session.connection()
            await connection.execute(_UPSERT_TASK, values)

    @activity.defn(name=NEXT_OCCURRENCE)
    async def next_occurrence(self, input: NextOccurrenceInput) -> datetime | None:
        """The series' next due time (None: it is over). A rule that cannot be used fails for good, with
        the reason for its user; a busy evaluator is retried (the workflow's NEXT_RETRY)."""
        if self.rules is None:
            raise RuntimeError("this worker was built without a RuleRunner (tickler/worker.py builds one)")
        try:
            return await self.rules.next_occurrence(
                input.recurrence, input.timezone, input.after, input.start
            )
        except RuleUnusable as exc:
            raise ApplicationError(str(exc), type=RECURRENCE_UNUSABLE, non_retryable=True) from None

    @activity.defn(name=DELIVER_REMINDER)
    async def deliver_reminder(self, input: DeliverReminderInput) -> int | None:
        """Write the occurrence's one notification row, then publish it. Returns its id (None: not due).

        Waits for ``input.not_before`` first (at most DELIVER_AHEAD, whatever the clocks say): the
        workflow's timer fires that much early so that this write lands on the instant, never before."""
        if activity.info().attempt > 1:
            self.metrics.retries.add(1)
        with self.deliveries.delivering():
            return await self._deliver(input)

    async def _deliver(self, input: DeliverReminderInput) -> int | None:
        await _wait_for(input.not_before, DELIVER_AHEAD)
        async with self.autocommit.connect() as connection:
            row = (
                await connection.execute(
                    _DELIVER,
                    {
                        "task_id": input.task_id,
                        "organization_id": input.organization_id,
                        "signature": self.signer.sign(input.organization_id),
                        "dedupe_key": input.dedupe_key,
                        "offset_seconds": input.offset_seconds,
                        "due_at": input.due_at,
                    },
                )
            ).first()
        if row is None:  # the row of a retried delivery vanished: its task was deleted meanwhile
            self.metrics.failed[TASK_DELETED].add(1)
            raise ApplicationError(f"task {input.task_id} was deleted during delivery", non_retryable=True)
        if row.outcome == "missing":
            self.metrics.failed[TASK_MISSING].add(1)
            raise ApplicationError(
                f"task {input.task_id} of organization {input.organization_id} does not exist",
                type="TaskNotFound",
                non_retryable=True,
            )
        if row.outcome == "closed":
            activity.logger.info("reminder not delivered: the task is closed", extra=_log_fields(input))
            return None
        # A retry or a duplicated execution finds the row 'existing' and publishes it again (streams drop
        # duplicates by id), without a predecessor, which only the first delivery knew for sure.
        if row.outcome == "new":
            self.metrics.delivered.add(1)
            self.metrics.row_lateness.record(_lateness(input))
        await publish(
            self.redis,
            self.channel,
            NotificationEvent(
                organization_id=row.organization_id,
                user_id=row.user_id,
                event="notification",
                id=row.id,
                data=notification_message(row),
                previous_id=row.previous_id,
            ),
        )
        # Each publication, a retry's too: one that had to publish again reached its user that late.
        self.metrics.published_lateness.record(_lateness(input))
        activity.logger.info(
            "reminder delivered as notification %d",
            row.id,
            extra={**_log_fields(input), "notification_id": row.id, "outcome": row.outcome},
        )
        notification_id: int = row.id
        return notification_id


def _lateness(input: DeliverReminderInput) -> timedelta:
    """How late the reminder is now; due_at minus the offset is when it was meant to fire."""
    late = datetime.now(UTC) - (input.due_at - timedelta(seconds=input.offset_seconds))
    return max(late, timedelta(0))


def _log_fields(input: DeliverReminderInput) -> dict[str, object]:
    """A delivery's log fields: its task's, and which reminder (never the task's title or notes)."""
    workflow_id = activity.info().workflow_id or task_workflow_id(input.task_id)
    fields = task_fields(input.task_id, workflow_id, input.organization_id)
    return {**fields, "dedupe_key": input.dedupe_key}


async def _wait_for(instant: datetime, at_most: timedelta) -> None:
    """Sleep until the wall clock reads ``instant`` (a sleep may end a hair early: look again)."""
    deadline = datetime.now(UTC) + at_most
    while (now := datetime.now(UTC)) < instant and now < deadline:  # noqa: ASYNC110 (a clock, not an event)
        await asyncio.sleep((min(instant, deadline) - now).total_seconds())
