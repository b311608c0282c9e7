"""A webhook delivery's workflow on the time-skipping server, its activities faked: retried with backoff,
and after a day of failures its endpoint is disabled with the reason."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.payloads import DELIVER_WEBHOOK, DISABLE_ENDPOINT, DisableEndpoint, WebhookInput
from workflows.webhook import WebhookDelivery


@dataclass
class FakeReceiver:
    env: WorkflowEnvironment
    fail_first: int
    attempts: list[datetime] = field(default_factory=list)
    disabled: list[DisableEndpoint] = field(default_factory=list)

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(self, input: WebhookInput) -> str:
        self.attempts.append(await self.env.get_current_time())
        if len(self.attempts) <= self.fail_first:
            raise ApplicationError("answered 500")
        return "delivered"

    @activity.defn(name=DISABLE_ENDPOINT)
    async def disable_endpoint(self, input: DisableEndpoint) -> None:
        self.disabled.append(input)


@asynccontextmanager
async def webhook_worker(env: WorkflowEnvironment, fake: FakeReceiver) -> AsyncIterator[str]:
    task_queue = f"hooks-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[WebhookDelivery],
        activities=[fake.deliver_webhook, fake.disable_endpoint],
    ):
        yield task_queue


async def start_delivery(env: WorkflowEnvironment, task_queue: str) -> WorkflowHandle[WebhookDelivery, str]:
    input = WebhookInput(
        organization_id="org-1",
        endpoint_id=uuid.uuid4(),
        event_id="evt_1",
        event_type="task.changed",
        body="{}",
    )
    return await env.client.start_workflow(
        WebhookDelivery.run, input, id=f"webhook-{uuid.uuid4().hex}", task_queue=task_queue
    )


async def test_failures_are_retried_with_growing_waits_until_one_is_taken(env: WorkflowEnvironment) -> None:
    fake = FakeReceiver(env, fail_first=3)
    async with webhook_worker(env, fake) as queue:
        assert await (await start_delivery(env, queue)).result() == "delivered"
    waits = [later - earlier for earlier, later in zip(fake.attempts, fake.attempts[1:], strict=False)]
    assert [round(w.total_seconds()) for w in waits] == [5, 10, 20]
    assert fake.disabled == []


async def test_after_a_day_of_failures_the_endpoint_is_disabled_with_the_reason(
    env: WorkflowEnvironment,
) -> None:
    fake = FakeReceiver(env, fail_first=10_000)
    async with webhook_worker(env, fake) as queue:
        assert await (await start_delivery(env, queue)).result() == "endpoint disabled"
    assert fake.attempts[-1] - fake.attempts[0] <= timedelta(days=1)
    assert len(fake.attempts) > 20
    [disabled] = fake.disabled
    assert "answered 500" in disabled.reason
