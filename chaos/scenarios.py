"""The faults, each injected while clients stream through the proxy, and the tally of what reached them.

Each scenario works in an organization of its own, with new users, on a stack that is whole when it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from chaos.clients import Crowd, StreamClient
from chaos.report import Outcome
from chaos.stack import Stack, stream_counts

# Creating tasks through the proxy, this many at a time.
CREATE_CONCURRENCY = 32
# Seconds allowed per created task before the burst is due, over a fixed lead: all exist before it fires.
CREATE_SECONDS_PER_TASK = 0.04
CREATE_LEAD = 8.0
# After the last expected event, how long to keep listening for a duplicate.
SETTLE = 3.0
OPEN_WITHIN = 120.0
# A creation that meets a dying web process (a 502 from the proxy, a reset) is sent again, this often.
CREATE_ATTEMPTS = 5
RETRIED = {502, 503, 504}


@dataclass
class Scale:
    burst: int = 1000
    burst_users: int = 50
    web_streams: int = 2000
    redis_streams: int = 200
    redis_outage: float = 10.0
    # From the fault until every expected event must have arrived.
    deliver_within: float = 180.0


SCALES = {
    "full": Scale(),
    "small": Scale(burst=200, web_streams=200, redis_streams=50, deliver_within=120.0),
}


def _users(org: str, count: int, stack: Stack) -> list[StreamClient]:
    return [StreamClient(user=f"u{n}", headers=stack.headers(org, f"u{n}")) for n in range(count)]


async def _create(
    http: httpx.AsyncClient,
    stack: Stack,
    org: str,
    users: list[str],
    due: datetime,
    notes: list[str] | None = None,
) -> dict[str, str]:
    """One reminder due at ``due`` per entry of ``users``; task id -> user."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    created: dict[str, str] = {}

    async def one(n: int, user: str) -> None:
        headers = {**stack.headers(org, user), "Idempotency-Key": f"{org}-{n}"}
        body = {"title": f"chaos {n}", "due_at": due.isoformat()}
        for attempt in range(CREATE_ATTEMPTS):
            async with gate:
                try:
                    response = await http.post("/v1/tasks", json=body, headers=headers)
                except httpx.TransportError as exc:
                    failure = type(exc).__name__
                else:
                    if response.status_code == 201:
                        created[str(response.json()["id"])] = user
                        return
                    failure = f"HTTP {response.status_code}"
                    if response.status_code not in RETRIED:
                        raise RuntimeError(f"creating a task answered {failure}: {response.text[:300]}")
            # As a careful client does: the same Idempotency-Key again, after a pause.
            retries[failure] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"creating a task failed {CREATE_ATTEMPTS} times, last: {failure}")

    retries: Counter[str] = Counter()
    await asyncio.gather(*(one(n, user) for n, user in enumerate(users)))
    if retries and notes is not None:
        notes.append(f"task creations retried with their Idempotency-Key: {dict(retries)}")
    return created


def _due_in(count: int) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=CREATE_LEAD + CREATE_SECONDS_PER_TASK * count)


async def _tally(
    outcome: Outcome, stack: Stack, org: str, crowd: Crowd, expected: dict[str, str], recovered_from: float
) -> None:
    """Fill in delivered, lost, duplicates, lateness and time to recover (from ``recovered_from``, a
    time.time(), to the last expected event)."""
    by_user = {c.user: c for c in crowd.clients}
    wanted = set(expected)
    got = [r for c in crowd.clients for r in c.received if r.task_id in wanted]
    firsts: dict[str, float] = {}
    for r in got:
        firsts[r.task_id] = min(firsts.get(r.task_id, r.at), r.at)
    outcome.delivered = sum(1 for task, user in expected.items() if task in by_user[user].task_ids)
    outcome.lost = len(expected) - outcome.delivered
    lateness = sorted(r.lateness for r in got)
    if lateness:
        outcome.max_lateness_s = lateness[-1]
        outcome.p99_lateness_s = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
    if firsts and not outcome.lost:
        # 0 when everything had arrived before the fault (a burst drained within its first second).
        outcome.time_to_recover_s = max(0.0, max(firsts.values()) - recovered_from)
        before = sum(1 for t in firsts.values() if t < recovered_from)
        outcome.notes.append(f"delivered before the fault (or before recovery began): {before}")
    for client in crowd.clients:
        on_connection, on_client = client.duplicate_events()
        outcome.duplicate_events_per_connection += on_connection
        outcome.duplicate_events_per_client += on_client
    counts = await stack.notification_counts(org, list(expected))
    outcome.missing_rows = sum(1 for task in expected if counts.get(task, 0) == 0)
    outcome.duplicate_rows = sum(n - 1 for n in counts.values() if n > 1)
    errors = sum((c.errors for c in crowd.clients), start=type(crowd.clients[0].errors)())
    if errors:
        outcome.notes.append(f"connection ends seen by clients: {dict(errors)}")
    resyncs = sum(c.resyncs for c in crowd.clients)
    if resyncs:
        outcome.notes.append(f"resync events: {resyncs}")
    outcome.must_hold.update(
        {
            "0 lost": outcome.lost == 0,
            "0 duplicate rows": outcome.duplicate_rows == 0 and outcome.missing_rows == 0,
            "0 duplicate events on any connection": outcome.duplicate_events_per_connection == 0,
        }
    )


async def worker_killed_mid_burst(stack: Stack, scale: Scale) -> Outcome:
    """SIGKILL one worker 1 s into a burst of reminders due at once, streams of its users open."""
    outcome = Outcome(
        name="worker SIGKILL mid-burst",
        fault=f"SIGKILL worker-1 1 s after {scale.burst} reminders fall due at once, "
        f"{scale.burst_users} users streaming through the proxy; `tickler run` starts it again.",
        reminders=scale.burst,
        streams=scale.burst_users,
    )
    org = f"chaos-{uuid.uuid4().hex[:10]}"
    crowd = Crowd(stack.proxy, _users(org, scale.burst_users, stack))
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        due = _due_in(scale.burst)
        owners = [c.user for c in crowd.clients]
        burst = [owners[n % len(owners)] for n in range(scale.burst)]
        expected = await _create(http, stack, org, burst, due, outcome.notes)
        if datetime.now(UTC) > due:
            outcome.notes.append("creating the burst took past its due time: lateness includes that")
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 1.0))
        victim = stack.pids("worker")[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        after = killed - due.timestamp()
        outcome.notes.append(f"killed worker pid {victim} {after:.2f} s after the due time")
        await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, killed)
    return outcome


async def web_killed_under_streams(stack: Stack, scale: Scale) -> Outcome:
    """SIGKILL the web process holding the most streams, then a reminder for every streaming user."""
    outcome = Outcome(
        name="web SIGKILL under streams",
        fault=f"SIGKILL the web process holding the most of {scale.web_streams} open streams, then one "
        "reminder for each of those users; clients reconnect through the proxy with Last-Event-ID.",
        reminders=scale.web_streams,
        streams=scale.web_streams,
    )
    org = f"chaos-{uuid.uuid4().hex[:10]}"
    crowd = Crowd(stack.proxy, _users(org, scale.web_streams, stack))
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        counts = await stream_counts(http, stack)
        port = max(counts, key=lambda p: counts[p])
        victim = stack.web_pid(port)
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        outcome.notes.append(f"streams per web port before the kill: {counts}; killed the one on {port}")
        users = [c.user for c in crowd.clients]
        expected = await _create(http, stack, org, users, _due_in(scale.web_streams), outcome.notes)
        delivered = await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, killed)
    dropped = [c for c in crowd.clients if c.dropped_at]
    outcome.dropped_streams = len(dropped)
    back = [t for c in dropped for t in c.opened_at[1:2]]
    if back:
        outcome.reconnect_spread_s = max(back) - min(back)
        # Recovered once the last dropped client is streaming again (the reminders come later, when due).
        outcome.time_to_recover_s = max(back) - killed
        outcome.notes.append(
            f"reconnections: first {min(back) - killed:.2f} s after the kill, median "
            f"{statistics.median(back) - killed:.2f} s, last {max(back) - killed:.2f} s"
        )
    outcome.must_hold["every dropped client reconnected"] = len(back) == len(dropped)
    outcome.must_hold["the killed process held streams"] = counts[port] > 0
    once = outcome.duplicate_events_per_client == 0
    outcome.must_hold["nothing received twice across reconnections"] = once
    if not delivered:
        outcome.notes.append(f"not all delivered within {scale.deliver_within} s")
    return outcome


async def redis_stopped(stack: Stack, scale: Scale) -> Outcome:
    """Redis frozen (SIGSTOP) across a firing window, streams open; SIGCONT after the outage.

    Not killed: `tickler run` stops the whole stack when one of its servers exits (tickler/run.py,
    `_supervise`), and restarting Redis behind its back would leave it supervising a dead pid. A frozen
    Redis is the harder case for the clients anyway: connections stay open and calls hang until their
    timeouts, where a dead one refuses at once."""
    outcome = Outcome(
        name="Redis stopped",
        fault=f"SIGSTOP redis-server for {scale.redis_outage:.0f} s (then SIGCONT), one reminder per "
        f"user due 2 s into the outage, {scale.redis_streams} streams open.",
        reminders=scale.redis_streams,
        streams=scale.redis_streams,
    )
    org = f"chaos-{uuid.uuid4().hex[:10]}"
    crowd = Crowd(stack.proxy, _users(org, scale.redis_streams, stack))
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        due = _due_in(scale.redis_streams) + timedelta(seconds=2)
        expected = await _create(http, stack, org, [c.user for c in crowd.clients], due, outcome.notes)
        [redis] = stack.pids("redis")
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 2.0))
        os.kill(redis, signal.SIGSTOP)
        try:
            await asyncio.sleep(scale.redis_outage)
        finally:
            os.kill(redis, signal.SIGCONT)
        resumed = time.time()
        early = sum(1 for c in crowd.clients for r in c.received if r.task_id in expected and r.at < resumed)
        outcome.notes.append(f"delivered on streams during the outage: {early}")
        await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, resumed)
    outcome.must_hold["every stream received what it missed, once"] = (
        outcome.lost == 0 and outcome.duplicate_events_per_client == 0
    )
    return outcome


SCENARIOS = {
    "worker-kill": worker_killed_mid_burst,
    "web-kill": web_killed_under_streams,
    "redis-stop": redis_stopped,
}
