"""The maintenance Schedule: a MaintenanceWorkflow run every TICKLER_MAINTENANCE_INTERVAL_SECONDS on the
task queue, created or brought up to date by every worker at start (and by `tickler schedule`).

An update keeps the Schedule's state: a Schedule an operator paused in the Web UI stays paused.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Literal

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from core.maintenance import MAINTENANCE_WORKFLOW, MaintenanceInput
from core.settings import Settings

log = logging.getLogger(__name__)

# A run that cannot finish (no worker polls its queue) ends after this, so that the next one can start:
# runs never overlap (SKIP).
RUN_TIMEOUT = timedelta(hours=12)
# A worker does not wait longer than this for Temporal to set the Schedule up at its start.
SETUP_TIMEOUT_SECONDS = 10.0


def maintenance_input(settings: Settings) -> MaintenanceInput:
    return MaintenanceInput(
        repair=settings.maintenance_repair, retention_days=settings.notification_retention_days
    )


def maintenance_schedule(settings: Settings) -> Schedule:
    work = maintenance_input(settings)
    days = work.retention_days
    purge = f"purge read notifications after {days} days" if days else "no purge"
    return Schedule(
        action=ScheduleActionStartWorkflow(
            MAINTENANCE_WORKFLOW,
            work,
            # Each run's id is this plus the time it was scheduled for.
            id=settings.maintenance_schedule_id,
            task_queue=settings.temporal_task_queue,
            execution_timeout=RUN_TIMEOUT,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.maintenance_interval_seconds))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(
            note=f"Tickler: audit ({'and repair' if work.repair else 'report only'}), {purge}"
        ),
    )


async def _same(client: Client, current: Schedule, wanted: Schedule) -> bool:
    action, want = current.action, wanted.action
    if not (
        isinstance(action, ScheduleActionStartWorkflow) and isinstance(want, ScheduleActionStartWorkflow)
    ):
        return False
    try:
        # Through the client's codec: the input is stored encrypted (core/codec.py).
        (args,) = await client.data_converter.decode(list(action.args), [MaintenanceInput])
    except Exception:  # written by something else, or with another key: replace it
        return False
    return (
        action.workflow == want.workflow
        and action.task_queue == want.task_queue
        and action.execution_timeout == want.execution_timeout
        and args == want.args[0]
        and [i.every for i in current.spec.intervals] == [i.every for i in wanted.spec.intervals]
        and current.policy.overlap == wanted.policy.overlap
    )


async def ensure_schedule(client: Client, settings: Settings) -> Literal["created", "updated", "unchanged"]:
    """Create the Schedule, or update it when it differs from what the settings say."""
    wanted = maintenance_schedule(settings)
    try:
        await client.create_schedule(settings.maintenance_schedule_id, wanted)
        return "created"
    except ScheduleAlreadyRunningError:
        pass
    changed = False

    async def update(input: ScheduleUpdateInput) -> ScheduleUpdate | None:
        nonlocal changed
        current = input.description.schedule
        if await _same(client, current, wanted):
            return None
        changed = True
        if current.state.paused:
            wanted.state = current.state  # paused stays paused, with the operator's note
        return ScheduleUpdate(schedule=wanted)

    await client.get_schedule_handle(settings.maintenance_schedule_id).update(update)
    return "updated" if changed else "unchanged"


async def ensure_schedule_at_start(client: Client, settings: Settings) -> None:
    """What the worker does at start: never fails the worker (several start at once; Temporal may be
    slow to answer): the Schedule is there already, or the next worker start makes it."""
    if not settings.maintenance_interval_seconds:
        return
    try:
        async with asyncio.timeout(SETUP_TIMEOUT_SECONDS):
            outcome = await ensure_schedule(client, settings)
    except Exception:
        log.warning("no maintenance schedule %r", settings.maintenance_schedule_id, exc_info=True)
        return
    log.info(
        "maintenance schedule %r %s: every %d s, repair %s",
        settings.maintenance_schedule_id,
        outcome,
        settings.maintenance_interval_seconds,
        "on" if settings.maintenance_repair else "off",
    )
