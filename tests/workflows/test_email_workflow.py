"""The email escalation's workflow on the time-skipping server, its activity faked: it waits until the
notification has been unread long enough, waits out quiet hours, and retries a failing SMTP server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.payloads import EMAIL_NOTIFICATION, EmailInput, EmailOutcome, email_workflow_id
from workflows.email import EmailEscalation


@dataclass
class FakeMailer:
    """Answers with ``script`` in turn (an exception is raised), recording when it was asked."""

    env: WorkflowEnvironment
    script: list[EmailOutcome | Exception]
    asked: list[datetime] = field(default_factory=list)

    @activity.defn(name=EMAIL_NOTIFICATION)
    async def email_notification(self, input: EmailInput) -> EmailOutcome:
        self.asked.append(await self.env.get_current_time())
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@asynccontextmanager
async def email_worker(env: WorkflowEnvironment, mailer: FakeMailer) -> AsyncIterator[str]:
    task_queue = f"email-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=task_queue, workflows=[EmailEscalation], activities=[mailer.email_notification]
    ):
        yield task_queue


async def start_escalation(
    env: WorkflowEnvironment, task_queue: str, send_after: datetime
) -> WorkflowHandle[EmailEscalation, str]:
    input = EmailInput(organization_id="org-1", notification_id=7, send_after=send_after)
    return await env.client.start_workflow(
        EmailEscalation.run,
        input,
        id=f"{email_workflow_id('org-1', 7)}-{uuid.uuid4().hex[:6]}",
        task_queue=task_queue,
    )


async def test_waits_for_the_delay_and_the_quiet_hours_and_retries_the_smtp_server(
    env: WorkflowEnvironment,
) -> None:
    start = await env.get_current_time()
    quiet_end = start + timedelta(hours=9)
    mailer = FakeMailer(
        env,
        [
            EmailOutcome(result="quiet hours", wait_until=quiet_end),
            ConnectionRefusedError("the SMTP server is down"),
            EmailOutcome(result="sent"),
        ],
    )
    async with email_worker(env, mailer) as queue:
        handle = await start_escalation(env, queue, start + timedelta(minutes=10))
        assert await handle.result() == "sent"
    first, after_quiet, retried = mailer.asked
    assert first >= start + timedelta(minutes=10)
    assert after_quiet >= quiet_end
    assert retried >= after_quiet + timedelta(seconds=10)  # the retry policy's first interval


async def test_a_notification_read_first_ends_it_without_mail(env: WorkflowEnvironment) -> None:
    mailer = FakeMailer(env, [EmailOutcome(result="read")])
    async with email_worker(env, mailer) as queue:
        handle = await start_escalation(env, queue, await env.get_current_time())
        assert await handle.result() == "read"
        assert await handle.query("status") == "read"
    assert len(mailer.asked) == 1
