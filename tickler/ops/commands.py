"""The operations commands as `tickler` runs them: connect, do the work, print text or JSON, and say by
the exit status whether anything is off (0: nothing, 1: something, 2: the command could not run)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from core.maintenance import FindingKind
from core.settings import Settings
from tickler.ops.audit import Auditor, Finding, summary_of
from tickler.ops.connections import connected
from tickler.ops.purge import purge as purge_retained
from tickler.ops.repair import Outcome, Repairer, repair_all
from tickler.ops.schedule import ensure_schedule
from tickler.ops.stats import OrganizationStats, organization_stats

log = logging.getLogger(__name__)

OK, OFF, FAILED = 0, 1, 2


async def _guarded(name: str, command: Callable[[], Awaitable[int]]) -> int:
    try:
        return await command()
    except Exception as exc:  # a command's failure is one line, not a traceback (which is logged at DEBUG)
        log.debug("tickler %s failed", name, exc_info=True)
        print(f"tickler {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


class _JsonList:
    """A JSON object whose list ``key`` is printed item by item as they come, then its other members:
    an audit of a million findings holds none of them in memory."""

    def __init__(self, key: str) -> None:
        self.empty = True
        print(f"{{{json.dumps(key)}: [", end="", flush=True)

    def add(self, item: BaseModel) -> None:
        print(("\n  " if self.empty else ",\n  ") + item.model_dump_json(), end="", flush=True)
        self.empty = False

    def close(self, members: dict[str, Any]) -> None:
        rest = "".join(
            f",\n{json.dumps(k)}: {json.dumps(v, indent=2, default=str)}" for k, v in members.items()
        )
        print(("]" if self.empty else "\n]") + rest + "}")


def _counts(counts: Counter[FindingKind]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in counts.most_common())


async def audit(settings: Settings, organization_id: str | None, as_json: bool) -> int:
    async def run() -> int:
        started = time.monotonic()
        async with connected(settings) as clients:
            auditor = Auditor(clients.sessionmaker, clients.temporal, settings)
            found = _JsonList("findings") if as_json else None
            counts: Counter[FindingKind] = Counter()
            async for finding in auditor.findings(organization_id):
                counts[finding.kind] += 1
                if found is not None:
                    found.add(finding)
                else:
                    print(_finding_line(finding), flush=True)
            summary = summary_of(counts, auditor, started)
        if found is not None:
            found.close({"summary": summary.model_dump(mode="json")})
        else:
            scope = f"{summary.open_tasks} open tasks, {summary.running_workflows} running workflows"
            if counts:
                print(f"{summary.total} findings ({_counts(counts)}) in {scope}, {summary.seconds} s")
            else:
                print(f"nothing off in {scope}, {summary.seconds} s")
        return OFF if counts else OK

    return await _guarded("audit", run)


def _finding_line(finding: Finding) -> str:
    return f"{finding.kind:<25} {finding.organization_id}  {finding.task_id}  {finding.detail}"


async def repair(settings: Settings, organization_id: str | None, dry_run: bool, as_json: bool) -> int:
    async def run() -> int:
        started = time.monotonic()
        outcomes = _JsonList("outcomes") if as_json else None
        counts: Counter[FindingKind] = Counter()
        failed = 0

        def report(outcome: Outcome) -> None:
            nonlocal failed
            counts[outcome.finding.kind] += 1
            failed += not dry_run and not outcome.repaired
            if outcomes is not None:
                outcomes.add(outcome)
                return
            label = "would" if dry_run else ("repaired" if outcome.repaired else "FAILED")
            line = f"{label:<9}{_finding_line(outcome.finding)}\n{'':<9}-> {outcome.action}"
            print(line + (f": {outcome.error}" if outcome.error else ""), flush=True)

        async with connected(settings) as clients:
            auditor = Auditor(clients.sessionmaker, clients.temporal, settings)
            repairer = Repairer(clients.sessionmaker, clients.temporal, settings)
            await repair_all(
                auditor.findings(organization_id),
                repairer,
                settings.audit_concurrency,
                report,
                dry_run=dry_run,
            )
            summary = summary_of(counts, auditor, started)
        if outcomes is not None:
            outcomes.close(
                {"dry_run": dry_run, "summary": summary.model_dump(mode="json") | {"failed": failed}}
            )
        elif not counts:
            scope = f"{summary.open_tasks} open tasks, {summary.running_workflows} running workflows"
            print(f"nothing to repair in {scope}")
        elif dry_run:
            print(f"dry run: {summary.total} findings ({_counts(counts)}); nothing was changed")
        else:
            repaired = summary.total - failed
            print(f"{repaired} of {summary.total} findings repaired ({_counts(counts)}), {summary.seconds} s")
        if dry_run:
            return OFF if counts else OK
        return OFF if failed else OK

    return await _guarded("repair", run)


async def purge(settings: Settings, older_than_days: int | None, batch: int) -> int:
    days = older_than_days if older_than_days is not None else settings.notification_retention_days
    if days < 1:
        print(
            "tickler purge: retention is off (TICKLER_NOTIFICATION_RETENTION_DAYS=0); give --older-than DAYS",
            file=sys.stderr,
        )
        return FAILED

    async def run() -> int:
        async with connected(settings) as clients:
            summary = await purge_retained(clients.engine, timedelta(days=days), batch=batch)
        print(
            f"deleted {summary.deleted} read notifications created before {summary.cutoff.isoformat()} "
            f"({summary.batches} batches of up to {batch}) and {summary.webhook_attempts_deleted} webhook "
            f"delivery attempts, in {summary.seconds} s"
        )
        return OK

    return await _guarded("purge", run)


async def stats(
    settings: Settings, organization_id: str, since: datetime | None, until: datetime | None, as_json: bool
) -> int:
    async def run() -> int:
        async with connected(settings) as clients:
            figures = await organization_stats(
                clients.sessionmaker, clients.temporal, settings, organization_id, since, until
            )
        if as_json:
            _print_json(figures.model_dump(mode="json"))
        else:
            print(_stats_text(figures))
        return OK

    return await _guarded("stats", run)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _stats_text(s: OrganizationStats) -> str:
    late, tasks, workflows = s.lateness, s.tasks, s.workflows
    running = workflows.error or f"{workflows.running} running"
    lines = [
        f"organization {s.organization_id}, reminders due from {s.since.isoformat()} "
        f"to {s.until.isoformat()}",
        f"  lateness (due -> notification row): p50 {_seconds(late.p50)}, p90 {_seconds(late.p90)}, "
        f"p99 {_seconds(late.p99)}, max {_seconds(late.max)}",
        f"  notifications: {late.delivered} delivered, {late.read} read",
        f"  tasks now: {tasks.open} open ({tasks.upcoming} upcoming, {tasks.past_due} past due, "
        f"{tasks.overdue_undelivered} overdue and undelivered), {tasks.done} done, "
        f"{tasks.cancelled} cancelled",
        f"  workflows: {running}",
        f"  delivery failures: {s.note}",
        "  visibility queries (Web UI, or temporal workflow list --query ...):",
        *(f"    {name}: {query}" for name, query in workflows.queries.items()),
    ]
    return "\n".join(lines)


async def schedule(settings: Settings, delete: bool) -> int:
    async def run() -> int:
        async with connected(settings) as clients:
            handle = clients.temporal.get_schedule_handle(settings.maintenance_schedule_id)
            if delete:
                await handle.delete()
                print(f"deleted the schedule {settings.maintenance_schedule_id!r}")
                return OK
            if not settings.maintenance_interval_seconds:
                print("tickler schedule: TICKLER_MAINTENANCE_INTERVAL_SECONDS is 0", file=sys.stderr)
                return FAILED
            outcome = await ensure_schedule(clients.temporal, settings)
        print(
            f"schedule {settings.maintenance_schedule_id!r} {outcome}: every "
            f"{settings.maintenance_interval_seconds} s on task queue {settings.temporal_task_queue!r}, "
            f"repair {'on' if settings.maintenance_repair else 'off'}, "
            f"purge after {settings.notification_retention_days or 'no'} days"
        )
        return OK

    return await _guarded("schedule", run)
