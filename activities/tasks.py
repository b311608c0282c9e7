"""Activities of the task workflow: persist its state, deliver its reminders.

Both may run more than once (retries, a worker that dies after the write): every write is idempotent.
They run for every create, change and reminder, so their statements are built once, at import, and a
delivery is one round trip (docs/performance.md): a call only binds values.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Table, Text, literal_column, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import ReturningInsert
from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError

from activities.email import Escalations
from activities.webhooks import Webhooks
from activities.wheel import Deliver, DeliveryWheel, wait_for
from core.db import fetch_direct, organization_signer, tenant_transaction
from core.gcwatch import Deliveries
from core.logs import task_fields
from core.models import Task, notification_message, task_row
from core.payloads import (
    ARM_REMINDER,
    DELIVER_AHEAD,
    DELIVER_REMINDER,
    NEXT_OCCURRENCE,
    RECURRENCE_UNUSABLE,
    SAVE_TASK,
    TASK_CHANGED,
    DeliverReminderInput,
    NextOccurrenceInput,
    NotificationEvent,
    TaskOut,
    TaskState,
)
from core.pubsub import Channel, publish, publish_many
from core.recurrence import RuleRunner, RuleUnusable
from core.temporal import task_workflow_id

log = logging.getLogger(__name__)

tasks: Table = Task.__table__  # type: ignore[assignment]

# The row, unless the stored version is newer (a late retry of an older save changes nothing; a retry of
# the same version writes the same values again, and tells the streams again). It returns a row when it
# wrote one, with the assignee before it: a subquery in RETURNING reads the statement's snapshot, the
# row as it was (NULL for a new task).
_UPSERT_TASK: ReturningInsert[str | None, list[uuid.UUID] | None] = (
    (stmt := insert(tasks))
    .on_conflict_do_update(
        index_elements=[tasks.c.id],
        set_={
            c.name: stmt.excluded[c.name]
            for c in tasks.c
            if c.name not in ("id", "organization_id", "created_at", "request_hash")
        },
        where=tasks.c.version <= stmt.excluded.version,
    )
    .returning(
        # Written out: SQLAlchemy does not correlate a subquery of RETURNING with the target table, and
        # would join `tasks` again (one row per task of the organization).
        literal_column(
            "(SELECT prior.assignee_id FROM tasks AS prior WHERE prior.id = tasks.id)", type_=Text
        ).label("previous_assignee"),
        # The organization's endpoints that want the change (issue 18), read in the same round trip: a
        # save of an organization without webhooks costs nothing more (NULL).
        literal_column(
            "(SELECT array_agg(e.id) FROM webhook_endpoints AS e"
            " WHERE e.organization_id = tasks.organization_id"
            " AND e.disabled_at IS NULL AND 'task.changed' = ANY(e.events))",
            type_=ARRAY(UUID(as_uuid=True)),
        ).label("webhook_endpoints"),
    )
)
# A task's change reaches the streams as a hint (the page refetches its list on every reconnect), so a
# Redis that does not answer delays a save this long at most, and does not fail it.
TASK_EVENT_TIMEOUT = 1.0

# A reminder's whole write, in one round trip outside an explicit transaction: the organization (signed,
# core/db.py), the task by id AND organization, the lock of its assignee's notifications, the
# occurrence's one row and the id of the user's row before it (migrations/versions/
# 2026_11_28_deliver_function.py says how; 2026_11_30_signed_organization.py added the signature).
_DELIVER = text(
    "SELECT * FROM deliver_notification("
    ":task_id, :organization_id, :signature, :dedupe_key, :offset_seconds, :due_at)"
)

# Many reminders' writes in one statement, in the order given (the wheel's batch, activities/wheel.py),
# each fenced by the version it was armed with. One statement is one transaction: it holds its rows'
# per-user locks to its end, so the rows come sorted by organization and assignee (two workers' batches
# take them in one order) and BATCH_ROWS at a time (each lock takes a slot of the server's lock table).
# asyncpg's own placeholders: it runs past SQLAlchemy (core/db.py, fetch_direct), on the instant's path.
_DELIVER_MANY = (
    "SELECT b.position, d.* FROM unnest("
    "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::timestamptz[], $7::integer[]"
    ") WITH ORDINALITY AS b(task_id, organization_id, signature, dedupe_key, offset_seconds, due_at, "
    "version, position) "
    "CROSS JOIN LATERAL deliver_notification("
    "b.task_id, b.organization_id, b.signature, b.dedupe_key, b.offset_seconds, b.due_at, b.version) d"
)
BATCH_ROWS = 250


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
        escalations: Escalations | None = None,
        webhooks: Webhooks | None = None,
        warm_deliveries: bool = True,
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
        # Email escalations of the notifications delivered (issue 18); set by tickler/worker.py build_worker.
        self.escalations = escalations
        # Webhook deliveries of task changes and fired reminders (issue 18); set by build_worker too.
        self.webhooks = webhooks
        # Reminders armed ahead of their instant, delivered at it in batches (activities/wheel.py).
        ready = self.ready_to_deliver if warm_deliveries else None
        self.wheel = DeliveryWheel(self.deliver_batch, self.deliveries, ready=ready)

    @activity.defn(name=SAVE_TASK)
    async def save_task(self, state: TaskState) -> None:
        """Upsert the row; a write older than the row's version (a late retry) changes nothing."""
        values = task_row(state)
        async with tenant_transaction(self.sessionmaker, state.organization_id) as session:
            connection = await session.connection()
            written = (await connection.execute(_UPSERT_TASK, values)).one_or_none()
        if written is not None:
            await self._task_changed(state, written.previous_assignee)
            if self.webhooks is not None and written.webhook_endpoints:
                data = TaskOut.from_state(state).model_dump(mode="json")
                event_id = f"evt_task_{state.task_id}_{state.version}"
                await self.webhooks.start(
                    state.organization_id, TASK_CHANGED, event_id, data, written.webhook_endpoints
                )

    async def _task_changed(self, state: TaskState, previous_assignee: str | None) -> None:
        """`event: task.changed` to the streams of the task's assignee, and of the one before if it
        moved: the task as `GET /v1/tasks/<id>` shows it. Best effort: see TASK_EVENT_TIMEOUT."""
        data = TaskOut.from_state(state).model_dump(mode="json")
        users = dict.fromkeys((state.assignee_id, previous_assignee or state.assignee_id))
        events = [
            NotificationEvent(
                organization_id=state.organization_id, user_id=user, event=TASK_CHANGED, data=data
            )
            for user in users
        ]
        try:
            async with asyncio.timeout(TASK_EVENT_TIMEOUT):
                await publish_many(self.redis, self.channel, events)
        except (RedisError, OSError) as exc:  # OSError includes the timeout
            log.warning(
                "task change not published (%s): open pages show it at their next reload or reconnect",
                exc,
                extra=task_fields(state.task_id, task_workflow_id(state.task_id), state.organization_id),
            )

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

    @activity.defn(name=ARM_REMINDER)
    async def arm_reminder(self, input: DeliverReminderInput) -> None:
        """Hand the reminder to this worker's delivery wheel, which delivers it at ``input.not_before``;
        returns at once (workflow version 3, docs/decisions.md §29)."""
        self.wheel.arm(input)

    @activity.defn(name=DELIVER_REMINDER)
    async def deliver_reminder(self, input: DeliverReminderInput) -> int | None:
        """Write the occurrence's one notification row, then publish it. Returns its id (None: not due).

        Version 3 calls it after the instant: the wheel of this worker has usually delivered it, and its
        outcome is the answer. Otherwise it waits for ``input.not_before`` first (at most DELIVER_AHEAD,
        whatever the clocks say: version 2's timer fires that much early so that this write lands on the
        instant, never before)."""
        if activity.info().attempt > 1:
            self.metrics.retries.add(1)
        delivered = await self.wheel.settled(input.dedupe_key)
        if delivered is None:
            with self.deliveries.delivering():
                delivered = await self._deliver(input)
        # After the delivery, never on its way: a user with email escalation gets its workflow, which
        # these retries make sure of (it starts once: its id is the notification's).
        if delivered is not None and self.escalations is not None:
            await self.escalations.consider(input.organization_id, delivered)
        if delivered is not None and self.webhooks is not None:
            await self.webhooks.reminder_fired(input.organization_id, delivered)
        return delivered

    @contextlib.asynccontextmanager
    async def ready_to_deliver(self) -> AsyncIterator[Deliver]:
        """The wheel's delivery, made ready just before its instant: a connection checked out for it,
        and PostgreSQL and Redis each woken by a round trip (activities/wheel.py, WARM)."""
        async with self.autocommit.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
            await self.redis.ping()
            yield functools.partial(self.deliver_batch, connection=connection)

    async def deliver_batch(
        self, inputs: Sequence[DeliverReminderInput], connection: AsyncConnection | None = None
    ) -> list[int | None]:
        """The wheel's delivery: each reminder's notification id (written or found, and published), or
        None where nothing was written (fenced by a newer version, closed, missing). On ``connection``
        (autocommit) when given, else on one of the pool's per chunk."""
        order = sorted(
            range(len(inputs)), key=lambda i: (inputs[i].organization_id, inputs[i].assignee_id or "")
        )
        ids: list[int | None] = [None] * len(inputs)
        outcomes: dict[str, int] = {}
        for start in range(0, len(order), BATCH_ROWS):
            chunk = order[start : start + BATCH_ROWS]
            rows = await self._deliver_many([inputs[i] for i in chunk], connection)
            events, published = [], []
            for row in rows:
                index = chunk[row.position - 1]
                outcomes[row.outcome] = outcomes.get(row.outcome, 0) + 1
                if row.outcome not in ("new", "existing"):
                    continue
                if row.outcome == "new":
                    self.metrics.delivered.add(1)
                    self.metrics.row_lateness.record(_lateness(inputs[index]))
                events.append(_event(row))
                published.append(index)
                ids[index] = row.id
            await publish_many(self.redis, self.channel, events)
            for index in published:
                self.metrics.published_lateness.record(_lateness(inputs[index]))
        log.info(
            "%d reminders due at %s delivered together: %s",
            len(inputs),
            inputs[0].not_before.isoformat() if inputs else "-",
            ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
        )
        # A line per reminder as its workflow's delivery logs one, after every chunk is out.
        for armed, notification_id in zip(inputs, ids, strict=True):
            if notification_id is not None:
                log.info(
                    "reminder delivered as notification %d",
                    notification_id,
                    extra={**_batch_log_fields(armed), "notification_id": notification_id},
                )
        return ids

    async def _deliver_many(
        self, inputs: Sequence[DeliverReminderInput], connection: AsyncConnection | None
    ) -> Sequence[Any]:
        # One HMAC per organization of the chunk, not per reminder (a burst is mostly a few organizations).
        signatures = {org: self.signer.sign(org) for org in {i.organization_id for i in inputs}}
        args = (
            [i.task_id for i in inputs],
            [i.organization_id for i in inputs],
            [signatures[i.organization_id] for i in inputs],
            [i.dedupe_key for i in inputs],
            [i.offset_seconds for i in inputs],
            [i.due_at for i in inputs],
            [i.version for i in inputs],
        )
        if connection is not None:
            return await fetch_direct(connection, _DELIVER_MANY, *args)
        async with self.autocommit.connect() as connection:
            return await fetch_direct(connection, _DELIVER_MANY, *args)

    async def _deliver(self, input: DeliverReminderInput) -> int | None:
        await wait_for(input.not_before, DELIVER_AHEAD)
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
        await publish(self.redis, self.channel, _event(row))
        # Each publication, a retry's too: one that had to publish again reached its user that late.
        self.metrics.published_lateness.record(_lateness(input))
        activity.logger.info(
            "reminder delivered as notification %d",
            row.id,
            extra={**_log_fields(input), "notification_id": row.id, "outcome": row.outcome},
        )
        notification_id: int = row.id
        return notification_id


def _event(row: Any) -> NotificationEvent:
    return NotificationEvent(
        organization_id=row.organization_id,
        user_id=row.user_id,
        event="notification",
        id=row.id,
        data=notification_message(row),
        previous_id=row.previous_id,
    )


def _lateness(input: DeliverReminderInput) -> timedelta:
    """How late the reminder is now; due_at minus the offset is when it was meant to fire."""
    late = datetime.now(UTC) - (input.due_at - timedelta(seconds=input.offset_seconds))
    return max(late, timedelta(0))


def _batch_log_fields(input: DeliverReminderInput) -> dict[str, object]:
    """A line of the wheel's batch: no activity around it, so the workflow id is the task's."""
    fields = task_fields(input.task_id, task_workflow_id(input.task_id), input.organization_id)
    return {**fields, "dedupe_key": input.dedupe_key, "outcome": "wheel"}


def _log_fields(input: DeliverReminderInput) -> dict[str, object]:
    """A delivery's log fields: its task's, and which reminder (never the task's title or notes)."""
    workflow_id = activity.info().workflow_id or task_workflow_id(input.task_id)
    fields = task_fields(input.task_id, workflow_id, input.organization_id)
    return {**fields, "dedupe_key": input.dedupe_key}
