"""Temporal client factory, workflow ids and the search attributes operators filter on."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from core.codec import data_converter
from core.gcwatch import PauseRecorder
from core.payloads import TaskState
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


async def start_once(client: Client, workflow: str, input: object, workflow_id: str, task_queue: str) -> None:
    """Start ``workflow`` unless a run of ``workflow_id`` was ever started: a retried caller (an activity
    that dispatches an email or a webhook) starts nothing twice."""
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            workflow,
            input,
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )


def task_search_attributes(state: TaskState) -> TypedSearchAttributes:
    """The search attributes a task's workflow starts with; the workflow upserts status and due time."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(ORGANIZATION_ID, state.organization_id),
            SearchAttributePair(ASSIGNEE_ID, state.assignee_id),
            SearchAttributePair(TASK_STATUS, state.status),
            SearchAttributePair(DUE_AT, state.due_at),
        ]
    )


class TemporalConfigError(ValueError):
    """A TLS setting names a file that cannot be read: the process refuses to start, and says which."""


def tls_config(settings: Settings) -> TLSConfig | bool | None:
    """TLS as the settings ask: a TLSConfig with the files and name they give, True for TLS on the
    system's roots, None for none (the SDK then turns TLS on by itself if there is an API key)."""

    def read(variable: str, path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TemporalConfigError(f"{variable} {path}: {exc.strerror}") from exc

    config = TLSConfig(
        server_root_ca_cert=read("TICKLER_TEMPORAL_TLS_CA_FILE", settings.temporal_tls_ca_file),
        client_cert=read("TICKLER_TEMPORAL_TLS_CERT_FILE", settings.temporal_tls_cert_file),
        client_private_key=read("TICKLER_TEMPORAL_TLS_KEY_FILE", settings.temporal_tls_key_file),
        domain=settings.temporal_tls_server_name,
    )
    if config != TLSConfig():
        return config
    return True if settings.temporal_tls else None


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """The one way Tickler's processes reach Temporal: TLS and API key from the settings, and payloads
    encrypted by core/codec.py on top of the pydantic converter."""
    api_key = settings.temporal_api_key
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(pydantic_data_converter, settings),
        tls=tls_config(settings),
        api_key=api_key.get_secret_value() if api_key is not None else None,
        runtime=runtime,
    )


# Seconds: milliseconds matter, minutes mean trouble.
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60]


def metrics_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime exporting the SDK's metrics and ours (deliveries and their lateness, rejected
    signals, garbage-collection pauses, event-loop blocks, readiness) for Prometheus at
    http://<bind_address>/metrics, from a thread of the SDK's own (it answers while the loop is blocked).

    The exporter spells a counter without ``_total`` (``tickler_reminders_delivered``) and a histogram
    as ``<name>_bucket`` / ``_sum`` / ``_count``, in seconds, on the buckets set here."""
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
        # At 0 from the start: a counter that appears with its first block hides it from increase().
        self.counter.add(0)
        self.histogram = meter.create_histogram_timedelta(
            "tickler_event_loop_block", "How long each block of the worker's event loop lasted", "s"
        )

    def blocked(self) -> None:
        self.counter.add(1)

    def ended(self, seconds: float) -> None:
        self.histogram.record(timedelta(seconds=seconds))


def readiness_gauge(runtime: Runtime) -> Callable[[Mapping[str, bool]], None]:
    """Records each /readyz check of the worker in ``tickler_readiness{dependency}`` (1: it answered)."""
    gauge = runtime.metric_meter.create_gauge(
        "tickler_readiness", "1 if the dependency answered the last /readyz check, 0 if not"
    )

    def record(answered: Mapping[str, bool]) -> None:
        for dependency, ok in answered.items():
            gauge.set(int(ok), {"dependency": dependency})

    return record
