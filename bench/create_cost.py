"""Where a create's CPU goes: `python -m bench.create_cost [--count N]` (a lever study, not in `make bench`).

Starts its own PostgreSQL, Redis and Temporal dev server, runs the product's worker in this process,
and creates ``count`` tasks 32 in flight in three ways, reporting creates per second (until each call
returns) and the CPU per create of the Temporal server and of this process (worker and client):

  update-with-start   what POST /v1/tasks does: start, then wait until the workflow has saved the row
  start               start only; the workflow saves the row in its first workflow task
  start, saved        start only, with the row marked saved: no save at all (a floor, not a design)
  start, eager        start only, asking the server to hand the first workflow task straight back to
                      this process's worker (eager workflow start): no matching, no poll
  start, saved, eager both
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from activities.tasks import TaskActivities
from core.db import make_engine, make_sessionmaker
from core.payloads import SYNC_UPDATE, TASK_WORKFLOW, WORKFLOW_VERSION, TaskState, TaskWorkflowInput
from core.pubsub import Channel, make_redis
from core.settings import Settings
from core.temporal import connect
from tickler import devstack
from tickler.migrate import upgrade
from tickler.worker import build_worker

CONCURRENCY = 32
SETTLE_SECONDS = 3.0  # first workflow tasks still running when the last call returned


def _state() -> TaskState:
    now = datetime.now(UTC)
    return TaskState(
        task_id=uuid.uuid4(),
        organization_id="create-cost",
        assignee_id="1",
        created_by="1",
        title="Call Ana back",
        due_at=now + timedelta(days=1),
        created_at=now,
        updated_at=now,
    )


def _ways(client: Client, queue: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def update_with_start() -> object:
        state = _state()
        start: WithStartWorkflowOperation[Any, TaskState] = WithStartWorkflowOperation(
            TASK_WORKFLOW,
            TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
            id=f"task-{state.task_id}",
            task_queue=queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=TaskState,
        )
        return await client.execute_update_with_start_workflow(
            SYNC_UPDATE, start_workflow_operation=start, result_type=TaskState
        )

    def start(saved: bool, eager: bool = False) -> Callable[[], Awaitable[object]]:
        async def go() -> object:
            state = _state()
            handle = await client.start_workflow(
                TASK_WORKFLOW,
                TaskWorkflowInput(state=state, saved=saved, version=WORKFLOW_VERSION),
                id=f"task-{state.task_id}",
                task_queue=queue,
                request_eager_start=eager,
            )
            if eager and not getattr(handle, "__temporal_eagerly_started", False):
                not_eager.append(handle.id)
            return handle

        return go

    return {
        "update-with-start": update_with_start,
        "start": start(False),
        "start, saved": start(True),
        "start, eager": start(False, eager=True),
        "start, saved, eager": start(True, eager=True),
    }


# Eager starts the server declined (no free slot in the worker, or eager start disabled).
not_eager: list[str] = []


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(count: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tickler-create-cost-"))
    ports = [devstack.free_port() for _ in range(3)]
    servers = [
        devstack.start_postgres(folder, ports[0]),
        devstack.start_redis(folder, ports[1]),
        devstack.start_temporal(folder, ports[2], None),
    ]
    try:
        settings = Settings(
            database_url=f"postgresql+asyncpg://tickler_login@127.0.0.1:{ports[0]}/tickler",
            migration_database_url=f"postgresql+asyncpg://tickler@127.0.0.1:{ports[0]}/tickler",
            redis_url=f"redis://127.0.0.1:{ports[1]}/0",
            temporal_address=f"127.0.0.1:{ports[2]}",
        )
        await asyncio.to_thread(upgrade, settings.migration_url())
        client = await connect(settings)
        engine = make_engine(settings, application_name="create-cost")
        redis = make_redis(settings)
        temporal, this = psutil.Process(servers[2].popen.pid), psutil.Process()
        activities = TaskActivities(make_sessionmaker(engine), redis, Channel("create-cost", os.urandom(32)))
        try:
            async with build_worker(client, settings, activities):
                ways = _ways(client, settings.temporal_task_queue)
                # A warm-up round, then each way; update-with-start again last, to see the drift.
                for name in ["update-with-start", *ways, "update-with-start"]:
                    slots = asyncio.Semaphore(CONCURRENCY)

                    async def one(
                        way: Callable[[], Awaitable[object]] = ways[name], slots: asyncio.Semaphore = slots
                    ) -> None:
                        async with slots:
                            await way()

                    not_eager.clear()
                    cpu_temporal, cpu_this, began = _cpu(temporal), _cpu(this), time.perf_counter()
                    await asyncio.gather(*(one() for _ in range(count)))
                    seconds = time.perf_counter() - began
                    await asyncio.sleep(SETTLE_SECONDS)
                    print(
                        f"{name:18} {count / seconds:6.1f} creates/s   CPU per create: Temporal "
                        f"{1000 * (_cpu(temporal) - cpu_temporal) / count:5.2f} ms, worker and client "
                        f"{1000 * (_cpu(this) - cpu_this) / count:5.2f} ms"
                        + (f" ({len(not_eager)} not eager)" if "eager" in name else ""),
                        flush=True,
                    )
        finally:
            await redis.aclose()
            await engine.dispose()
    finally:
        for server in reversed(servers):
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.create_cost", description=__doc__)
    parser.add_argument("--count", type=int, default=400)
    asyncio.run(measure(parser.parse_args().count))


if __name__ == "__main__":
    main()
