"""The maintenance workflow on the time-skipping test server, its activities replaced by fakes: it audits,
then purges; a failed audit does not keep the purge from running, and fails the run after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.maintenance import (
    AUDIT,
    PURGE,
    AuditRequest,
    AuditSummary,
    MaintenanceInput,
    MaintenanceResult,
    PurgeRequest,
    PurgeSummary,
)
from workflows.maintenance import MaintenanceWorkflow


@dataclass
class FakeMaintenance:
    audit_fails: bool = False
    audits: list[AuditRequest] = field(default_factory=list)
    purges: list[PurgeRequest] = field(default_factory=list)

    @activity.defn(name=AUDIT)
    async def audit(self, request: AuditRequest) -> AuditSummary:
        self.audits.append(request)
        if self.audit_fails:
            raise ApplicationError("PostgreSQL is down", non_retryable=True)
        return AuditSummary(findings={"open_without_workflow": 2}, open_tasks=10, running_workflows=8)

    @activity.defn(name=PURGE)
    async def purge(self, request: PurgeRequest) -> PurgeSummary:
        self.purges.append(request)
        return PurgeSummary(deleted=3, batches=1, cutoff=datetime(2026, 9, 1, tzinfo=UTC))


@asynccontextmanager
async def maintenance_worker(env: WorkflowEnvironment, fakes: FakeMaintenance) -> AsyncIterator[str]:
    task_queue = f"maintenance-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[MaintenanceWorkflow],
        activities=[fakes.audit, fakes.purge],
    ):
        yield task_queue


async def run_maintenance(
    env: WorkflowEnvironment, task_queue: str, input: MaintenanceInput
) -> WorkflowHandle[MaintenanceWorkflow, MaintenanceResult]:
    return await env.client.start_workflow(
        MaintenanceWorkflow.run, input, id=f"maintenance-{uuid.uuid4()}", task_queue=task_queue
    )


async def test_audits_then_purges(env: WorkflowEnvironment) -> None:
    fakes = FakeMaintenance()
    async with maintenance_worker(env, fakes) as queue:
        handle = await run_maintenance(env, queue, MaintenanceInput(repair=True, retention_days=30))
        result = await handle.result()
    assert fakes.audits == [AuditRequest(repair=True)]
    assert fakes.purges == [PurgeRequest(older_than_days=30)]
    assert result.audit is not None
    assert result.audit.findings == {"open_without_workflow": 2}
    assert result.purge is not None
    assert result.purge.deleted == 3


async def test_no_purge_when_retention_is_off(env: WorkflowEnvironment) -> None:
    fakes = FakeMaintenance()
    async with maintenance_worker(env, fakes) as queue:
        handle = await run_maintenance(env, queue, MaintenanceInput(retention_days=0))
        result = await handle.result()
    assert fakes.purges == []
    assert result.purge is None


async def test_a_failed_audit_still_purges_then_fails_the_run(env: WorkflowEnvironment) -> None:
    fakes = FakeMaintenance(audit_fails=True)
    async with maintenance_worker(env, fakes) as queue:
        handle = await run_maintenance(env, queue, MaintenanceInput())
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert len(fakes.purges) == 1
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert "audit: PostgreSQL is down" in cause.message
