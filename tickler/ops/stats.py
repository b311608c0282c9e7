"""`tickler stats --org ORG`: one organization's figures, from its rows (docs/operations.md, "One
organization"). Metrics carry no organization label (it would explode their series); an operator who
needs one organization's answer asks PostgreSQL, and Temporal's visibility for its workflows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError

from core.settings import Settings
from core.temporal import DUE_AT, ORGANIZATION_ID, TASK_STATUS
from tickler.ops.audit import LAST_REMINDER, OVERDUE, overdue_bounds, running_query, visibility_literal

# Lateness: from the instant a reminder was due (due_at minus its offset) to its notification row.
_LATENESS = text(
    """
    WITH late AS (
        SELECT n.read_at,
               extract(epoch FROM n.created_at - fire.at)::float8 AS seconds
        FROM notifications n
        CROSS JOIN LATERAL (
            SELECT n.due_at - make_interval(
                secs => coalesce((n.payload->>'offset_seconds')::int, 0)
            ) AS at
        ) AS fire
        WHERE n.organization_id = :org AND fire.at >= :since AND fire.at < :until
    )
    SELECT count(*) AS delivered,
           count(*) FILTER (WHERE read_at IS NOT NULL) AS read,
           percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY seconds) AS percentiles,
           max(seconds) AS max
    FROM late
    """
)
_TASKS = text(
    f"""
    SELECT count(*) FILTER (WHERE t.status = 'open') AS open,
           count(*) FILTER (WHERE t.status = 'done') AS done,
           count(*) FILTER (WHERE t.status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE t.status = 'open' AND fire.at > :now) AS upcoming,
           count(*) FILTER (WHERE {OVERDUE}) AS overdue_undelivered,
           count(*) FILTER (WHERE t.status = 'open' AND t.due_at <= :now) AS past_due
    FROM tasks t {LAST_REMINDER}
    WHERE t.organization_id = :org
    """
)


class Lateness(BaseModel):
    """Seconds from due to the notification row, over the reminders due in the period."""

    delivered: int
    read: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


class Pending(BaseModel):
    open: int
    done: int
    cancelled: int
    # Open tasks whose last reminder is still to come.
    upcoming: int
    # Open tasks past their due time: most were reminded and wait for their user to complete them.
    past_due: int
    # Open tasks whose last reminder is late by more than TICKLER_AUDIT_OVERDUE_AFTER_SECONDS with no
    # notification row: what the audit reports as `overdue`.
    overdue_undelivered: int


class Workflows(BaseModel):
    running: int | None = None
    error: str | None = None
    # The visibility queries that list them, for the Web UI or `temporal workflow list --query`.
    queries: dict[str, str] = Field(default_factory=dict)


class OrganizationStats(BaseModel):
    organization_id: str
    since: datetime
    until: datetime
    lateness: Lateness
    tasks: Pending
    workflows: Workflows
    # Failed deliveries leave no row: see the note.
    delivery_failures: int | None = None
    note: str = (
        "Deliveries that failed for good are not recorded per organization: the worker logs each "
        "('reminder ... not delivered', with the organization) and counts them in "
        "tickler_deliveries_failed without one. tasks.overdue_undelivered is what they leave behind, "
        "with any other undelivered reminder."
    )


def visibility_queries(organization_id: str, now: datetime) -> dict[str, str]:
    org = f"{ORGANIZATION_ID.name}={visibility_literal(organization_id)}"
    return {
        "running": running_query(organization_id),
        "open": f"{org} AND {TASK_STATUS.name}='open'",
        "open and past due": (
            f"{org} AND {TASK_STATUS.name}='open' AND ExecutionStatus='Running' "
            f"AND {DUE_AT.name} < '{now.strftime('%Y-%m-%dT%H:%M:%SZ')}'"
        ),
        "terminated": f"{org} AND WorkflowType='TaskWorkflow' AND ExecutionStatus='Terminated'",
    }


async def organization_stats(
    sessionmaker: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    organization_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> OrganizationStats:
    """One organization's figures over [since, until) (default: the last 24 hours)."""
    now = datetime.now(UTC)
    until = until or now
    since = since or until - timedelta(days=1)
    values: dict[str, Any] = {"org": organization_id, "since": since, "until": until, "now": now}
    async with sessionmaker() as session:
        late = (await session.execute(_LATENESS, values)).one()
        tasks = (await session.execute(_TASKS, values | overdue_bounds(settings, now))).one()
    p50, p90, p99 = late.percentiles or (None, None, None)
    workflows = Workflows(queries=visibility_queries(organization_id, now))
    try:
        workflows.running = (await temporal.count_workflows(running_query(organization_id))).count
    except RPCError as exc:
        workflows.error = f"Temporal did not answer: {exc}"
    return OrganizationStats(
        organization_id=organization_id,
        since=since,
        until=until,
        lateness=Lateness(
            delivered=late.delivered,
            read=late.read,
            p50=p50,
            p90=p90,
            p99=p99,
            max=float(late.max) if late.max is not None else None,
        ),
        tasks=Pending(**tasks._mapping),
        workflows=workflows,
    )
