"""One event's delivery to one webhook endpoint (issue 18): retried with exponential backoff across
restarts for up to a day; then the endpoint is disabled with the reason. A slow or dead receiver holds
only its own workflow: never a reminder, never another endpoint."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.payloads import (
        DELIVER_WEBHOOK,
        DISABLE_ENDPOINT,
        WEBHOOK_WORKFLOW,
        DisableEndpoint,
        WebhookInput,
    )

ATTEMPT_TIMEOUT = timedelta(seconds=30)
# 5 s, 10 s, 20 s, ... at most an hour apart, for a day in all.
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), backoff_coefficient=2.0, maximum_interval=timedelta(hours=1)
)
GIVE_UP = timedelta(days=1)


@workflow.defn(name=WEBHOOK_WORKFLOW)
class WebhookDelivery:
    @workflow.run
    async def run(self, input: WebhookInput) -> str:
        try:
            result: str = await workflow.execute_activity(
                DELIVER_WEBHOOK,
                input,
                result_type=str,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=GIVE_UP,
                retry_policy=WEBHOOK_RETRY,
            )
            return result
        except (ActivityError, ApplicationError) as exc:
            cause = exc.cause if isinstance(exc, ActivityError) and exc.cause is not None else exc
            reason = f"event {input.event_id} undelivered: {cause}"
        await workflow.execute_activity(
            DISABLE_ENDPOINT,
            DisableEndpoint(
                organization_id=input.organization_id, endpoint_id=input.endpoint_id, reason=reason
            ),
            start_to_close_timeout=ATTEMPT_TIMEOUT,
        )
        return "endpoint disabled"
