"""The Temporal worker process: wires the task workflow to its activities and their clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from temporalio.client import Client
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.tasks import TaskActivities
from core.db import make_engine, make_sessionmaker
from core.gcwatch import Deliveries, collection_schedule
from core.pubsub import make_redis
from core.recurrence import RuleRunner
from core.settings import Settings
from core.temporal import EventLoopBlockMetrics, connect, gc_pause_histogram, metrics_runtime
from core.watchdog import HealthServer, LoopWatchdog
from workflows.task import TaskWorkflow

log = logging.getLogger(__name__)


def build_worker(client: Client, settings: Settings, activities: TaskActivities) -> Worker:
    """The worker, tuned by settings (docs/performance.md says what each gave)."""
    # The sandbox re-imports the workflow's modules for every new workflow and proxies each access:
    # about half the worker's CPU (docs/performance.md). The tests run it, so its checks still apply.
    runner = SandboxedWorkflowRunner() if settings.worker_sandboxed else UnsandboxedWorkflowRunner()
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TaskWorkflow],
        activities=[activities.save_task, activities.next_occurrence, activities.deliver_reminder],
        # By default one poller in five serves the shared queue, where new workflows and wake-ups of
        # uncached ones arrive: under a burst of creates their first tasks queued and timers armed late.
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(settings.worker_workflow_pollers),
        nonsticky_to_sticky_poll_ratio=settings.worker_sticky_poll_ratio,
        activity_task_poller_behavior=PollerBehaviorSimpleMaximum(settings.worker_activity_pollers),
        max_cached_workflows=settings.worker_cached_workflows,
        workflow_runner=runner,
    )


async def run_worker(settings: Settings) -> None:
    engine = make_engine(settings, application_name="tickler-worker")
    redis = make_redis(settings)
    rules = RuleRunner()
    try:
        runtime = None
        if settings.worker_metrics_port:
            runtime = metrics_runtime(f"127.0.0.1:{settings.worker_metrics_port}")
        client = await connect(settings, runtime)
        deliveries = Deliveries()
        activities = TaskActivities(
            make_sessionmaker(engine), redis, settings.redis_channel, deliveries, rules=rules
        )
        worker = build_worker(client, settings, activities)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        schedule = collection_schedule(
            warn_after_seconds=settings.gc_pause_warning_ms / 1000,
            record=gc_pause_histogram(runtime) if runtime else None,
            between=deliveries if settings.worker_gc_between_deliveries else None,
        )
        watchdog = LoopWatchdog(
            settings.event_loop_block_seconds, EventLoopBlockMetrics(runtime) if runtime else None
        )
        # Not on the event loop, which is what it checks: a blocked loop answers 503, not nothing.
        health: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if settings.worker_health_port:
            checks = {"/healthz": watchdog.problem}
            health = HealthServer(settings.worker_health_host, settings.worker_health_port, checks)
        async with watchdog, health, worker, schedule as frozen:
            log.info(
                "worker polling task queue %r at %s (%d start-up objects frozen out of garbage collection)",
                settings.temporal_task_queue,
                settings.temporal_address,
                frozen,
            )
            if settings.worker_gc_between_deliveries:
                log.info("full garbage collections run between deliveries (decisions 15)")
            await stop.wait()
            log.info("worker stopping")
    finally:
        rules.close()
        await redis.aclose()
        await engine.dispose()
