"""The maintenance run the Schedule starts (docs/operations.md, "Audit and repair"): an audit of the tasks
table against Temporal, repairing what it finds when told to, then the purge of old read notifications.

Both steps are activities with heartbeats (they page through every task); this workflow only orders them,
so its history is a handful of events whatever the size of the tables.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.maintenance import (
        AUDIT,
        MAINTENANCE_WORKFLOW,
        PURGE,
        AuditRequest,
        AuditSummary,
        MaintenanceInput,
        MaintenanceResult,
        PurgeRequest,
        PurgeSummary,
    )

# An audit pages through every open task and running workflow, a heartbeat after each page: a million
# tasks take about an hour on the development stack (docs/operations.md, "Audit and repair").
AUDIT_TIMEOUT = timedelta(hours=6)
PURGE_TIMEOUT = timedelta(hours=2)
HEARTBEAT_TIMEOUT = timedelta(minutes=2)
# Both steps are safe to run again from the start: the audit reads, a repair is idempotent, the purge
# deletes what is still there.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=10), maximum_attempts=3)


@workflow.defn(name=MAINTENANCE_WORKFLOW)
class MaintenanceWorkflow:
    @workflow.run
    async def run(self, input: MaintenanceInput) -> MaintenanceResult:
        result = MaintenanceResult()
        try:
            result.audit = await workflow.execute_activity(
                AUDIT,
                AuditRequest(repair=input.repair, organization_id=input.organization_id),
                result_type=AuditSummary,
                start_to_close_timeout=AUDIT_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=RETRY,
            )
        except ActivityError as exc:
            # The purge does not depend on the audit: it still runs, and the run fails after it.
            result.errors.append(f"audit: {exc.cause or exc}")
        if input.retention_days > 0:
            try:
                result.purge = await workflow.execute_activity(
                    PURGE,
                    PurgeRequest(older_than_days=input.retention_days),
                    result_type=PurgeSummary,
                    start_to_close_timeout=PURGE_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=RETRY,
                )
            except ActivityError as exc:
                result.errors.append(f"purge: {exc.cause or exc}")
        if result.errors:
            # Failed, so that the Web UI and the Schedule's recent actions show it.
            details = result.model_dump(mode="json")
            raise ApplicationError("; ".join(result.errors), details, non_retryable=True)
        return result
