"""An organization's webhook endpoints: its admins' only, in its organization only."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select

from core.auth import ADMIN_ROLE, Principal
from core.db import tenant_transaction
from core.errors import Conflict, Forbidden, NotFound, Unprocessable
from core.models import WebhookDelivery, WebhookEndpoint
from core.settings import DEV_ENV
from core.webhooks import RESOLVE_SECONDS, DestinationRefused, destination_checked, new_secret
from web.resources import Resources
from web.webhooks.schemas import EndpointCreate

DELIVERIES_SHOWN = 100
# Each event of the organization starts one workflow per endpoint, from its task's save: the number of
# endpoints bounds what one organization's admins can make every save of theirs cost Temporal.
MAX_ENDPOINTS = 20


def check_admin(who: Principal) -> None:
    if ADMIN_ROLE not in who.roles:
        raise Forbidden(
            f"Only your organization's admins manage webhooks: the token's `roles` must hold `{ADMIN_ROLE}`."
        )


async def create(res: Resources, who: Principal, body: EndpointCreate) -> WebhookEndpoint:
    check_admin(who)
    allow_internal = res.settings.env == DEV_ENV
    try:
        await destination_checked(body.url, allow_internal=allow_internal)
    except DestinationRefused as exc:
        raise Unprocessable(f"The URL cannot be used: {exc}.") from None
    except TimeoutError:
        raise Unprocessable(f"The URL's host did not resolve within {RESOLVE_SECONDS:.0f} s.") from None
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        organization_id=who.organization_id,
        url=body.url,
        events=list(body.events),
        secret=new_secret(),
    )
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        held = await session.scalar(
            select(func.count()).where(WebhookEndpoint.organization_id == who.organization_id)
        )
        if (held or 0) >= MAX_ENDPOINTS:
            raise Conflict(f"Your organization has {MAX_ENDPOINTS} endpoints already: delete one first.")
        session.add(endpoint)
        await session.flush()
        await session.refresh(endpoint)
    return endpoint


async def listed(res: Resources, who: Principal) -> list[WebhookEndpoint]:
    check_admin(who)
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        rows = await session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.organization_id == who.organization_id)
            .order_by(WebhookEndpoint.created_at)
        )
        return list(rows)


async def remove(res: Resources, who: Principal, endpoint_id: uuid.UUID) -> None:
    check_admin(who)
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        gone = await session.execute(
            delete(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organization_id == who.organization_id
            )
        )
    if gone.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No webhook endpoint {endpoint_id} in your organization.")


async def deliveries(res: Resources, who: Principal, endpoint_id: uuid.UUID) -> list[WebhookDelivery]:
    check_admin(who)
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        found = await session.scalar(
            select(WebhookEndpoint.id).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organization_id == who.organization_id
            )
        )
        if found is None:
            raise NotFound(f"No webhook endpoint {endpoint_id} in your organization.")
        rows = await session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.organization_id == who.organization_id,
            )
            .order_by(WebhookDelivery.id.desc())
            .limit(DELIVERIES_SHOWN)
        )
        return list(rows)
