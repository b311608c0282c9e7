"""The Temporal worker process: wires the task workflow to its activities and their clients.

`tickler worker` runs it with the options its settings give; the bench (bench/worker.py) runs the same
process with others, to measure what each one is worth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.email import EmailActivities, Escalations
from activities.maintenance import MaintenanceActivities
from activities.tasks import TaskActivities
from activities.webhooks import WebhookActivities, Webhooks
from activities.wheel import DeliveryWheel
from core import readiness
from core.db import make_engine, make_sessionmaker
from core.gcwatch import Deliveries, collection_schedule
from core.payloads import REARM_SIGNAL, DeliverReminderInput
from core.pubsub import Channel, make_redis
from core.recurrence import RuleRunner
from core.settings import Settings
from core.temporal import (
    EventLoopBlockMetrics,
    connect,
    gc_pause_histogram,
    metrics_runtime,
    readiness_gauge,
    task_workflow_id,
)
from core.watchdog import HealthServer, LoopWatchdog
from tickler.ops.connections import maintenance_engine
from tickler.ops.maintenance import Operations
from tickler.ops.schedule import ensure_schedule_at_start
from workflows.email import EmailEscalation
from workflows.maintenance import MaintenanceWorkflow
from workflows.task import TaskWorkflow
from workflows.webhook import WebhookDelivery

log = logging.getLogger(__name__)

# "pass-through": sandboxed, but every module passed through instead of re-imported.
Sandbox = Literal["on", "off", "pass-through"]


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker is tuned. None leaves the SDK's default; ``of(settings)`` gives the product's
    (docs/performance.md says what each gave)."""

    workflow_pollers: int | None = None
    activity_pollers: int | None = None
    # Polls of the shared queue per poll of the worker's own (nonsticky_to_sticky_poll_ratio).
    sticky_poll_ratio: float | None = None
    cached_workflows: int | None = None
    sandbox: Sandbox = "on"
    workflow_task_slots: int | None = None
    activity_slots: int | None = None
    local_activity_slots: int | None = None
    eager_activities: bool = True
    # Off: CPython's own schedule of full garbage collections, and the start-up heap left in them.
    gc_between_deliveries: bool = True
    freeze_startup_heap: bool = True
    # Off: the wheel's deliveries are not made ready ahead of their instant (activities/wheel.py, WARM).
    warm_deliveries: bool = True

    @classmethod
    def of(cls, settings: Settings) -> WorkerOptions:
        return cls(
            workflow_pollers=settings.worker_workflow_pollers,
            activity_pollers=settings.worker_activity_pollers,
            sticky_poll_ratio=settings.worker_sticky_poll_ratio,
            cached_workflows=settings.worker_cached_workflows,
            sandbox="on" if settings.worker_sandboxed else "off",
            gc_between_deliveries=settings.worker_gc_between_deliveries,
        )

    def worker_arguments(self) -> dict[str, Any]:
        """The keyword arguments of temporalio's Worker that these options set."""
        arguments: dict[str, Any] = {}
        # By default one poller in five serves the shared queue, where new workflows and wake-ups of
        # uncached ones arrive: under a burst of creates their first tasks queued and timers armed late.
        if self.workflow_pollers is not None:
            arguments["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(self.workflow_pollers)
        if self.sticky_poll_ratio is not None:
            arguments["nonsticky_to_sticky_poll_ratio"] = self.sticky_poll_ratio
        if self.activity_pollers is not None:
            arguments["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(self.activity_pollers)
        if self.cached_workflows is not None:
            arguments["max_cached_workflows"] = self.cached_workflows
        for option, value in (
            ("max_concurrent_workflow_tasks", self.workflow_task_slots),
            ("max_concurrent_activities", self.activity_slots),
            ("max_concurrent_local_activities", self.local_activity_slots),
        ):
            if value is not None:
                arguments[option] = value
        if not self.eager_activities:
            arguments["disable_eager_activity_execution"] = True
        # The sandbox re-imports the workflow's modules for every new workflow and proxies each access,
        # which costs the worker much of its CPU (docs/performance.md). The tests run it, so its checks
        # still apply.
        if self.sandbox == "off":
            arguments["workflow_runner"] = UnsandboxedWorkflowRunner()
        elif self.sandbox == "pass-through":
            restrictions = SandboxRestrictions.default.with_passthrough_all_modules()
            arguments["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)
        return arguments


def build_worker(
    client: Client,
    settings: Settings,
    activities: TaskActivities,
    options: WorkerOptions | None = None,
    *,
    maintenance: MaintenanceActivities | None = None,
) -> Worker:
    """The worker, tuned by ``options`` (by default, those of the settings); with ``maintenance``, it runs
    the maintenance Schedule's workflow too."""
    if activities.escalations is None:
        activities.escalations = Escalations(client, settings.temporal_task_queue, activities.sessionmaker)
    if activities.webhooks is None:
        activities.webhooks = Webhooks(client, settings.temporal_task_queue, activities.sessionmaker)
    email = EmailActivities(activities.sessionmaker, settings)
    hooks = WebhookActivities(activities.sessionmaker, settings)
    workflows: list[type] = [TaskWorkflow, EmailEscalation, WebhookDelivery]
    functions: list[Callable[..., Any]] = [
        activities.save_task,
        activities.next_occurrence,
        activities.deliver_reminder,
        activities.arm_reminder,
        email.email_notification,
        hooks.deliver_webhook,
        hooks.disable_endpoint,
    ]
    if maintenance is not None:
        workflows.append(MaintenanceWorkflow)
        functions += [maintenance.audit, maintenance.purge]
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=workflows,
        activities=functions,
        # The SDK's default is 0: a delivery in hand at SIGTERM was cancelled (then retried elsewhere).
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        **(options or WorkerOptions.of(settings)).worker_arguments(),
    )


def readiness_check(
    loop: asyncio.AbstractEventLoop,
    watchdog: LoopWatchdog,
    checks: Mapping[str, readiness.Check],
    record: Callable[[Mapping[str, bool]], None] | None = None,
) -> Callable[[], str | None]:
    """/readyz for the health endpoint's thread: the loop's health, then each dependency, asked on the
    loop (a blocked loop cannot answer: that is the first thing said); ``record`` gets each answer."""

    def check() -> str | None:
        if problem := watchdog.problem():
            return problem
        future = asyncio.run_coroutine_threadsafe(readiness.check_all(checks), loop)
        try:
            down = future.result(timeout=readiness.CHECK_TIMEOUT_SECONDS * 2)
        except TimeoutError:
            future.cancel()
            return "the event loop did not answer"
        if record is not None:
            record({name: name not in down for name in checks})
        return "; ".join(f"{name}: {why}" for name, why in down.items()) or None

    return check


# The worker's event loop shares the GIL with the threads that run workflow activations (a few ms of
# CPU each). CPython makes a thread that holds the GIL hand it over to one that waits only after the
# switch interval, 5 ms by default: a wheel instant that came while an activation ran waited that long
# (the spread's and the fan-out's row-written p99, docs/performance.md). 0.5 ms here.
GIL_SWITCH_SECONDS = 0.0005

# Signals in flight at once while a stopping worker gives back its armed reminders, each call's bound,
# and the bound on the whole: with Temporal unreachable, a stop must not wait 5 s per 32 reminders.
HAND_BACK_CONCURRENCY = 32
HAND_BACK_RPC_TIMEOUT = timedelta(seconds=5)
HAND_BACK_SECONDS = 20.0


async def hand_back(client: Client, wheel: DeliveryWheel, *, within: float = HAND_BACK_SECONDS) -> int:
    """Give every reminder armed in ``wheel`` and not taken by a batch back to its workflow (the
    ``rearm`` signal), once this worker has stopped polling, so that its next workflow task runs on a
    worker that stays (decisions §30). What is not handed back within ``within`` seconds (a signal
    refused, Temporal unreachable) is left to its grace timer. Returns how many were handed back."""
    released = wheel.release()
    if not released:
        return 0
    gate = asyncio.Semaphore(HAND_BACK_CONCURRENCY)
    handed: list[str] = []
    refused: list[str] = []

    async def one(input: DeliverReminderInput) -> None:
        async with gate:
            handle = client.get_workflow_handle(task_workflow_id(input.task_id))
            try:
                await handle.signal(REARM_SIGNAL, rpc_timeout=HAND_BACK_RPC_TIMEOUT)
            except RPCError as exc:
                refused.append(f"{input.dedupe_key} ({exc.status.name if exc.status else exc})")
            else:
                handed.append(input.dedupe_key)

    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await asyncio.gather(*(one(input) for input in released))
    left = len(released) - len(handed)
    log.log(
        logging.WARNING if left else logging.INFO,
        "handed %d of %d armed reminders back to their workflows in %.2f s; the %d others go to their "
        "grace timers%s",
        len(handed),
        len(released),
        time.monotonic() - started,
        left,
        f" (refused: {', '.join(refused[:5])}{' ...' if len(refused) > 5 else ''})" if refused else "",
    )
    return len(handed)


async def run_worker(settings: Settings, options: WorkerOptions | None = None) -> None:
    """The worker process, until SIGINT or SIGTERM."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        await _run_worker(settings, options)
    finally:
        sys.setswitchinterval(switch)


async def _run_worker(settings: Settings, options: WorkerOptions | None) -> None:
    options = options or WorkerOptions.of(settings)
    engine = make_engine(settings, application_name="tickler-worker")
    redis = make_redis(settings)
    rules = RuleRunner()
    # The maintenance activities' own engine, as the maintenance role (tickler/ops/connections.py).
    maintenance = maintenance_engine(settings)
    try:
        runtime = None
        if settings.worker_metrics_port:
            address = f"{settings.metrics_host}:{settings.worker_metrics_port}"
            runtime = metrics_runtime(address)
            log.info("metrics at http://%s/metrics", address)
        client = await connect(settings, runtime)
        deliveries = Deliveries()
        activities = TaskActivities(
            make_sessionmaker(engine),
            redis,
            Channel.of(settings),
            deliveries,
            rules=rules,
            metric_meter=runtime.metric_meter if runtime else None,
            warm_deliveries=options.warm_deliveries,
        )
        operations = Operations(maintenance, client, settings)
        worker = build_worker(
            client, settings, activities, options, maintenance=MaintenanceActivities(operations)
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        schedule = collection_schedule(
            warn_after_seconds=settings.gc_pause_warning_ms / 1000,
            record=gc_pause_histogram(runtime) if runtime else None,
            between=deliveries if options.gc_between_deliveries else None,
            freeze=options.freeze_startup_heap,
        )
        watchdog = LoopWatchdog(
            settings.event_loop_block_seconds, EventLoopBlockMetrics(runtime) if runtime else None
        )
        # Not on the event loop, which is what it checks: a blocked loop answers 503, not nothing.
        health: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if settings.worker_health_port:
            dependencies = {
                "postgresql": readiness.postgresql(engine),
                "redis": readiness.redis(redis),
                "temporal": readiness.temporal(client),
            }
            ready = readiness_check(
                loop, watchdog, dependencies, readiness_gauge(runtime) if runtime else None
            )
            checks = {"/healthz": watchdog.problem, "/readyz": ready}
            health = HealthServer(settings.worker_health_host, settings.worker_health_port, checks)
        async with watchdog, health, worker, schedule as frozen:
            log.info(
                "worker polling task queue %r at %s (%d start-up objects frozen out of garbage collection)",
                settings.temporal_task_queue,
                settings.temporal_address,
                frozen,
            )
            if options.gc_between_deliveries:
                log.info("full garbage collections run between deliveries (decisions 15)")
            # Beside the polling, not before it: a slow Temporal must not hold back the deliveries.
            setup = asyncio.create_task(ensure_schedule_at_start(client, settings))
            await stop.wait()
            setup.cancel()
            log.info("worker stopping")
        # Polling has stopped: the reminders armed here and not taken go back to their workflows, whose
        # next workflow task (on another worker, or this one's successor) arms them again; the batches
        # in flight end first. A reminder whose signal fails is delivered by its grace timer.
        await hand_back(client, activities.wheel)
        await activities.wheel.aclose()
    finally:
        rules.close()
        await redis.aclose()
        await engine.dispose()
        await maintenance.dispose()
