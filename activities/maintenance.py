"""Activities of the maintenance workflow: the audit (and repair) and the purge, with heartbeats, and the
audit's findings as the gauge ``tickler_audit_findings{kind}``.

The work itself is the operators' commands' (`tickler audit`, `repair`, `purge`: tickler/ops/), handed in
by the worker as a :class:`MaintenanceOperations`, so that the Schedule and the command do the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from temporalio import activity

from core.maintenance import (
    AUDIT,
    FINDING_KINDS,
    PURGE,
    AuditRequest,
    AuditSummary,
    PurgeRequest,
    PurgeSummary,
)

# Called after each page of work with what has been done so far: the activity's heartbeat.
Progress = Callable[[Any], None]


class MaintenanceOperations(Protocol):
    async def audit(self, request: AuditRequest, progress: Progress) -> AuditSummary: ...

    async def purge(self, request: PurgeRequest, progress: Progress) -> PurgeSummary: ...


class MaintenanceActivities:
    def __init__(self, operations: MaintenanceOperations) -> None:
        self.operations = operations

    @activity.defn(name=AUDIT)
    async def audit(self, request: AuditRequest) -> AuditSummary:
        """Audit (and repair, if asked) every task, or one organization's; the counts by kind become the
        worker's ``tickler_audit_findings`` gauge."""
        summary = await self.operations.audit(request, activity.heartbeat)
        meter = activity.metric_meter()
        findings = meter.create_gauge(
            "tickler_audit_findings", "Findings of the worker's latest audit, by kind (docs/operations.md)"
        )
        repaired = meter.create_counter(
            "tickler_audit_repaired", "Findings the maintenance runs repaired, by kind"
        )
        # Every kind, zeros included, so that a finding that is gone clears its alert. A finding repaired
        # in this run is not off any more; the counter keeps that it was.
        for kind in FINDING_KINDS:
            fixed = summary.repaired.get(kind, 0)
            findings.set(summary.findings.get(kind, 0) - fixed, {"kind": kind})
            if fixed:
                repaired.add(fixed, {"kind": kind})
        # With several workers each exports the value of the audit it ran last: this tells which is newest.
        meter.create_gauge_float(
            "tickler_audit_completed_timestamp", "When the worker's latest audit ended (Unix time)", "s"
        ).set(time.time())
        return summary

    @activity.defn(name=PURGE)
    async def purge(self, request: PurgeRequest) -> PurgeSummary:
        """Delete read notifications older than the retention, in short batches."""
        return await self.operations.purge(request, activity.heartbeat)
