"""`tickler worker` as operators run it: a process of its own, with its Prometheus metrics, health check
and logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner

from activities.tasks import TaskActivities
from core.db import organization_keys
from core.pubsub import Channel
from core.settings import Settings
from tests.helpers import start_task, task_state, wait_until
from tickler import devstack
from tickler.worker import WorkerOptions, build_worker


@dataclass
class WorkerProcess:
    settings: Settings
    metrics_port: int
    health_port: int
    log: Path

    async def metrics(self, *names: str) -> str:
        """The Prometheus exposition once it holds every one of ``names``; empty until then."""
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        except httpx.TransportError:
            return ""
        return text if all(name in text for name in names) else ""


def test_options_leave_the_sdk_defaults_but_the_product_takes_its_settings() -> None:
    """What the bench's "sdk" variant relies on, and what `tickler worker` runs with."""
    assert WorkerOptions().worker_arguments() == {}
    settings = Settings(worker_workflow_pollers=7, worker_cached_workflows=123, worker_sandboxed=False)
    product = WorkerOptions.of(settings).worker_arguments()
    assert product["workflow_task_poller_behavior"] == PollerBehaviorSimpleMaximum(7)
    assert product["max_cached_workflows"] == 123
    assert isinstance(product["workflow_runner"], UnsandboxedWorkflowRunner)
    sandboxed = WorkerOptions.of(settings.model_copy(update={"worker_sandboxed": True}))
    assert "workflow_runner" not in sandboxed.worker_arguments(), "the SDK's default runner is the sandbox"


async def test_a_worker_gives_its_activities_in_hand_time_to_finish_at_shutdown(
    temporal: Client, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """The SDK's default is 0 s: a delivery in hand at SIGTERM was cancelled."""
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    patient = settings.model_copy(
        update={"worker_graceful_shutdown_seconds": 7, "temporal_task_queue": f"patient-{uuid.uuid4().hex}"}
    )
    worker = build_worker(temporal, patient, activities)
    assert worker.config()["graceful_shutdown_timeout"] == timedelta(seconds=7)


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    metrics_port, health_port = devstack.free_port(), devstack.free_port()
    own = settings.model_copy(update={"temporal_task_queue": f"metrics-{uuid.uuid4().hex[:8]}"})
    keys = own.encryption_keys
    assert keys is not None
    env = os.environ | {
        "TICKLER_DATABASE_URL": own.database_url,
        "TICKLER_MAINTENANCE_DATABASE_URL": own.maintenance_url(),
        "TICKLER_REDIS_URL": own.redis_url,
        "TICKLER_REDIS_CHANNEL": own.redis_channel,
        "TICKLER_TEMPORAL_ADDRESS": own.temporal_address,
        "TICKLER_TEMPORAL_TASK_QUEUE": own.temporal_task_queue,
        # The suite's key: the test's client encrypts what this worker must read.
        "TICKLER_ENCRYPTION_KEYS": keys.get_secret_value(),
        "TICKLER_CHANNEL_KEY": Channel.of(own).key.decode(),
        "TICKLER_ORGANIZATION_KEYS": organization_keys(own)[0].decode(),
        "TICKLER_WORKER_METRICS_PORT": str(metrics_port),
        "TICKLER_WORKER_HEALTH_PORT": str(health_port),
        # Every collection is long enough to be logged: the log must show them.
        "TICKLER_GC_PAUSE_WARNING_MS": "0.0001",
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tickler", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield WorkerProcess(own, metrics_port, health_port, tmp_path / "worker.log")
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        log.close()


async def test_the_worker_exports_lateness_rejected_signals_and_collections(
    worker_process: WorkerProcess, temporal: Client
) -> None:
    settings = worker_process.settings
    state = task_state(due_in=timedelta(seconds=1))
    handle = await start_task(temporal, state, settings.temporal_task_queue)
    await handle.signal("reschedule", {"due_at": "not a time"})

    ours = ("tickler_reminder_lateness_count", "tickler_rejected", "tickler_gc_pause_count")
    text = await wait_until(
        lambda: worker_process.metrics(*ours),
        within=20,
        what="lateness, rejected signals and collection pauses",
    )
    assert 'signal="reschedule"' in text
    assert 'tickler_gc_pause_count{generation="0"' in text
    logged = worker_process.log.read_text()
    assert "start-up objects frozen out of garbage collection" in logged
    assert "full garbage collections run between deliveries" in logged
    assert "garbage collection of generation 0 stopped the process for" in logged
    await handle.terminate("test over")


async def test_the_worker_answers_its_health_check_and_counts_failed_workflow_tasks(
    worker_process: WorkerProcess, temporal: Client
) -> None:
    """/healthz is served (its 503 for a blocked loop: tests/core/test_watchdog.py); a workflow task
    that fails is counted by the SDK itself, as ``temporal_workflow_task_execution_failed``."""

    async def healthz() -> httpx.Response | None:
        try:
            async with httpx.AsyncClient() as client:
                return await client.get(f"http://127.0.0.1:{worker_process.health_port}/healthz")
        except httpx.TransportError:
            return None

    response = await wait_until(healthz, within=20, what="the worker's /healthz")
    assert response is not None
    assert (response.status_code, response.text) == (200, "ok\n")
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"http://127.0.0.1:{worker_process.health_port}/readyz")
    assert (ready.status_code, ready.text) == (200, "ok\n"), "PostgreSQL, Redis and Temporal all answer"

    # A workflow type the worker does not know: each of its workflow tasks fails, and is retried.
    handle = await temporal.start_workflow(
        "NoSuchWorkflow",
        id=f"no-such-workflow-{uuid.uuid4()}",
        task_queue=worker_process.settings.temporal_task_queue,
    )
    try:
        text = await wait_until(
            lambda: worker_process.metrics("temporal_workflow_task_execution_failed"),
            within=20,
            what="a failed workflow task on /metrics",
        )
    finally:
        await handle.terminate("test over")
    failed = re.search(r"^temporal_workflow_task_execution_failed\{([^}]*)\} (\d+)$", text, re.MULTILINE)
    assert failed, text
    assert 'workflow_type="NoSuchWorkflow"' in failed.group(1)
    assert int(failed.group(2)) >= 1
    assert "event loop blocked" not in worker_process.log.read_text()
