"""The issue's scenarios. Each returns a JSON-able dict of its figures; times are Unix times, on one clock.

1. spread: N tasks due spread over S seconds, latency due -> SSE arrival
2. burst: N tasks due at one instant: latency, last arrival, drain rate, timers armed in time
3. create: POST /v1/tasks with 32 clients in flight: tasks/s and latency
4. fanout: thousands of streams on one web process: RSS, CPU, latency while all are connected
5. idle: streams open and nothing due: statements reaching PostgreSQL, CPU per process
6. sustained: reminders due evenly at a rising rate, step after step: the highest rate whose p99 holds
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench import history
from bench.clients import Arrival, Collector, StreamSet, create_tasks, spread, users_of
from bench.fanout import Fleet, collector_of
from bench.stack import App, CpuMeter, Stack, rss_bytes
from bench.stats import summary
from core.payloads import DELIVERY_GRACE, GRACE_SPREAD
from core.settings import Settings

CREATE_CONCURRENCY = 32
# The spread scenario creates its tasks at this concurrency: gently, as over a working day, so that what
# it measures is the path from due time to the client rather than the aftermath of a creation burst.
GENTLE_CONCURRENCY = 4
WARM_UP_TASKS = 40
STREAM_USERS = 50


@dataclass(frozen=True)
class Scale:
    name: str
    spread_count: int
    spread_seconds: float
    bursts: tuple[int, ...]
    create_count: int
    fanout_streams: int
    fanout_processes: int
    fanout_notifications: int
    fanout_seconds: float
    idle_streams: int
    idle_seconds: float
    # The sustained scenario's steps (reminders per second), each sustained_seconds long, back to back.
    sustained_rates: tuple[int, ...] = (5, 20, 80)
    sustained_seconds: float = 10.0


SCALES = {
    "small": Scale("small", 200, 20.0, (200, 1000), 500, 2000, 2, 100, 10.0, 200, 20.0),
    # The 10,000 burst: issue 16 (a burst that no longer pays a workflow task each at its instant).
    "full": Scale(
        "full",
        1000,
        60.0,
        (1000, 5000, 10_000),
        2000,
        10_000,
        4,
        # 10 a second, as before, for a minute: a p99 of 200 was their third largest.
        600,
        60.0,
        1000,
        60.0,
        (5, 10, 20, 40, 80, 160),
        20.0,
    ),
}
# How long settle() waits at most for the task queue to drain, and the backlog it calls drained.
SETTLE_LIMIT = 600.0
SETTLE_BACKLOG = 5
# The sustained scenario's bound: the highest step whose p99, and every lower step's, is at most this.
SUSTAINED_P99_MS = 15.0


@dataclass
class Context:
    stack: Stack
    app: App
    scale: Scale
    run_id: str
    history_limit: int
    # Measured by the warm-up (GENTLE_CONCURRENCY in flight) and by the create scenario: they size how
    # far ahead spread and burst tasks are due, so that their creation ends before the first is due.
    gentle_rate: float = 20.0
    creation_rate: float = 100.0
    # When the warm-up's reminders have run their grace steps too (up to DELIVERY_GRACE + GRACE_SPREAD
    # after their instant): the idle scenario measures from then, not the warm-up's aftermath.
    quiet_after: float = 0.0
    notes: list[str] = field(default_factory=list)
    # settle()'s client of the Temporal server, made at its first use.
    temporal: Client | None = None

    def due_until(self, last_due: float) -> None:
        """A scenario's reminders are due up to ``last_due``: the next scenario settles until their grace
        steps have run (settle())."""
        grace = (
            (DELIVERY_GRACE + GRACE_SPREAD).total_seconds() if self.app.system.startswith("tickler") else 0.0
        )
        self.quiet_after = max(self.quiet_after, last_due + grace + 2.0)

    def org(self, scenario: str) -> str:
        return f"bench-{self.run_id}-{self.app.system}-{scenario}-{uuid.uuid4().hex[:6]}"

    def pids(self) -> dict[str, int]:
        pids = {f"{self.app.system}-{role}": pid for role, pid in self.app.pids().items()}
        if self.app.system == "tickler":
            pids["temporal"] = self.stack.servers["temporal"].popen.pid
        pids["postgres"] = self.stack.servers["postgres"].popen.pid
        pids["redis"] = self.stack.servers["redis"].popen.pid
        return pids

    def meter(self) -> CpuMeter:
        return CpuMeter(self.pids())

    def margin(self, count: int, *, gentle: bool = False) -> float:
        """Seconds ahead to set due times, so that creating ``count`` tasks ends well before them. The
        rate is the slowest seen so far: creating a burst runs slower than the create scenario (each
        task also arms, and the worker's cache and the server's database grow), and the slower the
        larger (2026-12-01, Tickler: 83.7/s in create; 78.6, 57.7, 28.4/s for bursts of 1,000, 5,000,
        10,000, the last because it spilled past its instant and competed with its own delivery). Hence
        twice the time at that rate."""
        rate = self.gentle_rate if gentle else self.creation_rate
        return 5.0 + 2.0 * count / max(rate, 5.0)


def latency_figures(arrivals: Sequence[Arrival], expected: int, collector: Collector) -> dict[str, Any]:
    lat = [a.latency_ms for a in arrivals]
    return {
        "expected": expected,
        "arrived": len(arrivals),
        "missing": expected - len(arrivals),
        "duplicates": collector.duplicates([a.task_id for a in arrivals]),
        "early": sum(1 for v in lat if v < 0),
        "row_written_early": sum(1 for a in arrivals if a.created_at < a.fire_at),
        "latency_ms": summary(lat),
        "row_created_ms": summary([(a.created_at - a.fire_at) * 1000 for a in arrivals]),
        # From the row's transaction to the client: commit, publish, hub, the stream's query, the write.
        "row_to_client_ms": summary([(a.arrived - a.created_at) * 1000 for a in arrivals]),
        "stream_reconnects": collector.reconnects,
        "stream_errors": collector.errors[:5],
        "client_gc_pauses_while_notified": collector.pauses_between(
            min((a.fire_at for a in arrivals), default=0.0) - 1.0,
            max((a.arrived for a in arrivals), default=0.0) + 1.0,
        ),
    }


def cpu_ms_per(cpu: dict[str, dict[str, float]], count: int) -> dict[str, float]:
    if count == 0:
        return {}
    per = {name: round(1000 * v["cpu_seconds"] / count, 2) for name, v in cpu.items() if name[0] != "_"}
    per["total"] = round(sum(per.values()), 2)
    return per


async def warm_up(ctx: Context) -> None:
    """Reminders end to end, due shortly: proves the path works before anything is measured, and gives
    the creation rate at GENTLE_CONCURRENCY."""
    streams = StreamSet(ctx.app.url, ctx.org("warmup"), ["w0", "w1"])
    await streams.open()
    try:
        due = time.time() + 2.0 + WARM_UP_TASKS / 10
        created = await create_tasks(
            ctx.app.url, streams.org, streams.users, [due] * WARM_UP_TASKS, concurrency=GENTLE_CONCURRENCY
        )
        ctx.gentle_rate = created.rate
        ctx.quiet_after = due + (DELIVERY_GRACE + GRACE_SPREAD).total_seconds() + 2.0
        if len(created.due) != WARM_UP_TASKS:
            raise RuntimeError(f"warm-up: {created.statuses} {created.errors[:3]}")
        if not await streams.collector.wait_for(created.task_ids, due + 60.0):
            raise RuntimeError(f"warm-up: notifications did not arrive on {ctx.app.system}'s streams")
    finally:
        await streams.close()


async def settle(ctx: Context) -> None:
    """Before a scenario, let the ones before it finish: until their reminders' grace steps have run
    (Context.due_until), then, for Tickler, until the worker has taken up the workflow and activity tasks
    they left on its task queue. Without it, a scenario that followed the 10,000 burst measured the
    burst's 10,000 grace steps being recorded (its creates answered 503). Bounded by SETTLE_LIMIT; a note
    says when it did not drain."""
    await asyncio.sleep(max(0.0, ctx.quiet_after - time.time()))
    if not ctx.app.system.startswith("tickler"):
        return
    if ctx.temporal is None:
        ctx.temporal = await Client.connect(ctx.stack.temporal_address)
    client = ctx.temporal
    queue = TaskQueue(name=Settings.model_fields["temporal_task_queue"].default)
    deadline = time.monotonic() + SETTLE_LIMIT
    began = time.monotonic()
    while True:
        backlog = 0
        for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace="default", task_queue=queue, task_queue_type=kind, report_stats=True
                )
            )
            backlog += described.stats.approximate_backlog_count
        if backlog <= SETTLE_BACKLOG:
            waited = time.monotonic() - began
            if waited >= 1.0:
                ctx.notes.append(f"{ctx.app.system}: settled, the task queue drained in {waited:.0f} s")
            return
        if time.monotonic() > deadline:
            ctx.notes.append(f"{ctx.app.system}: {backlog} tasks still queued after {SETTLE_LIMIT:.0f} s")
            return
        await asyncio.sleep(1.0)


# -- 3. creation --------------------------------------------------------------------------------------


async def create(ctx: Context) -> dict[str, Any]:
    count = ctx.scale.create_count
    org = ctx.org("create")
    # Due in a day: nothing fires during the run.
    due = time.time() + 86_400
    meter = ctx.meter()
    meter.start()
    result = await create_tasks(
        ctx.app.url,
        org,
        users_of(STREAM_USERS),
        [due + n / 1000 for n in range(count)],
        concurrency=CREATE_CONCURRENCY,
    )
    cpu = meter.stop()
    ctx.creation_rate = result.rate
    return {
        "count": count,
        "created": len(result.due),
        "concurrency": CREATE_CONCURRENCY,
        "seconds": round(result.seconds, 2),
        "tasks_per_second": round(result.rate, 1),
        "latency_ms": summary(result.latencies_ms),
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "errors": result.errors[:5],
        "cpu": cpu,
        "cpu_ms_per_task": cpu_ms_per(cpu, len(result.due)),
    }


# -- 1. spread ----------------------------------------------------------------------------------------


async def spread_latency(ctx: Context) -> dict[str, Any]:
    count, seconds = ctx.scale.spread_count, ctx.scale.spread_seconds
    streams = StreamSet(ctx.app.url, ctx.org("spread"), users_of(STREAM_USERS))
    await streams.open()
    try:
        first_due = time.time() + ctx.margin(count, gentle=True)
        dues = spread(first_due, seconds, count)
        ctx.due_until(dues[-1])
        created = await create_tasks(
            ctx.app.url, streams.org, streams.users, dues, concurrency=GENTLE_CONCURRENCY
        )
        meter = ctx.meter()
        meter.start()
        await streams.collector.wait_for(created.task_ids, dues[-1] + 30.0)
        cpu = meter.stop()
        arrivals = streams.collector.first(created.task_ids)
        out = {
            "count": count,
            "seconds": seconds,
            "created": len(created.due),
            "creation_concurrency": GENTLE_CONCURRENCY,
            "creation_seconds": round(created.seconds, 2),
            "creation_latency_ms": summary(created.latencies_ms),
            "creation_ended_before_first_due_s": round(first_due - created.ended, 2),
            **latency_figures(arrivals, len(created.due), streams.collector),
            "cpu": cpu,
        }
        if ctx.app.system == "tickler":
            fire = {a.task_id: a.fire_at for a in arrivals}
            out["history"] = await history.analyse(ctx.stack.temporal_address, fire, limit=200)
        return out
    finally:
        await streams.close()


# -- 2. bursts ----------------------------------------------------------------------------------------


async def burst(ctx: Context, count: int) -> dict[str, Any]:
    streams = StreamSet(ctx.app.url, ctx.org(f"burst{count}"), users_of(STREAM_USERS))
    await streams.open()
    try:
        due = time.time() + ctx.margin(count)
        ctx.due_until(due)
        meter = ctx.meter()
        meter.start()
        created = await create_tasks(
            ctx.app.url, streams.org, streams.users, [due] * count, concurrency=CREATE_CONCURRENCY
        )
        creation_cpu = meter.stop()
        # A burst's creation runs slower than the create scenario's: the next margin takes the slowest.
        ctx.creation_rate = min(ctx.creation_rate, created.rate)
        if created.ended > due:
            ctx.notes.append(
                f"{ctx.app.system} burst {count}: creation ended {created.ended - due:.1f} s late"
            )
        # Wait for the due time, then meter the drain alone.
        await asyncio.sleep(max(0.0, due - time.time() - 0.5))
        meter = ctx.meter()
        meter.start()
        deadline = due + max(60.0, count / 20)
        await streams.collector.wait_for(created.task_ids, deadline)
        cpu = meter.stop()
        arrivals = streams.collector.first(created.task_ids)
        last = max((a.arrived for a in arrivals), default=due) - due
        first = min((a.arrived for a in arrivals), default=due) - due
        out = {
            "count": count,
            "created": len(created.due),
            "creation_seconds": round(created.seconds, 2),
            "creation_rate": round(created.rate, 1),
            "creation_ended_before_due_s": round(due - created.ended, 2),
            "creation_statuses": {str(k): v for k, v in created.statuses.items()},
            **latency_figures(arrivals, len(created.due), streams.collector),
            "first_arrival_s": round(first, 3),
            "last_arrival_s": round(last, 3),
            "drain_per_second": round(len(arrivals) / last, 1) if last > 0 else None,
            "gave_up_after_s": round(deadline - due, 1) if len(arrivals) < len(created.due) else None,
            "creation_cpu": creation_cpu,
            "cpu": cpu,
            "cpu_ms_per_notification": cpu_ms_per(cpu, len(arrivals)),
        }
        if ctx.app.system == "tickler":
            fire = dict.fromkeys(created.task_ids, due)
            out["history"] = await history.analyse(ctx.stack.temporal_address, fire, limit=ctx.history_limit)
        return out
    finally:
        await streams.close()


# -- 6. sustained -------------------------------------------------------------------------------------


async def sustained(ctx: Context) -> dict[str, Any]:
    """Reminders due evenly at a rising rate, one step after the other with no gap (5/s for 20 s, then
    10/s, ...), all created ahead as over a working day; per step, the latency from due to stream. The
    answer is the highest rate whose p99 stays within SUSTAINED_P99_MS, every lower step's too: where a
    backlog starts, it carries into the next step, so the first step over the bound ends the climb."""
    rates, seconds = ctx.scale.sustained_rates, ctx.scale.sustained_seconds
    counts = [round(rate * seconds) for rate in rates]
    streams = StreamSet(ctx.app.url, ctx.org("sustained"), users_of(STREAM_USERS))
    await streams.open()
    try:
        first_due = time.time() + ctx.margin(sum(counts))
        dues: list[float] = []
        for n, count in enumerate(counts):
            dues += spread(first_due + n * seconds, seconds, count)
        ctx.due_until(dues[-1])
        created = await create_tasks(
            ctx.app.url, streams.org, streams.users, dues, concurrency=CREATE_CONCURRENCY
        )
        if created.ended > first_due:
            late = created.ended - first_due
            ctx.notes.append(f"{ctx.app.system} sustained: creation ended {late:.1f} s late")
        await asyncio.sleep(max(0.0, first_due - time.time() - 0.5))
        meter = ctx.meter()
        meter.start()
        await streams.collector.wait_for(created.task_ids, dues[-1] + 30.0)
        cpu = meter.stop()
        arrivals = streams.collector.first(created.task_ids)
        steps: list[dict[str, Any]] = []
        for n, rate in enumerate(rates):
            start = first_due + n * seconds
            within = [a for a in arrivals if start <= a.fire_at < start + seconds]
            expected = sum(1 for due in created.due.values() if start <= due < start + seconds)
            figures = latency_figures(within, expected, streams.collector)
            steps.append(
                {
                    "rate": rate,
                    "expected": expected,
                    "missing": figures["missing"],
                    "early": figures["early"],
                    "latency_ms": figures["latency_ms"],
                    "row_created_ms": figures["row_created_ms"],
                }
            )
        held = 0
        for step in steps:
            p99 = step["latency_ms"].get("p99")
            if p99 is None and not step["missing"]:
                continue  # none of its tasks was created (the creation's statuses say why): no figure
            if step["missing"] or step["early"] or p99 is None or p99 > SUSTAINED_P99_MS:
                break
            held = step["rate"]
        return {
            "rates": list(rates),
            "step_seconds": seconds,
            "created": len(created.due),
            "creation_rate": round(created.rate, 1),
            "creation_statuses": {str(k): v for k, v in created.statuses.items()},
            "highest_rate_within_p99": held,
            "p99_bound_ms": SUSTAINED_P99_MS,
            "steps": steps,
            # The same, by rate, so that the report's medians over repeated runs reach each step.
            "by_rate": {str(step["rate"]): step for step in steps},
            "missing": sum(step["missing"] for step in steps),
            "early": sum(step["early"] for step in steps),
            "cpu": cpu,
        }
    finally:
        await streams.close()


# -- 4. fan-out ---------------------------------------------------------------------------------------


async def fanout(ctx: Context) -> dict[str, Any]:
    scale = ctx.scale
    web = ctx.app.processes["web"].popen.pid
    rss_before = rss_bytes(web)
    org = ctx.org("fanout")
    users = users_of(scale.fanout_streams)
    fleet = Fleet(ctx.app.url, org, users, scale.fanout_processes)
    try:
        opened = await asyncio.to_thread(fleet.start, 600.0)
        # A stream says `retry:` before it looks up the newest id: let those queries finish first.
        await asyncio.sleep(10.0)
        rss_open = rss_bytes(web)
        # Idle, all connected: what the web process costs.
        meter = CpuMeter({"tickler-web": web})
        meter.start()
        await asyncio.sleep(15.0)
        idle_cpu = meter.stop()
        # Notifications to random connected users, spread over the window.
        rng = random.Random(11)
        targets = rng.sample(users, min(scale.fanout_notifications, len(users)))
        first_due = time.time() + ctx.margin(len(targets))
        dues = spread(first_due, scale.fanout_seconds, len(targets))
        ctx.due_until(dues[-1])
        meter = CpuMeter({"tickler-web": web})
        meter.start()
        created = await create_tasks(ctx.app.url, org, targets, dues, concurrency=8)
        deadline = dues[-1] + 30.0
        while True:
            fleet_report = await asyncio.to_thread(fleet.report)
            got = {a.task_id for a in fleet_report.arrivals}
            if all(t in got for t in created.due) or time.time() > deadline:
                break
            await asyncio.sleep(2.0)
        busy_cpu = meter.stop()
        rss_after = rss_bytes(web)
        collector = collector_of(fleet_report.arrivals)
        collector.reconnects = fleet_report.reconnects
        collector.errors = fleet_report.errors
        collector.pauses = fleet_report.client_pauses
        firsts = collector.first(created.task_ids)
        return {
            "streams": scale.fanout_streams,
            "client_processes": scale.fanout_processes,
            "opened": opened["opened"],
            "open_seconds": opened["seconds"],
            "open_errors": opened["errors"],
            "still_open_at_end": fleet_report.still_open,
            "web_rss_mb": {
                "before": round(rss_before / 2**20, 1),
                "all_open": round(rss_open / 2**20, 1),
                "after_notifications": round(rss_after / 2**20, 1),
                "per_stream_kb": round((rss_open - rss_before) / 1024 / max(1, opened["opened"]), 1),
            },
            "web_cpu_idle_all_open": idle_cpu["tickler-web"],
            "web_cpu_while_notifying": busy_cpu["tickler-web"],
            "notifications": len(targets),
            **latency_figures(firsts, len(created.due), collector),
        }
    finally:
        await asyncio.to_thread(fleet.stop)


# -- 5. idle ------------------------------------------------------------------------------------------


async def idle(ctx: Context) -> dict[str, Any]:
    scale = ctx.scale
    streams = StreamSet(ctx.app.url, ctx.org("idle"), users_of(scale.idle_streams))
    await streams.open(within=300.0)
    pg = await asyncpg.connect(ctx.stack.superuser_dsn)
    rds = aioredis.from_url(ctx.stack.redis_url)
    try:
        await asyncio.sleep(max(3.0, ctx.quiet_after - time.time()))
        before = await rds.info("stats")
        await pg.execute("SELECT pg_stat_statements_reset()")
        meter = ctx.meter()
        meter.start()
        await asyncio.sleep(scale.idle_seconds)
        cpu = meter.stop()
        after = await rds.info("stats")
        rows = await pg.fetch(
            "SELECT d.datname, s.query, s.calls FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE s.query NOT ILIKE '%pg_stat_statements%' ORDER BY s.calls DESC"
        )
        calls = sum(int(r["calls"]) for r in rows)
        minutes = scale.idle_seconds / 60
        # Two INFO calls of our own.
        redis_commands = int(after["total_commands_processed"]) - int(before["total_commands_processed"]) - 1
        return {
            "streams": scale.idle_streams,
            "window_seconds": scale.idle_seconds,
            "postgres_statements": calls,
            "postgres_statements_per_minute": round(calls / minutes, 1),
            "postgres_top": [
                {"db": r["datname"], "calls": int(r["calls"]), "query": " ".join(r["query"].split())[:160]}
                for r in rows[:5]
            ],
            "redis_commands_per_minute": round(redis_commands / minutes, 1),
            "cpu": cpu,
        }
    finally:
        await pg.close()
        await rds.aclose()
        await streams.close()
