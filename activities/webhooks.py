"""Webhook deliveries (issue 18): which endpoints an event goes to, and one attempt at POSTing it.

Events are dispatched after what they tell of is done (a task's row saved, a reminder's notification
written), one workflow per event and endpoint (workflows/webhook.py), whose retries and timers survive
restarts; nothing here runs on a reminder's way to the page."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import any_, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from core.db import tenant_transaction
from core.models import Notification, WebhookDelivery, WebhookEndpoint, notification_message
from core.payloads import (
    DELIVER_WEBHOOK,
    DISABLE_ENDPOINT,
    WEBHOOK_UNDELIVERABLE,
    WEBHOOK_WORKFLOW,
    DisableEndpoint,
    WebhookInput,
    webhook_workflow_id,
)
from core.settings import DEV_ENV, Settings
from core.temporal import start_once
from core.webhooks import RESOLVE_SECONDS, DestinationRefused, destination_checked, headers

# A receiver has this long to answer; redirects are not followed (a 3xx is a failed attempt).
REQUEST_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# What of a receiver's error is kept with the attempt.
ERROR_CHARS = 500


class Webhooks:
    """Starts the deliveries of an organization's events to its enabled endpoints that want them."""

    def __init__(
        self, client: Client, task_queue: str, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.sessionmaker = sessionmaker

    async def _endpoints(
        self, session: AsyncSession, organization_id: str, event_type: str
    ) -> list[uuid.UUID]:
        return list(
            await session.scalars(
                select(WebhookEndpoint.id).where(
                    WebhookEndpoint.organization_id == organization_id,
                    WebhookEndpoint.disabled_at.is_(None),
                    literal(event_type) == any_(WebhookEndpoint.events),
                )
            )
        )

    async def reminder_fired(self, organization_id: str, notification_id: int) -> None:
        """One transaction; the notification is read only for an organization with endpoints for it."""
        async with tenant_transaction(self.sessionmaker, organization_id) as session:
            endpoints = await self._endpoints(session, organization_id, "reminder.fired")
            if not endpoints:
                return
            row = await session.scalar(
                select(Notification).where(
                    Notification.id == notification_id, Notification.organization_id == organization_id
                )
            )
            if row is None:
                return
            data = {**notification_message(row), "user_id": row.user_id}
        await self.start(
            organization_id, "reminder.fired", f"evt_reminder_{notification_id}", data, endpoints
        )

    async def start(
        self,
        organization_id: str,
        event_type: str,
        event_id: str,
        data: dict[str, Any],
        endpoints: list[uuid.UUID],
    ) -> None:
        """One delivery workflow per endpoint (its id from the event's and the endpoint's): starting
        twice starts nothing more."""
        body = json.dumps(
            {"type": event_type, "timestamp": datetime.now(UTC).isoformat(), "data": data},
            separators=(",", ":"),
        )
        for endpoint_id in endpoints:
            input = WebhookInput(
                organization_id=organization_id,
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type=event_type,
                body=body,
            )
            await start_once(
                self.client,
                WEBHOOK_WORKFLOW,
                input,
                webhook_workflow_id(endpoint_id, event_id),
                self.task_queue,
            )


class WebhookActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.allow_internal = settings.env == DEV_ENV

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(self, input: WebhookInput) -> str:
        """One attempt: POST the event, signed; a 2xx is delivered, anything else fails (retried)."""
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            endpoint = await session.scalar(
                select(WebhookEndpoint).where(
                    WebhookEndpoint.id == input.endpoint_id,
                    WebhookEndpoint.organization_id == input.organization_id,
                )
            )
        if endpoint is None:
            return "endpoint deleted"
        if endpoint.disabled_at is not None:
            return "endpoint disabled"
        try:
            await destination_checked(endpoint.url, allow_internal=self.allow_internal)
        except DestinationRefused as exc:
            await self._record(input, None, str(exc))
            raise ApplicationError(str(exc), type=WEBHOOK_UNDELIVERABLE, non_retryable=True) from None
        except TimeoutError:
            slow = f"the host did not resolve within {RESOLVE_SECONDS:.0f} s"
            await self._record(input, None, slow)
            raise ApplicationError(f"{endpoint.url}: {slow}") from None
        body = input.body.encode()
        sent = headers(endpoint.secret, input.event_id, int(time.time()), body)
        status: int | None = None
        error: str | None = None
        try:
            # Streamed and never read: the status is the answer, and a receiver cannot make the worker
            # hold a body of any size.
            async with (
                httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False) as client,
                client.stream("POST", endpoint.url, content=body, headers=sent) as response,
            ):
                status = response.status_code
            if not 200 <= status < 300:
                error = f"answered {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        await self._record(input, status, error)
        if error is not None:
            raise ApplicationError(f"{endpoint.url}: {error}")
        return "delivered"

    async def _record(self, input: WebhookInput, status: int | None, error: str | None) -> None:
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            await session.execute(
                insert(WebhookDelivery).values(
                    organization_id=input.organization_id,
                    endpoint_id=input.endpoint_id,
                    event_id=input.event_id,
                    event_type=input.event_type,
                    attempt=activity.info().attempt,
                    status_code=status,
                    error=error,
                )
            )

    @activity.defn(name=DISABLE_ENDPOINT)
    async def disable_endpoint(self, input: DisableEndpoint) -> None:
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            await session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.id == input.endpoint_id,
                    WebhookEndpoint.organization_id == input.organization_id,
                    WebhookEndpoint.disabled_at.is_(None),
                )
                .values(disabled_at=datetime.now(UTC), disabled_reason=input.reason[:ERROR_CHARS])
            )
        activity.logger.warning(
            "webhook endpoint %s disabled: %s",
            input.endpoint_id,
            input.reason,
            extra={"organization_id": input.organization_id},
        )
