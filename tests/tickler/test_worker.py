"""`tickler worker` as operators run it: a process of its own, with its Prometheus metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from core.settings import Settings
from tests.helpers import start_task, task_state, wait_until
from tickler import devstack


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    port = devstack.free_port()
    own = settings.model_copy(update={"temporal_task_queue": f"metrics-{uuid.uuid4().hex[:8]}"})
    env = os.environ | {
        "TICKLER_DATABASE_URL": own.database_url,
        "TICKLER_REDIS_URL": own.redis_url,
        "TICKLER_REDIS_CHANNEL": own.redis_channel,
        "TICKLER_TEMPORAL_ADDRESS": own.temporal_address,
        "TICKLER_TEMPORAL_TASK_QUEUE": own.temporal_task_queue,
        "TICKLER_WORKER_METRICS_PORT": str(port),
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tickler", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield own, port
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        log.close()


async def test_the_worker_exports_lateness_and_rejected_signals(
    worker_process: tuple[Settings, int], temporal: Client
) -> None:
    settings, port = worker_process
    state = task_state(due_in=timedelta(seconds=1))
    handle = await start_task(temporal, state, settings.temporal_task_queue)
    await handle.signal("reschedule", {"due_at": "not a time"})

    async def metrics() -> str:
        """The exposition once it holds both of our metrics; empty until then."""
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            return ""
        return text if "tickler_reminder_lateness_count" in text and "tickler_rejected" in text else ""

    text = await wait_until(metrics, within=20, what="the lateness histogram and the rejected-signal counter")
    assert 'signal="reschedule"' in text
    await handle.terminate("test over")
