"""Builders and waiting helpers shared by the tests. Tests wait on conditions with a deadline, never sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from core.auth import mint_token
from core.payloads import TaskState
from core.settings import Settings

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], Awaitable[T] | T],
    *,
    within: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` (sync or async) until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        value: T = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)


def new_org() -> str:
    """Each test works in its own organization, so tests never see each other's rows."""
    return f"org-{uuid.uuid4().hex[:12]}"


def bearer(settings: Settings, user: str, org: str, ttl: int = 600) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {mint_token(settings, user_id=user, organization_id=org, ttl_seconds=ttl)}"
    }


def task_state(
    *, org: str | None = None, user: str = "7", due_in: timedelta = timedelta(hours=1), **fields: object
) -> TaskState:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "task_id": uuid.uuid4(),
        "organization_id": org or new_org(),
        "assignee_id": user,
        "created_by": user,
        "title": "Call Ana back",
        "due_at": now + due_in,
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return TaskState.model_validate(values)
