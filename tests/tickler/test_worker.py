"""`tickler worker` as operators run it: a process of its own, with its Prometheus metrics and logs."""

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
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int, Path]]:
    port = devstack.free_port()
    own = settings.model_copy(update={"temporal_task_queue": f"metrics-{uuid.uuid4().hex[:8]}"})
    env = os.environ | {
        "TICKLER_DATABASE_URL": own.database_url,
        "TICKLER_REDIS_URL": own.redis_url,
        "TICKLER_REDIS_CHANNEL": own.redis_channel,
        "TICKLER_TEMPORAL_ADDRESS": own.temporal_address,
        "TICKLER_TEMPORAL_TASK_QUEUE": own.temporal_task_queue,
        "TICKLER_WORKER_METRICS_PORT": str(port),
        # Every collection is long enough to be logged: the log must show them.
        "TICKLER_GC_PAUSE_WARNING_MS": "0.0001",
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tickler", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield own, port, tmp_path / "worker.log"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        log.close()


async def test_the_worker_exports_lateness_rejected_signals_and_collections(
    worker_process: tuple[Settings, int, Path], temporal: Client
) -> None:
    settings, port, log = worker_process
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
        ours = ("tickler_reminder_lateness_count", "tickler_rejected", "tickler_gc_pause_count")
        return text if all(name in text for name in ours) else ""

    text = await wait_until(metrics, within=20, what="lateness, rejected signals and collection pauses")
    assert 'signal="reschedule"' in text
    assert 'tickler_gc_pause_count{generation="0"' in text
    logged = log.read_text()
    assert "start-up objects frozen out of garbage collection" in logged
    assert "full garbage collections run between deliveries" in logged
    assert "garbage collection of generation 0 stopped the process for" in logged
    await handle.terminate("test over")
