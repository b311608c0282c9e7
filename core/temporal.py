"""Temporal client factory, workflow ids and the search attributes operators filter on."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.gcwatch import PauseRecorder
from core.settings import Settings

# Registered by `tickler run` on the dev server and by docker-compose's temporal-setup.
# No personal data here: search attributes are stored unencrypted and shown in the UI.
ORGANIZATION_ID = SearchAttributeKey.for_keyword("OrganizationId")
ASSIGNEE_ID = SearchAttributeKey.for_keyword("AssigneeId")
TASK_STATUS = SearchAttributeKey.for_keyword("TaskStatus")
DUE_AT = SearchAttributeKey.for_datetime("DueAt")

SEARCH_ATTRIBUTES = {
    "OrganizationId": "Keyword",
    "AssigneeId": "Keyword",
    "TaskStatus": "Keyword",
    "DueAt": "Datetime",
}


def task_workflow_id(task_id: uuid.UUID) -> str:
    return f"task-{task_id}"


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )


# Seconds: milliseconds matter, minutes mean trouble.
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60]


def metrics_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime exporting the SDK's metrics and ours (rejected signals, reminder lateness,
    garbage-collection pauses, event-loop blocks) for Prometheus at http://<bind_address>/metrics."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                durations_as_seconds=True,
                histogram_bucket_overrides={
                    "tickler_reminder_lateness": LATENCY_BUCKETS,
                    "tickler_gc_pause": LATENCY_BUCKETS,
                    "tickler_event_loop_block": LATENCY_BUCKETS,
                },
            )
        )
    )


def gc_pause_histogram(runtime: Runtime) -> PauseRecorder:
    """Records each garbage collection's pause in ``tickler_gc_pause``, by generation."""
    histogram = runtime.metric_meter.create_histogram_timedelta(
        "tickler_gc_pause", "Time a garbage collection stopped the worker", "s"
    )
    by_generation = [histogram.with_additional_attributes({"generation": str(g)}) for g in range(3)]

    def record(generation: int, seconds: float) -> None:
        by_generation[generation].record(timedelta(seconds=seconds))

    return record


class EventLoopBlockMetrics:
    """The worker's ``core.watchdog.BlockRecorder``: each block of its event loop is counted in
    ``tickler_event_loop_blocks`` as soon as it passes the threshold (so a loop stuck for good is counted
    too), and its length goes to ``tickler_event_loop_block`` once it ends."""

    def __init__(self, runtime: Runtime) -> None:
        meter = runtime.metric_meter
        self.counter = meter.create_counter(
            "tickler_event_loop_blocks", "Blocks of the worker's event loop past the threshold"
        )
        self.histogram = meter.create_histogram_timedelta(
            "tickler_event_loop_block", "How long each block of the worker's event loop lasted", "s"
        )

    def blocked(self) -> None:
        self.counter.add(1)

    def ended(self, seconds: float) -> None:
        self.histogram.record(timedelta(seconds=seconds))
