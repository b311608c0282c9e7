"""The faults, each injected while clients stream through the proxy, and the tally of what reached them.

Each scenario works in an organization of its own, with new users, on a stack that is whole when it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from redis.asyncio import Redis

from chaos.clients import STREAM, Crowd, StreamClient
from chaos.report import Outcome
from chaos.stack import REPLICAS, Stack, count_lines, stream_counts
from core.payloads import NotificationEvent, short_grace_key
from core.pubsub import Channel
from tickler.devstack.run_process import LogFollower

# Creating tasks through the proxy, this many at a time.
CREATE_CONCURRENCY = 32
# Seconds allowed per created task before the burst is due, over a fixed lead: all exist before it fires.
# 0.04 (25/s) was too little on a slow day (2026-12-01: 1,000 created through the proxy took ~63 s, so
# the worker killed "5 s before the instant" was killed 15-40 s after it).
CREATE_SECONDS_PER_TASK = 0.08
CREATE_LEAD = 8.0
# After the last expected event, how long to keep listening for a duplicate.
SETTLE = 3.0
OPEN_WITHIN = 120.0
# What the worker logs for each failed attempt of a delivery (it is retried), and the web process for each
# 503 that PostgreSQL's statement timeout (TICKLER_DATABASE_STATEMENT_TIMEOUT_MS) caused.
DELIVERY_FAILED = ("Completing activity as failed", "'deliver_reminder'")
# A batch of the worker's delivery wheel that failed (its reminders go to their workflows' grace timers).
WHEEL_FAILED = ("not delivered by the wheel",)
STATEMENT_TIMEOUT = ("answered 503", "canceling statement due to statement timeout")
# What a web process logs when it cuts off a stream whose client stopped reading (web/stream/routes.py).
CUT_OFF = "cut off a stream that took no write"
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
    temporal_outage: float = 10.0
    # The Temporal server is killed this long after the burst's due time. Negative: before it. Since
    # version 3 the workers' wheels deliver a burst of 1,000 within ~0.6 s of its instant, with no
    # Temporal call on the way (a kill 1 s in found it over: 2026-12-01), so the kill comes just before
    # the instant: every reminder armed in a wheel, delivered while the server is down, and its grace
    # timer and the recording of its delivery left for the server when it is back.
    kill_into_burst: float = -0.1
    # Worker killed in the lead window: this long before the burst's instant, its reminders all armed.
    kill_before_burst: float = 5.0
    # PostgreSQL stopped this long, one reminder per user due through it, API calls continuing.
    postgres_outage: float = 30.0
    postgres_users: int = 50
    # PostgreSQL hangs: the notifications table locked this long, one reminder per user due through it.
    lock_hold: float = 60.0
    lock_users: int = 50
    # A client that stops reading, beside this many that stream (and get a reminder each meanwhile).
    stall_streams: int = 50
    # After the web process frees its slot, how long to watch for the proxy ending the client's session
    # (HAProxy's `timeout client`, 60 s, counts from the last byte the client took); shorter than
    # PROXY_CLIENT_TIMEOUT, the proxy's end is noted if seen, not required.
    stall_proxy_watch: float = 75.0
    # Rolling restart: a reminder due every `roll_every` s for `roll_seconds`, to `roll_users` users.
    roll_seconds: float = 180.0
    roll_every: float = 0.1
    roll_users: int = 50
    # From the fault until every expected event must have arrived.
    deliver_within: float = 180.0
    # Reminders take Idempotency-Keys whose tasks' grace steps come ~4 s after the instant (3 to 33 s
    # by task id otherwise): a reminder the wheel could not deliver (its worker killed, PostgreSQL down)
    # is then up to 4 s late rather than 33. For `make test`'s short cases; a real run keeps the spread.
    short_graces: bool = False


SCALES = {
    "full": Scale(),
    "small": Scale(
        burst=200,
        web_streams=200,
        redis_streams=50,
        lock_hold=30.0,
        lock_users=50,
        stall_streams=50,
        roll_seconds=60.0,
        roll_users=20,
        deliver_within=120.0,
    ),
}


def _org_crowd(stack: Stack, count: int) -> tuple[str, Crowd]:
    """A fresh organization, and a crowd of ``count`` of its users to stream through the proxy."""
    org = f"chaos-{uuid.uuid4().hex[:10]}"
    users = [StreamClient(user=f"u{n}", headers=stack.headers(org, f"u{n}")) for n in range(count)]
    return org, Crowd(stack.proxy, users)


def _received_before(crowd: Crowd, expected: dict[str, str], at: float) -> int:
    """Events of ``expected`` tasks the crowd had received before ``at`` (a time.time())."""
    return sum(1 for c in crowd.clients for r in c.received if r.task_id in expected and r.at < at)


async def _create(
    http: httpx.AsyncClient,
    stack: Stack,
    org: str,
    users: list[str],
    due: datetime,
    notes: list[str] | None = None,
    every: float = 0.0,
    *,
    short_graces: bool = False,
) -> dict[str, str]:
    """One reminder per entry of ``users``, the n-th due at ``due`` + n * ``every`` s; task id -> user.
    ``short_graces``: see Scale."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    created: dict[str, str] = {}

    async def one(n: int, user: str) -> None:
        key = short_grace_key(org, user, f"{org}-{n}-") if short_graces else f"{org}-{n}"
        headers = {**stack.headers(org, user), "Idempotency-Key": key}
        body = {"title": f"chaos {n}", "due_at": (due + timedelta(seconds=n * every)).isoformat()}
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
    have = {c.user: c.task_ids for c in crowd.clients}
    wanted = set(expected)
    got = [r for c in crowd.clients for r in c.received if r.task_id in wanted]
    firsts: dict[str, float] = {}
    for r in got:
        firsts[r.task_id] = min(firsts.get(r.task_id, r.at), r.at)
    outcome.delivered = sum(1 for task, user in expected.items() if task in have[user])
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


async def _burst(
    http: httpx.AsyncClient, stack: Stack, org: str, crowd: Crowd, scale: Scale, outcome: Outcome
) -> tuple[datetime, dict[str, str]]:
    """Once every stream is open, ``scale.burst`` reminders due at one instant, spread over the crowd's
    users; that instant and task id -> user."""
    await crowd.all_open(OPEN_WITHIN)
    count = scale.burst
    due = _due_in(count)
    owners = [c.user for c in crowd.clients]
    users = [owners[n % len(owners)] for n in range(count)]
    expected = await _create(http, stack, org, users, due, outcome.notes, short_graces=scale.short_graces)
    if datetime.now(UTC) > due:
        outcome.notes.append("creating the burst took past its due time: lateness includes that")
    return due, expected


async def _kill_a_worker(
    stack: Stack, scale: Scale, outcome: Outcome, offset: float
) -> tuple[datetime, dict[str, str], Crowd]:
    """A burst to the crowd's users; SIGKILL worker-1 ``offset`` s after its instant (negative: before);
    wait for every reminder, tally. The burst's instant, its tasks and the crowd."""
    org, crowd = _org_crowd(stack, scale.burst_users)
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        due, expected = await _burst(http, stack, org, crowd, scale, outcome)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + offset))
        victim = stack.pids("worker")[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        after = killed - due.timestamp()
        side = "after" if after >= 0 else "before"
        outcome.notes.append(f"killed worker pid {victim} {abs(after):.2f} s {side} the due time")
        await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, max(killed, due.timestamp()))
    return due, expected, crowd


async def worker_killed_mid_burst(stack: Stack, scale: Scale) -> Outcome:
    """SIGKILL one worker 1 s into a burst of reminders due at once, streams of its users open."""
    outcome = Outcome(
        name="worker SIGKILL mid-burst",
        fault=f"SIGKILL worker-1 1 s after {scale.burst} reminders fall due at once, "
        f"{scale.burst_users} users streaming through the proxy; `tickler run` starts it again.",
        reminders=scale.burst,
        streams=scale.burst_users,
    )
    await _kill_a_worker(stack, scale, outcome, 1.0)
    return outcome


async def worker_killed_in_lead_window(stack: Stack, scale: Scale) -> Outcome:
    """SIGKILL one worker a few seconds before a burst's instant: the reminders armed in its wheel are
    gone with it, and their workflows' grace timers deliver them on the other worker (decisions §29,
    §30), late by their grace (3 to 33 s) at most and a workflow task, never early, never twice."""
    outcome = Outcome(
        name="worker SIGKILL in the lead window",
        fault=f"SIGKILL worker-1 {scale.kill_before_burst:g} s before {scale.burst} reminders fall due at "
        f"once, all armed in the workers' wheels; `tickler run` starts it again.",
        reminders=scale.burst,
        streams=scale.burst_users,
    )
    due, expected, crowd = await _kill_a_worker(stack, scale, outcome, -scale.kill_before_burst)
    early = sum(1 for c in crowd.clients for r in c.received if r.task_id in expected and r.lateness < 0)
    on_time = _received_before(crowd, expected, due.timestamp() + 1.0)
    outcome.notes.append(f"on their streams within 1 s of the instant (the other worker's wheel): {on_time}")
    outcome.must_hold["0 early"] = early == 0
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
    org, crowd = _org_crowd(stack, scale.web_streams)
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        counts = await stream_counts(http, stack)
        port = max(counts, key=lambda p: counts[p])
        victim = stack.web_pid(port)
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        outcome.notes.append(f"streams per web port before the kill: {counts}; killed the one on {port}")
        users = [c.user for c in crowd.clients]
        expected = await _create(
            http,
            stack,
            org,
            users,
            _due_in(scale.web_streams),
            outcome.notes,
            short_graces=scale.short_graces,
        )
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
    """Redis killed (SIGKILL) across a firing window, streams open; started again on its port after the
    outage. The web processes' subscriptions drop; each must come back and replay what its streams missed."""
    outcome = Outcome(
        name="Redis killed",
        fault=f"SIGKILL redis-server, {scale.redis_outage:.0f} s down, then started again on its port; one "
        f"reminder per user due 2 s into the outage, {scale.redis_streams} streams open.",
        reminders=scale.redis_streams,
        streams=scale.redis_streams,
    )
    org, crowd = _org_crowd(stack, scale.redis_streams)
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        due = _due_in(scale.redis_streams) + timedelta(seconds=2)
        expected = await _create(
            http,
            stack,
            org,
            [c.user for c in crowd.clients],
            due,
            outcome.notes,
            short_graces=scale.short_graces,
        )
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - 2.0))
        stack.kill_server("redis")
        await asyncio.sleep(scale.redis_outage)
        took = await asyncio.to_thread(stack.start_server, "redis")
        resumed = time.time()
        outcome.notes.append(f"Redis answered {took:.2f} s after its start")
        early = _received_before(crowd, expected, resumed)
        outcome.notes.append(f"delivered on streams during the outage: {early}")
        await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, resumed)
    outcome.must_hold["every stream received what it missed, once"] = (
        outcome.lost == 0 and outcome.duplicate_events_per_client == 0
    )
    return outcome


async def temporal_killed_mid_burst(stack: Stack, scale: Scale) -> Outcome:
    """SIGKILL the Temporal server at a burst of reminders due at once (``kill_into_burst``); start it
    again on its data (its SQLite file) after ``temporal_outage`` s. Timers, activities and workflow
    tasks it had handed out are its to hand out again: nothing may be lost, nothing written twice."""
    outcome = Outcome(
        name="Temporal SIGKILL mid-burst",
        fault=f"SIGKILL the Temporal server {scale.kill_into_burst:+.1f} s from the instant {scale.burst} "
        f"reminders fall due at once, {scale.temporal_outage:.0f} s down, then started "
        f"again on its data; {scale.burst_users} users streaming through the proxy.",
        reminders=scale.burst,
        streams=scale.burst_users,
    )
    org, crowd = _org_crowd(stack, scale.burst_users)
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        due, expected = await _burst(http, stack, org, crowd, scale, outcome)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + scale.kill_into_burst))
        killed = time.time()
        stack.kill_server("temporal")
        before = sum(1 for c in crowd.clients for r in c.received if r.task_id in expected)
        outcome.notes.append(
            f"killed {killed - due.timestamp():.2f} s after the due time, {before} of {len(expected)} "
            "delivered by then"
        )
        outcome.must_hold["the kill landed mid-burst"] = before < len(expected)
        await asyncio.sleep(scale.temporal_outage)
        took = await asyncio.to_thread(stack.start_server, "temporal")
        back = time.time()
        outcome.notes.append(
            f"the server answered {took:.1f} s after its start, {back - killed:.1f} s after the kill"
        )
        delivered = await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    # Time to recover: from the server being back to the last reminder on its stream (time to drain).
    await _tally(outcome, stack, org, crowd, expected, back)
    if not delivered:
        outcome.notes.append(f"not all delivered within {scale.deliver_within} s")
    return outcome


# The API calls made while PostgreSQL hangs: reads and a write of the locked table, and one that does not
# touch it. Each must end with its answer (200, or 503 with Retry-After) within API_BOUND seconds: the
# statement timeout (TICKLER_DATABASE_STATEMENT_TIMEOUT_MS, 5 s), the client's 1 s after it, and room.
API_CALLS = (
    ("GET", "/v1/notifications"),
    ("GET", "/v1/notifications/unread-count"),
    ("POST", "/v1/notifications/read-all"),
    ("GET", "/v1/tasks"),
)
API_CALLERS = 4
API_BOUND = 10.0
# A call with no answer after this long is a hang.
API_HANG = 30.0


@dataclass
class ApiCall:
    method: str
    path: str
    status: int  # 0: no answer (a transport error or a hang)
    seconds: float
    retry_after: str | None


async def _call_api(
    http: httpx.AsyncClient, headers: dict[str, str], stop: asyncio.Event, n: int
) -> list[ApiCall]:
    """The API calls of one caller, one after another until ``stop``, from the ``n``-th of API_CALLS."""
    calls = []
    while not stop.is_set():
        method, path = API_CALLS[n % len(API_CALLS)]
        n += 1
        began = time.monotonic()
        try:
            response = await http.request(method, path, headers=headers, timeout=API_HANG)
        except httpx.TransportError:
            calls.append(ApiCall(method, path, 0, time.monotonic() - began, None))
        else:
            seconds = time.monotonic() - began
            calls.append(
                ApiCall(method, path, response.status_code, seconds, response.headers.get("Retry-After"))
            )
        await asyncio.sleep(0.1)
    return calls


class ApiCallers:
    """API_CALLERS callers of the API as users of ``org``, from their start until ``stop``."""

    def __init__(self, http: httpx.AsyncClient, stack: Stack, org: str, users: list[str]) -> None:
        self._stop = asyncio.Event()
        self._callers = [
            asyncio.create_task(_call_api(http, stack.headers(org, users[n % len(users)]), self._stop, n))
            for n in range(API_CALLERS)
        ]

    async def stop(self) -> list[ApiCall]:
        self._stop.set()
        return [call for caller in await asyncio.gather(*self._callers) for call in caller]


def _judge_api(outcome: Outcome, calls: list[ApiCall], during: str) -> tuple[str, list[ApiCall]]:
    """What every fault of PostgreSQL must hold of the API calls made ``during`` it: 503s with Retry-After,
    nothing else, none slow. The summary for the notes, and the 503s."""
    statuses = Counter(call.status for call in calls)
    slowest = max((call.seconds for call in calls), default=0.0)
    unavailable = [call for call in calls if call.status == 503]
    outcome.must_hold.update(
        {
            f"the API answered 503 while {during}": bool(unavailable),
            "no 500, no other error, no hang": set(statuses) <= {200, 503},
            "every 503 carries Retry-After": all(call.retry_after for call in unavailable),
            f"every API call ended within {API_BOUND:.0f} s": slowest <= API_BOUND,
        }
    )
    summary = f"{len(calls)}, answers {dict(sorted(statuses.items()))}, slowest {slowest:.2f} s"
    return summary, unavailable


async def postgres_locked(stack: Stack, scale: Scale) -> Outcome:
    """PostgreSQL hangs: a second connection holds an ACCESS EXCLUSIVE lock on the notifications table in
    an open transaction, one reminder per user falling due through it, API calls continuing."""
    outcome = Outcome(
        name="PostgreSQL hangs",
        fault=f"LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE held {scale.lock_hold:.0f} s from a "
        f"second connection, {scale.lock_users} reminders (one per streaming user) due through it, "
        f"{API_CALLERS} API callers continuing; then the transaction rolls back.",
        reminders=scale.lock_users,
        streams=scale.lock_users,
    )
    org, crowd = _org_crowd(stack, scale.lock_users)
    log = stack.log_from_now()
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        first = _due_in(scale.lock_users)
        # Due from 1 s after the lock is taken to 1 s before it goes.
        every = max(0.0, scale.lock_hold - 2.0) / max(1, scale.lock_users - 1)
        users = [c.user for c in crowd.clients]
        expected = await _create(
            http, stack, org, users, first, outcome.notes, every, short_graces=scale.short_graces
        )
        await asyncio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() - 1.0))
        callers = ApiCallers(http, stack, org, users)
        locker = await asyncpg.connect(stack.database_dsn, timeout=10)
        try:
            transaction = locker.transaction()
            await transaction.start()
            began = time.monotonic()
            await locker.execute("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE", timeout=30)
            locked = time.time()
            outcome.notes.append(f"lock taken in {time.monotonic() - began:.2f} s")
            await asyncio.sleep(scale.lock_hold)
            await transaction.rollback()
        finally:
            await locker.close()
        released = time.time()
        calls = await callers.stop()
        early = _received_before(crowd, expected, released)
        outcome.notes.append(f"delivered on streams while the lock was held: {early}")
        delivered = await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, released)
    if not delivered:
        outcome.notes.append(f"not all delivered within {scale.deliver_within} s of the release")
    lines = log.new_lines()
    failed = count_lines(lines, *DELIVERY_FAILED) + count_lines(lines, *WHEEL_FAILED)
    timeouts = count_lines(lines, *STATEMENT_TIMEOUT)
    outcome.notes.append(
        f"delivery attempts failed and retried: {failed}; API calls a statement timeout ended in 503: "
        f"{timeouts} (the worker's and web processes' logs)"
    )
    summary, unavailable = _judge_api(outcome, calls, "the lock was held")
    outcome.must_hold["deliveries timed out and were retried"] = failed > 0
    outcome.notes.append(
        f"API calls during the lock: {summary}; 503s by call: "
        f"{dict(Counter(f'{c.method} {c.path}' for c in unavailable))}; lock held "
        f"{released - locked:.1f} s"
    )
    return outcome


# How often readiness is asked while PostgreSQL is down, and how long it may take to say ready once back.
READY_POLL = 0.5
READY_WITHIN = 30.0


async def _readiness(client: httpx.AsyncClient, urls: list[str]) -> dict[str, int]:
    """The status of each /readyz (0: no answer)."""

    async def one(url: str) -> int:
        try:
            return (await client.get(url, timeout=5.0)).status_code
        except httpx.TransportError:
            return 0

    return dict(zip(urls, await asyncio.gather(*map(one, urls)), strict=True))


async def postgres_stopped(stack: Stack, scale: Scale) -> Outcome:
    """PostgreSQL stopped (a fast shutdown: every connection closed) for ``postgres_outage`` s, one reminder
    per streaming user due through it, API calls continuing; then started again on its data."""
    outcome = Outcome(
        name="PostgreSQL stopped",
        fault=f"PostgreSQL stopped (fast shutdown) for {scale.postgres_outage:.0f} s, then started again on "
        f"its data; {scale.postgres_users} reminders (one per streaming user) due through the outage, "
        f"{API_CALLERS} API callers continuing.",
        reminders=scale.postgres_users,
        streams=scale.postgres_users,
    )
    org, crowd = _org_crowd(stack, scale.postgres_users)
    ready_urls = [f"http://127.0.0.1:{port}/readyz" for port in stack.web_ports + stack.worker_health_ports]
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        first = _due_in(scale.postgres_users)
        # Due from 2 s after the stop to 2 s before the start.
        every = max(0.0, scale.postgres_outage - 4.0) / max(1, scale.postgres_users - 1)
        users = [c.user for c in crowd.clients]
        expected = await _create(
            http, stack, org, users, first, outcome.notes, every, short_graces=scale.short_graces
        )
        await asyncio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() - 2.0))
        callers = ApiCallers(http, stack, org, users)
        await asyncio.to_thread(stack.kill_server, "postgres", signal.SIGINT)
        stopped = time.time()
        not_ready: set[str] = set()
        while time.time() - stopped < scale.postgres_outage:
            for url, status in (await _readiness(http, ready_urls)).items():
                if status == 503:
                    not_ready.add(url)
            await asyncio.sleep(READY_POLL)
        took = await asyncio.to_thread(stack.start_server, "postgres")
        back = time.time()
        calls = await callers.stop()
        outcome.notes.append(
            f"PostgreSQL answered {took:.1f} s after its start ({back - stopped:.1f} s down)"
        )
        early = _received_before(crowd, expected, back)
        outcome.notes.append(f"delivered on streams while it was down: {early}")
        ready_again = None
        while time.time() - back < READY_WITHIN:
            if set((await _readiness(http, ready_urls)).values()) == {200}:
                ready_again = time.time() - back
                break
            await asyncio.sleep(READY_POLL)
        delivered = await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, back)
    if not delivered:
        outcome.notes.append(f"not all delivered within {scale.deliver_within} s of the start")
    summary, _ = _judge_api(outcome, calls, "PostgreSQL was down")
    outcome.notes.append(
        f"API calls during the outage: {summary}; readiness said 503 on {len(not_ready)} of "
        f"{len(ready_urls)} processes, ready again on all "
        + ("never" if ready_again is None else f"{ready_again:.1f} s after the start")
    )
    outcome.must_hold.update(
        {
            "every web process and worker said not ready meanwhile": not_ready == set(ready_urls),
            f"all ready again within {READY_WITHIN:.0f} s": ready_again is not None,
        }
    )
    return outcome


# The stalled reader's socket: its receive buffer as small as the kernel allows.
STALL_RCVBUF = 1024
# What the suite publishes to the stalled user while it stalls: id-less events (as a read-state change is)
# with a large payload, so that the buffers between the web process and the client (the client's, the
# proxy's, both sockets' of the proxy, the web process's) fill in seconds, not after 10,000 reminders.
STALL_PAD_BYTES = 64 * 1024
STALL_PAD_PER_SECOND = 20
# Beyond TICKLER_SSE_WRITE_TIMEOUT_SECONDS, what filling those buffers may take.
STALL_FILL_ALLOWANCE = 20.0
# HAProxy's `timeout client` with the suite's heartbeat (tickler/devstack/proxy.py), and some room.
PROXY_CLIENT_TIMEOUT = 65.0
# "No delay" for the others: a reminder's lateness on their streams at most this.
NO_DELAY = 2.0
_TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE (reset)", 8: "CLOSE_WAIT (FIN received)"}


def _open_stalled(stack: Stack, org: str, user: str, marker: str) -> socket.socket:
    """A stream request through the proxy on a socket that will never be read; ``marker``, in its query
    string (which the route ignores), finds its session in the proxy's log."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RCVBUF)
    sock.connect(("127.0.0.1", stack.port))
    token = stack.headers(org, user)["Authorization"]
    sock.sendall(
        f"GET {STREAM}?chaos={marker} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nAuthorization: {token}\r\n"
        "Accept: text/event-stream\r\nLast-Event-ID: 0\r\n\r\n".encode()
    )
    return sock


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (linux/tcp.h: tcpi_state, the first byte of TCP_INFO), read
    without reading the socket."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def stalled_reader(stack: Stack, scale: Scale) -> Outcome:
    """A client opens its stream through the proxy and never reads it, while others stream; events keep
    coming for it until the web process cuts it off."""
    outcome = Outcome(
        name="a client that stops reading",
        fault=f"one stream through the proxy on a socket with a {STALL_RCVBUF}-byte receive buffer, never "
        f"read, sent {STALL_PAD_BYTES // 1024} KiB events at {STALL_PAD_PER_SECOND}/s; "
        f"{scale.stall_streams} other users streaming, a reminder for each due meanwhile; "
        f"TICKLER_SSE_WRITE_TIMEOUT_SECONDS={stack.write_timeout:g}.",
        reminders=scale.stall_streams,
        streams=scale.stall_streams + 1,
    )
    org, crowd = _org_crowd(stack, scale.stall_streams)
    window = stack.write_timeout + STALL_FILL_ALLOWANCE
    log = stack.log_from_now()
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        first = _due_in(scale.stall_streams)
        # The others' reminders fall due from the stall's start across the time it may take to cut off.
        every = window / max(1, scale.stall_streams)
        users = [c.user for c in crowd.clients]
        expected = await _create(
            http, stack, org, users, first, outcome.notes, every, short_graces=scale.short_graces
        )
        await asyncio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds()))
        baseline = sum((await stream_counts(http, stack)).values())
        marker = uuid.uuid4().hex
        proxy_log = LogFollower(stack.data_dir / "haproxy.log", from_end=True)
        stalled = _open_stalled(stack, org, "stalled", marker)
        try:
            async with asyncio.timeout(10):
                while True:
                    if sum((await stream_counts(http, stack)).values()) > baseline:
                        break
                    await asyncio.sleep(0.1)
            began = time.time()
            redis = Redis.from_url(stack.redis_url)
            # Signed with the key the stack's processes generated, or the hubs would drop it unsent.
            channel = Channel.of(stack.settings.model_copy(update={"env": "dev", "data_dir": stack.data_dir}))
            event = channel.encode(
                NotificationEvent(
                    organization_id=org,
                    user_id="stalled",
                    event="chaos.padding",
                    data={"pad": "x" * STALL_PAD_BYTES},
                )
            )
            published = 0
            freed: float | None = None
            try:
                while time.time() - began < window:
                    await redis.publish(stack.settings.redis_channel, event)
                    published += 1
                    check = published % STALL_PAD_PER_SECOND == 0
                    if check and sum((await stream_counts(http, stack)).values()) <= baseline:
                        freed = time.time()
                        break
                    await asyncio.sleep(1 / STALL_PAD_PER_SECOND)
            finally:
                await redis.aclose()
            outcome.notes.append(
                f"published {published} events ({published * STALL_PAD_BYTES / 2**20:.1f} MiB) for the "
                "stalled stream before its slot was freed"
            )
            closed: float | None = None
            proxy_ended: float | None = None
            proxy_line = ""
            state = 1
            if freed is not None:
                watch_until = time.time() + scale.stall_proxy_watch
                while time.time() < watch_until:
                    proxy_line = _proxy_logged(proxy_log, marker)
                    if proxy_line:
                        # HAProxy logs a session (`option httplog`) when it ends it: its slot is free.
                        proxy_ended = time.time()
                        break
                    await asyncio.sleep(0.1)
                if _tcp_state(stalled) != 1:
                    closed = time.time()
            state = _tcp_state(stalled)
        finally:
            stalled.close()
        await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, began)
    cuts = count_lines(log.new_lines(), CUT_OFF)
    outcome.notes.append(f"streams cut off by the write timeout (log lines): {cuts}")
    if freed is not None:
        outcome.time_to_recover_s = freed - began
        outcome.notes.append(
            f"the web process freed the stalled stream's slot {freed - began:.1f} s after "
            "the events for it began"
        )
        seen = _TCP_STATES.get(state, str(state))
        if proxy_ended is not None:
            outcome.notes.append(
                f"the proxy ended the stalled session {proxy_ended - freed:.1f} s after the web process: "
                f"{proxy_line}"
            )
        if closed is not None:
            outcome.notes.append(f"the client's socket: {seen} when the proxy's end was seen")
        else:
            # HAProxy has closed its side, but the kernel holds that orphaned socket's unsent bytes, and
            # the FIN queued behind them, while the client's window stays shut (net.ipv4.tcp_orphan_retries
            # bounds it): the client sees its connection open.
            outcome.notes.append(f"the client's socket still {seen} when the proxy's end was seen")
    outcome.must_hold.update(
        {
            f"the stalled stream's slot freed within {window:.0f} s": freed is not None,
            "the web process cut it off by its write timeout": cuts > 0,
            f"the others saw no delay (lateness at most {NO_DELAY:.0f} s)": outcome.max_lateness_s
            <= NO_DELAY,
        }
    )
    if scale.stall_proxy_watch >= PROXY_CLIENT_TIMEOUT:
        # HAProxy's `timeout client` (tickler/devstack/proxy.py) bounds a client that takes no bytes.
        outcome.must_hold[f"the proxy ended its session within {scale.stall_proxy_watch:.0f} s"] = (
            proxy_ended is not None
        )
    return outcome


def _proxy_logged(proxy_log: LogFollower, marker: str) -> str:
    """HAProxy's log line, among those since the last look, for the session whose request carries
    ``marker`` ("" while it lasts): its timers, termination state and bytes."""
    for line in proxy_log.new_lines():
        if marker in line:
            return line.split(" web/", 1)[-1][:160]
    return ""


# After a restarted process is back, before the next is stopped: the proxy's checks (`rise 2`, 1 s apart)
# and a new worker's first polls.
ROLL_SETTLE = 3.0
ROLL_STEP_WITHIN = 60.0


async def _back(stack: Stack, role: str, victim: int) -> None:
    """Until ``victim`` (a pid of ``role``) is gone, its replacement runs, and the stack is whole."""
    async with httpx.AsyncClient() as probe:
        async with asyncio.timeout(ROLL_STEP_WITHIN):
            while True:
                stack.check_alive()
                pids = stack.pids(role)
                if victim not in pids and len(pids) == REPLICAS:
                    break
                await asyncio.sleep(0.1)
        await stack.whole(probe, ROLL_STEP_WITHIN)
        await asyncio.sleep(ROLL_SETTLE)
        # Whole still: the proxy may have taken the old process out only after the new one answered.
        await stack.whole(probe, ROLL_STEP_WITHIN)


async def rolling_restart(stack: Stack, scale: Scale) -> Outcome:
    """SIGTERM each worker, then each web process, one at a time, each back before the next, while a
    reminder falls due every ``roll_every`` s; the streams of a stopped web process reconnect."""
    count = round(scale.roll_seconds / scale.roll_every)
    outcome = Outcome(
        name="rolling restart",
        fault=f"SIGTERM worker-1, worker-2, web-1, web-2 in turn, each back (and the stack whole) before "
        f"the next, while a reminder falls due every {scale.roll_every * 1000:.0f} ms for "
        f"{scale.roll_seconds:.0f} s ({count} reminders, {scale.roll_users} users streaming).",
        reminders=count,
        streams=scale.roll_users,
    )
    org, crowd = _org_crowd(stack, scale.roll_users)
    async with httpx.AsyncClient(base_url=stack.proxy, timeout=30.0) as http, crowd:
        await crowd.all_open(OPEN_WITHIN)
        owners = [c.user for c in crowd.clients]
        # Due one after another: creating them (far faster than one per roll_every) stays ahead of them.
        first = datetime.now(UTC) + timedelta(seconds=CREATE_LEAD)
        users = [owners[n % len(owners)] for n in range(count)]
        expected = await _create(
            http, stack, org, users, first, outcome.notes, scale.roll_every, short_graces=scale.short_graces
        )
        await asyncio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() + 1.0))
        rolled = time.time()
        steps = []
        for role in ("worker", "web"):
            for victim in stack.pids(role):
                began = time.time()
                os.kill(victim, signal.SIGTERM)
                await _back(stack, role, victim)
                steps.append(f"{role} pid {victim} {time.time() - began:.1f} s")
        done = time.time()
        outcome.notes.append(
            f"the roll took {done - rolled:.1f} s: {'; '.join(steps)} (SIGTERM to whole again)"
        )
        if done - rolled > scale.roll_seconds:
            outcome.notes.append("the roll outlasted the reminders: its end had none due")
        delivered = await crowd.until_received(expected, scale.deliver_within)
        await asyncio.sleep(SETTLE)
    await _tally(outcome, stack, org, crowd, expected, done)
    # The roll's end to the last event is only the reminders still to fall due: the roll's length says it.
    outcome.time_to_recover_s = None
    outcome.dropped_streams = sum(1 for c in crowd.clients if c.dropped_at)
    if not delivered:
        outcome.notes.append(f"not all delivered within {scale.deliver_within} s of the roll")
    rolling = sorted(
        r.lateness
        for c in crowd.clients
        for r in c.received
        if r.task_id in expected and rolled <= r.at - r.lateness <= done
    )
    if rolling:
        p99 = rolling[min(len(rolling) - 1, int(0.99 * len(rolling)))]
        outcome.notes.append(
            f"lateness of the {len(rolling)} due during the roll: p99 {p99:.2f} s, max {rolling[-1]:.2f} s, "
            f"median {statistics.median(rolling):.2f} s"
        )
    return outcome


SCENARIOS = {
    "worker-kill": worker_killed_mid_burst,
    "worker-kill-lead": worker_killed_in_lead_window,
    "web-kill": web_killed_under_streams,
    "redis-kill": redis_stopped,
    "temporal-kill": temporal_killed_mid_burst,
    "postgres-stop": postgres_stopped,
    "postgres-lock": postgres_locked,
    "stalled-reader": stalled_reader,
    "rolling-restart": rolling_restart,
}
