"""The Temporal worker process: wires the task workflow to its activities and their clients."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from activities.tasks import TaskActivities
from core.db import make_engine, make_sessionmaker
from core.pubsub import make_redis
from core.settings import Settings
from core.temporal import connect, metrics_runtime
from workflows.task import TaskWorkflow

log = logging.getLogger(__name__)


def build_worker(client: Client, settings: Settings, activities: TaskActivities) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TaskWorkflow],
        activities=[activities.save_task, activities.next_occurrence, activities.deliver_reminder],
    )


async def run_worker(settings: Settings) -> None:
    engine = make_engine(settings, application_name="tickler-worker")
    redis = make_redis(settings)
    try:
        runtime = None
        if settings.worker_metrics_port:
            runtime = metrics_runtime(f"127.0.0.1:{settings.worker_metrics_port}")
        client = await connect(settings, runtime)
        activities = TaskActivities(make_sessionmaker(engine), redis, settings.redis_channel)
        worker = build_worker(client, settings, activities)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with worker:
            log.info(
                "worker polling task queue %r at %s", settings.temporal_task_queue, settings.temporal_address
            )
            await stop.wait()
            log.info("worker stopping")
    finally:
        await redis.aclose()
        await engine.dispose()
