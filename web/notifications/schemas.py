"""Request and response bodies of the inbox routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class NotificationOut(BaseModel):
    id: int
    task_id: uuid.UUID
    kind: str
    title: str
    offset_seconds: int = Field(0, description="The reminder's offset before due_at (0: at due time).")
    due_at: datetime
    created_at: datetime = Field(description="When the reminder fired.")
    read_at: datetime | None


class UnreadCount(BaseModel):
    count: int


class ReadAllResult(BaseModel):
    updated: int = Field(description="How many notifications were marked read.")
    unread_count: int


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` to get the next, older page.")


class NotificationQuery(BaseModel):
    unread: bool | None = Field(None, description="true: only unread ones; false: only read ones.")
    limit: int = Field(50, ge=1, le=200)
    # A cursor is the id of the page's last row (web/notifications/service.py). Up to 18 digits: every
    # string of this form is a bigint the query can take, and ids, counting from 1, never reach 10^18.
    cursor: str | None = Field(
        None, pattern=r"^(?:0|[1-9][0-9]{0,17})$", description="`next_cursor` of the previous page."
    )
