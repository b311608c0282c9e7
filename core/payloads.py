"""The messages that the web app, the task workflow and the activities exchange through Temporal.

New fields only with defaults: recorded histories must still deserialize.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

TaskStatus = Literal["open", "done", "cancelled"]


class TaskState(BaseModel):
    """A task as its workflow holds it; the ``tasks`` row is a copy written by the workflow."""

    model_config = ConfigDict(frozen=True)

    task_id: uuid.UUID
    organization_id: str
    assignee_id: str
    created_by: str
    title: str
    notes: str | None = None
    due_at: datetime
    status: TaskStatus = "open"
    # Bumped by every change; the row keeps the highest version it saw.
    version: int = 1
    # Bumped whenever due_at moves, so that each arming of the timer is its own occurrence.
    schedule_revision: int = 1
    # The schedule_revision whose reminder has been delivered, if any.
    delivered_revision: int = 0
    created_at: datetime
    updated_at: datetime

    @property
    def reminder_pending(self) -> bool:
        return self.status == "open" and self.delivered_revision < self.schedule_revision

    @property
    def dedupe_key(self) -> str:
        return f"{self.task_id}/{self.schedule_revision}"


class TaskWorkflowInput(BaseModel):
    state: TaskState


class DeliverReminderInput(BaseModel):
    task_id: uuid.UUID
    organization_id: str
    dedupe_key: str
    due_at: datetime


class NotificationEvent(BaseModel):
    """What the web processes receive on the Redis channel and forward to one user's streams."""

    organization_id: str
    user_id: str
    event: str
    id: int | None = None
    data: dict[str, object]


# Names of the workflow, its handlers and its activities: each side refers to them by name, so that
# web/ need not import workflows/, nor workflows/ import activities/.
TASK_WORKFLOW = "TaskWorkflow"
SYNC_UPDATE = "sync"
SAVE_TASK = "save_task"
DELIVER_REMINDER = "deliver_reminder"
