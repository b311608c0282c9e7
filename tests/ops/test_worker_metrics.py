"""What the delivery activity counts, read from the worker's Prometheus exporter (the Temporal SDK's):
reminders delivered once, their lateness at each stage, retries, and failures for good; every counter there
at 0 before anything happens."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.tasks import TaskActivities
from core.db import tenant_transaction
from core.payloads import DeliverReminderInput
from core.pubsub import Channel
from core.settings import Settings
from core.temporal import metrics_runtime
from tests.helpers import new_org, task_row, wait_until
from tickler import devstack


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, without the SDK's service_name label."""
    found = {}
    for line in text.splitlines():
        if line.startswith("tickler_"):
            series, value = line.rsplit(" ", 1)
            found[re.sub(r',?service_name="[^"]*"', "", series).replace("{,", "{").replace("{}", "")] = float(
                value
            )
    return found


async def test_deliveries_count_once_with_their_lateness_retries_and_failures(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    port = devstack.free_port()
    runtime = metrics_runtime(f"127.0.0.1:{port}")
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings), metric_meter=runtime.metric_meter)

    async def exported(*wanted: str) -> dict[str, float]:
        """The worker's samples once they hold every one of ``wanted``; empty until then."""
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:  # the exporter starts in the background
            return {}
        found = samples(text)
        return found if all(name in found for name in wanted) else {}

    before = await wait_until(lambda: exported("tickler_reminders_delivered"), what="the exporter")
    assert before["tickler_reminders_delivered"] == 0
    assert before["tickler_delivery_retries"] == 0
    assert before['tickler_deliveries_failed{reason="task_missing"}'] == 0
    assert before['tickler_deliveries_failed{reason="task_deleted"}'] == 0

    org = new_org()
    # Due two seconds ago: the reminder is that late.
    task = task_row(org=org, due_at=datetime.now(UTC) - timedelta(seconds=2))
    async with tenant_transaction(sessionmaker, org) as session:
        session.add(task)
    delivery = DeliverReminderInput(
        task_id=task.id,
        organization_id=org,
        dedupe_key=f"{task.id}/1/0",
        due_at=task.due_at,
        not_before=task.due_at,
    )
    first = ActivityEnvironment()
    await first.run(activities.deliver_reminder, delivery)
    # The same delivery again, as its retry: the row exists already, so it is published again only.
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    await retry.run(activities.deliver_reminder, delivery)
    missing = delivery.model_copy(update={"task_id": task_row(org=org).id})
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(activities.deliver_reminder, missing)

    after = await wait_until(
        lambda: exported('tickler_reminder_lateness_count{stage="published"}'), what="the lateness"
    )
    assert after["tickler_reminders_delivered"] == 1
    assert after['tickler_reminder_lateness_count{stage="row"}'] == 1
    assert after['tickler_reminder_lateness_count{stage="published"}'] == 2
    # In seconds: about two.
    assert after['tickler_reminder_lateness_bucket{stage="row",le="1"}'] == 0
    assert after['tickler_reminder_lateness_bucket{stage="row",le="2.5"}'] == 1
    assert after["tickler_delivery_retries"] == 1
    assert after['tickler_deliveries_failed{reason="task_missing"}'] == 1
    assert after['tickler_deliveries_failed{reason="task_deleted"}'] == 0
