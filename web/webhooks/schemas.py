"""Webhook endpoints and their deliveries (issue 18)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from core.payloads import WebhookEvent


def _unique(events: list[WebhookEvent]) -> list[WebhookEvent]:
    return sorted(set(events))


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        str,
        StringConstraints(max_length=2000, pattern=r"^https?://[^\s]+$"),
        Field(description="http(s) URL to POST to."),
    ]
    events: Annotated[
        list[WebhookEvent],
        Field(min_length=1, max_length=2, description="Any of `reminder.fired`, `task.changed`."),
        AfterValidator(_unique),
    ]


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = Field(None, description="Why deliveries stopped (failing for a day).")


class EndpointCreated(EndpointOut):
    secret: str = Field(description="`whsec_...`: verifies each delivery's signature. Shown this once.")


class EndpointList(BaseModel):
    items: list[EndpointOut]


class DeliveryOut(BaseModel):
    event_id: str
    event_type: str
    attempt: int
    attempted_at: datetime
    status_code: int | None = None
    error: str | None = None


class DeliveryList(BaseModel):
    items: list[DeliveryOut] = Field(description="The newest attempts first, at most 100.")
