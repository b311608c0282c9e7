"""One notification's email escalation (issue 18): wait until it has been unread long enough, then mail
it unless it was read meanwhile; quiet hours postpone it to their end. The SMTP server's failures are
retried with backoff for up to a day; a reminder's delivery to the page never waits for any of it."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.payloads import EMAIL_NOTIFICATION, EMAIL_WORKFLOW, EmailInput, EmailOutcome

EMAIL_TIMEOUT = timedelta(minutes=2)
# A failing SMTP server (or none configured yet) is tried again after 10 s, then less and less often, up
# to every 10 minutes, for a day.
EMAIL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=10)
)
EMAIL_GIVE_UP = timedelta(days=1)


@workflow.defn(name=EMAIL_WORKFLOW)
class EmailEscalation:
    def __init__(self) -> None:
        self.status = "waiting"

    @workflow.query(name="status")
    def current(self) -> str:
        return self.status

    @workflow.run
    async def run(self, input: EmailInput) -> str:
        until = input.send_after
        while True:
            wait = (until - workflow.now()).total_seconds()
            if wait > 0:
                await workflow.sleep(wait)
            self.status = "sending"
            outcome: EmailOutcome = await workflow.execute_activity(
                EMAIL_NOTIFICATION,
                input,
                result_type=EmailOutcome,
                start_to_close_timeout=EMAIL_TIMEOUT,
                schedule_to_close_timeout=EMAIL_GIVE_UP,
                retry_policy=EMAIL_RETRY,
            )
            if outcome.wait_until is None:
                self.status = outcome.result
                return outcome.result
            self.status = f"{outcome.result} until {outcome.wait_until.isoformat()}"
            until = outcome.wait_until
