"""What the task workflows' histories say about each reminder: when its timer was armed, when it fired,
when the delivery activity was scheduled, started and completed, all relative to the fire time.

The server counts a timer from the moment it records the TimerStarted event, while the workflow computed
the duration from ``workflow.now()`` (the start of its workflow task): ``armed + duration - fire_at`` is
the lateness the arming itself builds in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.stats import summary


@dataclass
class Timeline:
    armed: float | None = None  # TimerStarted event time
    target: float | None = None  # armed + start_to_fire_timeout: when the server will fire it
    fired: float | None = None
    woken: float | None = None  # the workflow task that handled TimerFired started
    scheduled: float | None = None  # deliver_reminder ActivityTaskScheduled
    started: float | None = None
    completed: float | None = None
    events: int = 0


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


async def timeline(client: Client, task_id: str) -> Timeline:
    history = await client.get_workflow_handle(f"task-{task_id}").fetch_history()
    line = Timeline(events=len(history.events))
    for event in history.events:
        at = _seconds(event.event_time)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_TIMER_STARTED and line.armed is None:
            line.armed = at
            line.target = at + _seconds(event.timer_started_event_attributes.start_to_fire_timeout)
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED and line.fired is None:
            line.fired = at
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and line.fired is not None and not line.woken:
            line.woken = at
        elif (
            kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and line.scheduled is None
            and event.activity_task_scheduled_event_attributes.activity_type.name == "deliver_reminder"
        ):
            line.scheduled = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and line.scheduled and not line.started:
            line.started = at
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED and line.scheduled and not line.completed:
            line.completed = at
    return line


async def analyse(
    address: str, fire_times: dict[str, float], *, concurrency: int = 16, limit: int | None = None
) -> dict[str, Any]:
    """Timelines of the tasks in ``fire_times`` (all, or the first ``limit``), summarised in ms."""
    client = await Client.connect(address)
    ids = list(fire_times)[: limit or None]
    gate = asyncio.Semaphore(concurrency)

    async def one(task_id: str) -> tuple[str, Timeline | None]:
        async with gate:
            try:
                return task_id, await timeline(client, task_id)
            except Exception:
                return task_id, None

    results = await asyncio.gather(*(one(t) for t in ids))
    lines = {t: line for t, line in results if line is not None}

    def stage(name: str) -> list[float]:
        values = []
        for task_id, line in lines.items():
            at = getattr(line, name)
            if at is not None:
                values.append((at - fire_times[task_id]) * 1000)
        return values

    armed = stage("armed")
    late_armed = [v for v in armed if v >= 0]
    return {
        "checked": len(lines),
        "unreadable": len(ids) - len(lines),
        "timers_armed": len(armed),
        "armed_after_due": len(late_armed),
        "every_timer_armed_before_due": len(armed) == len(lines) and not late_armed,
        # Negative: before the fire time. Each in ms relative to the reminder's fire time.
        "stages_ms": {
            "timer_armed": summary(armed),
            "timer_target": summary(stage("target")),
            "timer_fired": summary(stage("fired")),
            "wakeup_task_started": summary(stage("woken")),
            "activity_scheduled": summary(stage("scheduled")),
            "activity_started": summary(stage("started")),
            "activity_completed": summary(stage("completed")),
        },
        "history_events": summary([float(line.events) for line in lines.values()], 0),
    }


def arrival_stages(arrivals: Sequence[Any]) -> dict[str, Any]:
    """The two stages the client sees: the row's created_at and the arrival, relative to the fire time."""
    return {
        "row_created": summary([(a.created_at - a.fire_at) * 1000 for a in arrivals]),
        "arrived": summary([a.latency_ms for a in arrivals]),
    }
