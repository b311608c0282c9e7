"""`tickler audit` and `tickler repair` on the real stack, broken on purpose: a workflow terminated with the
Temporal CLI, a worker stopped past a due time, rows edited in SQL. The audit finds each, the repair fixes
each (and the reminder then fires), a second audit is clean, and a dry run changes nothing. Then the
maintenance Schedule of a `tickler worker`: there after its start, and a triggered run reports findings.

Every audit here is scoped to the test's own organization: the suite's servers hold every other test's
tasks, some of them broken on purpose too.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.worker import Worker

from core.db import make_engine, make_sessionmaker, tenant_transaction
from core.maintenance import FINDING_KINDS, MAINTENANCE_WORKFLOW, MaintenanceResult, task_search_attributes
from core.models import Notification, Task
from core.payloads import (
    CHANGE_UPDATE,
    STATE_QUERY,
    SYNC_UPDATE,
    TASK_WORKFLOW,
    WORKFLOW_VERSION,
    TaskChange,
    TaskState,
    TaskWorkflowInput,
)
from core.settings import Settings
from tests.helpers import command_env, new_org, run_worker, task_state, wait_until
from tickler import devstack
from tickler.ops.audit import Auditor, Finding
from tickler.ops.connections import maintenance_engine
from tickler.ops.repair import Outcome, Repairer, repair_all
from tickler.ops.schedule import ensure_schedule

# The threshold of `overdue` here: a reminder one second late without its row.
OVERDUE_AFTER = 1.0


@pytest.fixture(scope="module")
def ops_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"audit_overdue_after_seconds": OVERDUE_AFTER})


@pytest.fixture(scope="module")
async def maintenance(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = maintenance_engine(settings)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def ops(
    ops_settings: Settings,
    maintenance: async_sessionmaker[AsyncSession],
    temporal: Client,
    worker: Worker,
) -> Ops:
    """Audit and repair, with the session's worker running the task workflows they re-arm."""
    return Ops(ops_settings, maintenance, temporal)


class Ops:
    def __init__(
        self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], temporal: Client
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.temporal = temporal

    async def audit(self, org: str, **options: Any) -> list[Finding]:
        auditor = Auditor(self.sessionmaker, self.temporal, self.settings, **options)
        return [finding async for finding in auditor.findings(org)]

    async def repair(self, org: str, *, dry_run: bool = False, **options: Any) -> list[Outcome]:
        auditor = Auditor(self.sessionmaker, self.temporal, self.settings, **options)
        repairer = Repairer(self.sessionmaker, self.temporal, self.settings)
        outcomes: list[Outcome] = []
        await repair_all(auditor.findings(org), repairer, 4, outcomes.append, dry_run=dry_run)
        return outcomes

    async def found(self, org: str, *kinds: str, **options: Any) -> list[Finding]:
        """The audit's findings once they are ``kinds`` (visibility catches up within moments)."""

        last: list[Finding] = []

        async def probe() -> list[Finding] | None:
            last[:] = await self.audit(org, **options)
            return last if sorted(f.kind for f in last) == sorted(kinds) else None

        try:
            found = await wait_until(probe, within=20, interval=0.2, what=f"findings {kinds}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the audit found {last}") from None
        assert found is not None
        return found


async def start_task(temporal: Client, state: TaskState, task_queue: str) -> WorkflowHandle[Any, TaskState]:
    """Start a task's workflow as the API does, search attributes included (the audit's scope by
    organization reads them), and wait until it has saved its row."""
    handle: WorkflowHandle[Any, TaskState] = await temporal.start_workflow(
        TASK_WORKFLOW,
        TaskWorkflowInput(state=state, version=WORKFLOW_VERSION),
        id=f"task-{state.task_id}",
        task_queue=task_queue,
        search_attributes=task_search_attributes(state),
        result_type=TaskState,
    )
    await handle.execute_update(SYNC_UPDATE, result_type=TaskState)
    return handle


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a `tickler` command on the suite's servers, and nothing of the caller's."""
    return command_env(settings, audit_overdue_after_seconds=str(settings.audit_overdue_after_seconds))


async def tickler(settings: Settings, cwd: Path, *args: str) -> tuple[int, str]:
    """Run `tickler ARGS` as an operator would (no .env: ``cwd`` is empty); its exit status and stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tickler",
        *args,
        env=cli_env(settings),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    assert process.returncode in (0, 1), err.decode()
    return process.returncode, out.decode()


async def terminate_with_the_temporal_cli(settings: Settings, workflow_id: str) -> None:
    process = await asyncio.create_subprocess_exec(
        devstack.temporal_executable(),
        "workflow",
        "terminate",
        "--address",
        settings.temporal_address,
        "--namespace",
        settings.temporal_namespace,
        "--workflow-id",
        workflow_id,
        "--reason",
        "broken on purpose by a test",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, out.decode()


async def notifications_of(
    sessionmaker: async_sessionmaker[AsyncSession], org: str, task_id: uuid.UUID
) -> list[Notification]:
    async with tenant_transaction(sessionmaker, org) as session:
        rows = await session.scalars(select(Notification).where(Notification.task_id == task_id))
        return list(rows)


async def row_of(sessionmaker: async_sessionmaker[AsyncSession], org: str, task_id: uuid.UUID) -> Task:
    async with tenant_transaction(sessionmaker, org) as session:
        task = await session.scalar(select(Task).where(Task.id == task_id))
    assert task is not None
    return task


async def edit_row(
    sessionmaker: async_sessionmaker[AsyncSession], org: str, task_id: uuid.UUID, **values: Any
) -> None:
    """What an operator's UPDATE by hand does: the row changes, its workflow does not know."""
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    async with tenant_transaction(sessionmaker, org) as session:
        await session.execute(
            text(f"UPDATE tasks SET {assignments} WHERE id = :id"), values | {"id": task_id}
        )


async def test_a_workflow_terminated_with_the_cli_is_found_re_armed_and_fires(
    ops: Ops, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    org = new_org()
    state = task_state(org=org, due_in=timedelta(seconds=3))
    await start_task(ops.temporal, state, ops.settings.temporal_task_queue)
    await terminate_with_the_temporal_cli(ops.settings, f"task-{state.task_id}")

    [finding] = await ops.found(org, "open_without_workflow")
    assert (finding.task_id, finding.workflow_status) == (state.task_id, "TERMINATED")

    # The command, as operators run it: text, JSON, and the exit status says something is off.
    status, out = await tickler(ops.settings, tmp_path, "audit", "--org", org)
    assert status == 1
    assert f"open_without_workflow     {org}  {state.task_id}" in out
    assert "1 findings (open_without_workflow 1)" in out

    status, out = await tickler(ops.settings, tmp_path, "repair", "--org", org, "--dry-run", "--json")
    assert status == 1
    planned = json.loads(out)
    assert planned["dry_run"] is True
    assert [o["action"] for o in planned["outcomes"]] == ["re-arm: start its workflow again from the row"]
    description = await ops.temporal.get_workflow_handle(f"task-{state.task_id}").describe()
    assert description.status == WorkflowExecutionStatus.TERMINATED, "a dry run changes nothing"

    status, out = await tickler(ops.settings, tmp_path, "repair", "--org", org, "--json")
    assert status == 0, out
    [outcome] = json.loads(out)["outcomes"]
    assert outcome["repaired"] is True
    # Revision 1 if the reminder is still to come; 2 if it came meanwhile: the worker had armed it at the
    # start, and a termination does not reach a worker's wheel (the row, still open, says it is due).
    assert outcome["action"].startswith("re-armed from its row: revision "), outcome

    [notification] = await wait_until(
        lambda: notifications_of(sessionmaker, org, state.task_id), what="the re-armed reminder"
    )
    assert notification.due_at == state.due_at
    status, out = await tickler(ops.settings, tmp_path, "audit", "--org", org, "--json")
    assert (status, json.loads(out)["findings"]) == (0, [])


async def test_a_reminder_whose_worker_stopped_past_its_due_time_is_delivered_by_the_repair(
    ops: Ops,
    temporal: Client,
    engine: AsyncEngine,
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    org = new_org()
    state = task_state(org=org, due_in=timedelta(seconds=2))
    own = ops.settings.model_copy(update={"temporal_task_queue": f"stopped-{uuid.uuid4().hex[:8]}"})
    async with run_worker(temporal, own, engine, redis):
        handle = await start_task(temporal, state, own.temporal_task_queue)
    # The only worker of its queue is gone; the due time passes, then the threshold.

    [finding] = await ops.found(org, "overdue")
    assert (finding.run_id, finding.workflow_status) == (handle.result_run_id, "RUNNING")
    assert await notifications_of(sessionmaker, org, state.task_id) == []

    [outcome] = await ops.repair(org)
    assert outcome.repaired, outcome
    stuck = await temporal.get_workflow_handle(handle.id, run_id=handle.result_run_id).describe()
    assert stuck.status == WorkflowExecutionStatus.TERMINATED
    # Re-armed on the queue the settings name, where a worker runs: the reminder fires, once.
    [notification] = await wait_until(
        lambda: notifications_of(sessionmaker, org, state.task_id), what="the overdue reminder"
    )
    assert notification.dedupe_key == f"{state.task_id}/1/0"
    assert await ops.audit(org) == []
    assert len(await notifications_of(sessionmaker, org, state.task_id)) == 1


async def test_a_due_time_edited_in_the_row_is_brought_in_line_by_version(
    ops: Ops, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The workflow is the only writer of its row, and each save carries the state's version: the higher
    version is the later truth. A row edited by hand keeps its version, so the workflow's due time wins;
    a row ahead of the workflow (Temporal restored from an older backup) wins over it."""
    org = new_org()
    hand_edited = task_state(org=org, due_in=timedelta(hours=1))
    ahead = task_state(org=org, due_in=timedelta(hours=2))
    handles = {
        s.task_id: await start_task(ops.temporal, s, ops.settings.temporal_task_queue)
        for s in (hand_edited, ahead)
    }
    await edit_row(sessionmaker, org, hand_edited.task_id, due_at=hand_edited.due_at + timedelta(minutes=30))
    row_due = ahead.due_at + timedelta(hours=1)
    await edit_row(sessionmaker, org, ahead.task_id, due_at=row_due, version=ahead.version + 5)

    findings = {f.task_id: f for f in await ops.found(org, "due_differs", "due_differs")}
    assert findings[hand_edited.task_id].workflow_due_at == hand_edited.due_at
    assert findings[hand_edited.task_id].workflow_version == findings[hand_edited.task_id].row_version
    assert findings[ahead.task_id].row_version == ahead.version + 5

    dry = await ops.repair(org, dry_run=True)
    assert {o.repaired for o in dry} == {False}
    assert (await row_of(sessionmaker, org, hand_edited.task_id)).due_at != hand_edited.due_at

    outcomes = {o.finding.task_id: o for o in await ops.repair(org)}
    assert outcomes[hand_edited.task_id].action == "its workflow saved the row again, with its due time"
    assert outcomes[ahead.task_id].action == "its workflow was moved to the row's due time"
    assert (await row_of(sessionmaker, org, hand_edited.task_id)).due_at == hand_edited.due_at
    moved = await handles[ahead.task_id].query(STATE_QUERY, result_type=TaskState)
    assert moved.due_at == row_due
    assert await ops.audit(org) == []


async def test_a_task_closed_in_its_row_closes_its_workflow_and_a_reopened_row_is_closed_again(
    ops: Ops, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    marked_done = task_state(org=org, due_in=timedelta(hours=1))
    reopened = task_state(org=org, due_in=timedelta(hours=1))
    queue = ops.settings.temporal_task_queue
    running = await start_task(ops.temporal, marked_done, queue)
    completed = await start_task(ops.temporal, reopened, queue)
    await completed.execute_update(
        CHANGE_UPDATE, TaskChange(action="cancel", undo_seconds=0), result_type=TaskState
    )
    await completed.result()
    await edit_row(sessionmaker, org, marked_done.task_id, status="done")
    await edit_row(sessionmaker, org, reopened.task_id, status="open")
    # Done, in its undo window: its workflow runs on, waiting for a reopen. Nothing to repair.
    undoable = task_state(org=org, due_in=timedelta(hours=1))
    waiting = await start_task(ops.temporal, undoable, queue)
    done = TaskChange(action="complete", undo_seconds=600)
    await waiting.execute_update(CHANGE_UPDATE, done, result_type=TaskState)

    findings = {
        f.task_id: f for f in await ops.found(org, "open_without_workflow", "workflow_for_closed_task")
    }
    assert findings[marked_done.task_id].kind == "workflow_for_closed_task"
    assert findings[reopened.task_id].workflow_status == "COMPLETED"
    assert undoable.task_id not in findings

    outcomes = {o.finding.task_id: o for o in await ops.repair(org)}
    assert all(o.repaired for o in outcomes.values()), outcomes
    final = await asyncio.wait_for(running.result(), timeout=10)
    assert final.status == "done", "completed through its own update: the search attributes follow"
    assert (await row_of(sessionmaker, org, reopened.task_id)).status == "cancelled"
    assert await ops.audit(org) == []


async def test_a_workflow_whose_row_is_gone_saves_it_again(
    ops: Ops, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    state = task_state(org=org, due_in=timedelta(hours=1))
    await start_task(ops.temporal, state, ops.settings.temporal_task_queue)
    # Deleting a task takes the tables' owner: the migration login, not the app's.
    owner = make_engine(
        settings.model_copy(update={"database_role": ""}),
        application_name="owner",
        url=settings.migration_url(),
    )
    try:
        async with tenant_transaction(make_sessionmaker(owner), org) as session:
            await session.execute(text("DELETE FROM tasks WHERE id = :id"), {"id": state.task_id})
    finally:
        await owner.dispose()

    # A workflow runs a moment without its row (before its first save): no grace here.
    await ops.found(org, "workflow_without_row", row_grace=timedelta(0))
    [outcome] = await ops.repair(org, row_grace=timedelta(0))
    assert outcome.repaired, outcome
    assert (await row_of(sessionmaker, org, state.task_id)).due_at == state.due_at
    assert await ops.audit(org, row_grace=timedelta(0)) == []


# -- the Schedule ------------------------------------------------------------------------------------


@pytest.fixture
async def worker_process(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Settings, str]]:
    """`tickler worker` with a Schedule and a task queue of its own, and its /metrics address."""
    own = settings.model_copy(
        update={
            "temporal_task_queue": f"maintenance-{uuid.uuid4().hex[:8]}",
            "maintenance_schedule_id": f"tickler-maintenance-test-{uuid.uuid4().hex[:8]}",
            "worker_metrics_port": devstack.free_port(),
        }
    )
    env = command_env(
        own,
        maintenance_schedule_id=own.maintenance_schedule_id,
        worker_metrics_port=str(own.worker_metrics_port),
        # The interval is long: the test triggers the run itself.
        maintenance_interval_seconds="86400",
    )
    process = devstack.spawn(
        "tickler-worker",
        [sys.executable, "-m", "tickler", "worker"],
        log_path=tmp_path / "worker.log",
        cwd=tmp_path,
        env=env,
    )
    try:
        yield own, f"http://127.0.0.1:{own.worker_metrics_port}/metrics"
    finally:
        process.stop()


async def test_the_worker_creates_the_schedule_and_a_triggered_run_reports_findings(
    worker_process: tuple[Settings, str], ops: Ops
) -> None:
    own, metrics_url = worker_process
    schedule = ops.temporal.get_schedule_handle(own.maintenance_schedule_id)

    async def described() -> Any:
        try:
            return await schedule.describe()
        except Exception:
            return None

    description = await wait_until(described, within=30, what="the worker's maintenance schedule")
    try:
        action = description.schedule.action
        assert action.workflow == MAINTENANCE_WORKFLOW
        assert action.task_queue == own.temporal_task_queue
        [interval] = description.schedule.spec.intervals
        assert interval.every == timedelta(days=1)

        # Something off, in an organization of its own: an open task whose workflow was terminated.
        org = new_org()
        state = task_state(org=org, due_in=timedelta(hours=1))
        handle = await start_task(ops.temporal, state, ops.settings.temporal_task_queue)
        await handle.terminate("broken on purpose by a test")
        await ops.found(org, "open_without_workflow")

        await schedule.trigger()
        run = await wait_until(lambda: _first_run(schedule), within=30, what="the schedule's first run")
        assert run is not None
        result: MaintenanceResult = await asyncio.wait_for(
            ops.temporal.get_workflow_handle(run, result_type=MaintenanceResult).result(), timeout=120
        )
        assert result.audit is not None
        assert result.purge is not None
        # The whole suite's servers are audited: at least the finding planted here.
        assert result.audit.findings.get("open_without_workflow", 0) >= 1
        assert result.audit.repaired == {}, "the schedule reports only, unless TICKLER_MAINTENANCE_REPAIR"
        async with httpx.AsyncClient() as client:
            scraped = (await client.get(metrics_url)).text
        gauge = {
            kind: int(value)
            for kind, value in re.findall(
                r'^tickler_audit_findings\{[^}]*kind="(\w+)"[^}]*\} (\d+)$', scraped, re.MULTILINE
            )
        }
        assert gauge.keys() == set(FINDING_KINDS), "every kind, zeros included"
        assert gauge["open_without_workflow"] >= 1
        assert re.search(r"^tickler_audit_completed_timestamp\w*\{[^}]*\} \d", scraped, re.MULTILINE), scraped
    finally:
        await schedule.delete()


async def test_the_schedule_is_set_up_idempotently_and_a_paused_one_stays_paused(
    temporal: Client, settings: Settings
) -> None:
    own = settings.model_copy(
        update={"maintenance_schedule_id": f"tickler-maintenance-test-{uuid.uuid4().hex[:8]}"}
    )
    handle = temporal.get_schedule_handle(own.maintenance_schedule_id)
    try:
        assert await ensure_schedule(temporal, own) == "created"
        assert await ensure_schedule(temporal, own) == "unchanged", "its input decodes, through the codec"
        await handle.pause(note="paused by an operator")
        hourly = own.model_copy(update={"maintenance_interval_seconds": 3600, "maintenance_repair": True})
        assert await ensure_schedule(temporal, hourly) == "updated"
        description = await handle.describe()
        assert description.schedule.state.paused
        assert description.schedule.state.note == "paused by an operator"
        assert [i.every for i in description.schedule.spec.intervals] == [timedelta(hours=1)]
        assert await ensure_schedule(temporal, hourly) == "unchanged"
    finally:
        await handle.delete()


async def _first_run(schedule: Any) -> str | None:
    actions = (await schedule.describe()).info.recent_actions
    return actions[0].action.workflow_id if actions else None


async def test_the_maintenance_role_sees_every_organization_but_writes_no_task(
    maintenance: async_sessionmaker[AsyncSession],
    sessionmaker: async_sessionmaker[AsyncSession],
    temporal: Client,
    settings: Settings,
    worker: Worker,
) -> None:
    orgs = [new_org(), new_org()]
    for org in orgs:
        await start_task(temporal, task_state(org=org), settings.temporal_task_queue)
    async with maintenance() as session:
        assert await session.scalar(text("SELECT current_user")) == "tickler_maintenance"
        seen = await session.scalar(
            select(func.count()).select_from(Task).where(Task.organization_id.in_(orgs))
        )
        assert seen == 2
    with pytest.raises(Exception, match="permission denied"):
        async with maintenance.begin() as session:
            await session.execute(
                text("UPDATE tasks SET title = 'x' WHERE organization_id = :o"), {"o": orgs[0]}
            )
