"""What the maintenance workflow, its activities and the `tickler` operations commands share: the kinds
of audit finding, the workflow's input and the summaries its activities return (docs/operations.md).

New fields only with defaults: recorded histories must still deserialize.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field

# Re-exported: the operations commands start workflows as web/tasks/service.py does.
from core.temporal import task_search_attributes as task_search_attributes

# What an audit can find, one kind per task at most, in this order of precedence: the first that holds
# is reported (a task without a workflow has no due time to compare).
FindingKind = Literal[
    # An open task whose workflow does not run (terminated from the UI or CLI, failed, never started).
    "open_without_workflow",
    # A running workflow whose task row is done or cancelled.
    "workflow_for_closed_task",
    # A running workflow, started a while ago, whose task has no row.
    "workflow_without_row",
    # The row and the running workflow disagree on the due time.
    "due_differs",
    # An open task whose last reminder is past by more than TICKLER_AUDIT_OVERDUE_AFTER_SECONDS and has no
    # notification row.
    "overdue",
]
FINDING_KINDS: tuple[FindingKind, ...] = get_args(FindingKind)

MAINTENANCE_WORKFLOW = "MaintenanceWorkflow"
AUDIT = "audit"
PURGE = "purge_notifications"


class MaintenanceInput(BaseModel):
    """What one run of the maintenance Schedule does; the worker writes it into the Schedule."""

    # Repair what the audit finds, as `tickler repair` does; False: report only.
    repair: bool = False
    # Delete read notifications older than this many days; 0: purge nothing.
    retention_days: int = Field(90, ge=0)
    # One organization only (None: all of them).
    organization_id: str | None = None


class AuditRequest(BaseModel):
    repair: bool = False
    organization_id: str | None = None


class AuditSummary(BaseModel):
    """An audit's (and repair's) counts. Findings themselves stay out of the workflow's history: there may
    be a million of them; `tickler audit` lists them."""

    findings: dict[FindingKind, int] = Field(default_factory=dict)
    repaired: dict[FindingKind, int] = Field(default_factory=dict)
    # Findings whose repair failed (and are still there).
    failed: int = 0
    open_tasks: int = 0
    running_workflows: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.findings.values())


class PurgeRequest(BaseModel):
    older_than_days: int = Field(ge=1)


class PurgeSummary(BaseModel):
    # Read notifications deleted, in how many statements.
    deleted: int = 0
    batches: int = 0
    # Read notifications created, and webhook delivery attempts made, before this instant were deleted.
    cutoff: datetime
    seconds: float = 0.0
    webhook_attempts_deleted: int = 0


class MaintenanceResult(BaseModel):
    audit: AuditSummary | None = None
    purge: PurgeSummary | None = None
    # Why a step failed (the run fails after the other step has run).
    errors: list[str] = Field(default_factory=list)
