"""Request and response bodies of the inbox routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class NotificationOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    task_id: uuid.UUID
    kind: str
    title: str
    due_at: datetime
    created_at: datetime
    read_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next, older page.")


class NotificationQuery(BaseModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(
        None, pattern=r"^[0-9]{1,19}$", description="`next_cursor` of the previous page."
    )
