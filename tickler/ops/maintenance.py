"""The work of the maintenance Schedule's activities (activities/maintenance.py), and of the commands:
audit (and repair), purge. The worker builds one :class:`Operations` with its clients."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from core.db import make_sessionmaker
from core.maintenance import AuditRequest, AuditSummary, FindingKind, PurgeRequest, PurgeSummary
from core.settings import Settings
from tickler.ops.audit import Auditor, Finding, Progress, summary_of
from tickler.ops.purge import purge
from tickler.ops.repair import Outcome, Repairer, repair_all


class Operations:
    """``engine`` runs as the maintenance role (tickler.ops.connections.maintenance_engine)."""

    def __init__(self, engine: AsyncEngine, temporal: Client, settings: Settings) -> None:
        self.engine = engine
        self.sessionmaker = make_sessionmaker(engine)
        self.temporal = temporal
        self.settings = settings

    def auditor(self) -> Auditor:
        return Auditor(self.sessionmaker, self.temporal, self.settings)

    def repairer(self) -> Repairer:
        return Repairer(self.sessionmaker, self.temporal, self.settings)

    async def audit(self, request: AuditRequest, progress: Progress) -> AuditSummary:
        started = time.monotonic()
        auditor = self.auditor()
        findings = auditor.findings(request.organization_id, progress)
        found: Counter[FindingKind] = Counter()
        repaired: Counter[FindingKind] = Counter()
        failed = 0

        async def counted() -> AsyncIterator[Finding]:
            async for finding in findings:
                found[finding.kind] += 1
                yield finding

        if request.repair:

            def tally(outcome: Outcome) -> None:
                nonlocal failed
                if outcome.repaired:
                    repaired[outcome.finding.kind] += 1
                else:
                    failed += 1

            await repair_all(counted(), self.repairer(), self.settings.audit_concurrency, tally)
        else:
            async for _ in counted():
                pass
        summary = summary_of(found, auditor, started)
        summary.repaired = {kind: count for kind, count in repaired.items() if count}
        summary.failed = failed
        return summary

    async def purge(self, request: PurgeRequest, progress: Progress) -> PurgeSummary:
        return await purge(self.engine, timedelta(days=request.older_than_days), progress=progress)
