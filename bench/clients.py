"""The benchmark's clients: SSE streams that timestamp each notification, and task creators.

Both systems speak the same protocol (POST /v1/tasks with a bearer token; `event: notification`, `id:`,
`data: {"task_id", "due_at", "offset_seconds", "created_at", ...}` on GET /v1/notifications/stream), so
one client measures both. A notification's latency is its arrival time here minus its fire time, the
task's due_at minus the reminder's offset; everything runs on one machine, so on one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from bench import http
from bench.stack import JWT_SECRET, TOKEN_TTL_SECONDS
from core.auth import mint_token
from core.gcwatch import PauseWatch
from core.settings import Settings

STREAM_PATH = "/v1/notifications/stream"
PAUSE_REPORTED_MS = 2.0


@functools.cache
def _token_settings() -> Settings:
    return Settings(jwt_secret=SecretStr(JWT_SECRET), jwt_issuer=None, jwt_audience=None)


def token(user: str, org: str) -> str:
    return mint_token(_token_settings(), user_id=user, organization_id=org, ttl_seconds=TOKEN_TTL_SECONDS)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Arrival:
    task_id: str
    notification_id: int
    user: str
    fire_at: float  # due_at - offset_seconds, Unix time
    created_at: float  # the notification row's created_at (PostgreSQL's now() of its transaction)
    arrived: float  # Unix time at this client

    @property
    def latency_ms(self) -> float:
        return (self.arrived - self.fire_at) * 1000


@dataclass
class Collector:
    """Every notification every stream received, by task id; wakes waiters as they come."""

    arrivals: dict[str, list[Arrival]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    # The garbage collections of PAUSE_REPORTED_MS or more of the process that stamped the arrivals,
    # (wall clock at the pause's end, ms): an arrival late by one is the client's (hold_still).
    pauses: list[tuple[float, float]] = field(default_factory=list)

    def pauses_between(self, start: float, end: float) -> dict[str, float]:
        within = [ms for at, ms in self.pauses if start <= at <= end]
        return {"at_least_ms": PAUSE_REPORTED_MS, "count": len(within), "max_ms": max(within, default=0.0)}

    def add(self, arrival: Arrival) -> None:
        self.arrivals.setdefault(arrival.task_id, []).append(arrival)
        self.changed.set()

    def first(self, task_ids: Sequence[str]) -> list[Arrival]:
        return [self.arrivals[t][0] for t in task_ids if t in self.arrivals]

    def duplicates(self, task_ids: Sequence[str]) -> int:
        return sum(len(self.arrivals.get(t, ())) - 1 for t in task_ids if t in self.arrivals)

    async def wait_for(self, task_ids: Sequence[str], deadline: float) -> bool:
        """Wait until every task in ``task_ids`` has arrived or time.time() passes ``deadline``."""
        wanted = set(task_ids)
        while True:
            missing = sum(1 for t in wanted if t not in self.arrivals)
            if missing == 0:
                return True
            left = deadline - time.time()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))


def hold_still(collector: Collector) -> PauseWatch:
    """Once a client's streams are open: freeze its heap, so that its full collections no longer walk
    what it holds (the bench process's imports and earlier scenarios, a fan-out client's 2,500 streams),
    and record each pause of PAUSE_REPORTED_MS or more in ``collector``. Uninstall the watch returned
    when the streams close."""
    gc.collect()
    gc.freeze()

    def record(_generation: int, seconds: float) -> None:
        if seconds * 1000 >= PAUSE_REPORTED_MS:
            collector.pauses.append((time.time(), round(seconds * 1000, 1)))

    watch = PauseWatch(warn_after_seconds=0, record=record)
    watch.install()
    return watch


def parse_notification(data: str, user: str, arrived: float) -> Arrival | None:
    try:
        body = json.loads(data)
        due = _epoch(body["due_at"])
        return Arrival(
            task_id=str(body["task_id"]),
            notification_id=int(body["id"]),
            user=user,
            fire_at=due - float(body.get("offset_seconds") or 0),
            created_at=_epoch(body["created_at"]),
            arrived=arrived,
        )
    except (ValueError, KeyError, TypeError):
        return None


class Stream:
    """One SSE client of one user: reconnects with Last-Event-ID if the server ends the stream."""

    def __init__(self, base_url: str, user: str, org: str) -> None:
        self.base_url = base_url
        self.user = user
        self.headers = {"Authorization": f"Bearer {token(user, org)}", "Accept": "text/event-stream"}
        self.ready = asyncio.Event()
        self.last_id: str | None = None
        self.connects = 0

    async def run(self, collector: Collector, stop: asyncio.Event) -> None:
        while not stop.is_set():
            headers = dict(self.headers)
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                self.connects += 1
                if self.connects > 1:
                    collector.reconnects += 1
                await self._read(http.stream_lines(self.base_url, STREAM_PATH, headers), collector)
            except (OSError, http.HTTPError, asyncio.IncompleteReadError, ValueError) as exc:
                if stop.is_set():
                    return
                collector.errors.append(f"stream {self.user}: {exc!r}")
                await asyncio.sleep(1.0)

    async def _read(self, lines: AsyncIterator[str], collector: Collector) -> None:
        event = ""
        data: list[str] = []
        event_id: str | None = None
        async for line in lines:
            if line == "":
                if event == "notification" and data:
                    arrival = parse_notification("\n".join(data), self.user, time.time())
                    if arrival is not None:
                        collector.add(arrival)
                if event_id is not None:
                    self.last_id = event_id
                event, data, event_id = "", [], None
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
            elif name == "retry":
                # The first line of both servers, sent once the stream is subscribed.
                self.ready.set()


@dataclass
class StreamSet:
    """A stream per user, held until closed."""

    base_url: str
    org: str
    users: Sequence[str]
    collector: Collector = field(default_factory=Collector)
    streams: list[Stream] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    watch: PauseWatch | None = None

    async def open(self, within: float = 60.0) -> None:
        for user in self.users:
            stream = Stream(self.base_url, user, self.org)
            self.streams.append(stream)
            self.tasks.append(asyncio.create_task(stream.run(self.collector, self.stop)))
        async with asyncio.timeout(within):
            await asyncio.gather(*(s.ready.wait() for s in self.streams))
        self.watch = hold_still(self.collector)

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.uninstall()
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- creating tasks ------------------------------------------------------------------------------------


@dataclass
class CreateResult:
    due: dict[str, float]  # task id -> its due time (Unix time), for every task created
    latencies_ms: list[float]
    statuses: dict[int, int]
    started: float
    ended: float
    errors: list[str]

    @property
    def task_ids(self) -> list[str]:
        return list(self.due)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def rate(self) -> float:
        return len(self.task_ids) / self.seconds if self.seconds > 0 else 0.0


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


async def create_tasks(
    base_url: str,
    org: str,
    users: Sequence[str],
    due_times: Sequence[float],
    *,
    concurrency: int,
    request_timeout: float = 30.0,
) -> CreateResult:
    """POST one task per due time, round robin over ``users``, ``concurrency`` requests in flight."""
    tokens = {user: f"Bearer {token(user, org)}" for user in users}
    jobs: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    for n, due in enumerate(due_times):
        jobs.put_nowait((n, due))
    created: dict[str, float] = {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []

    async def worker() -> None:
        connection = http.Connection(base_url)
        try:
            while True:
                try:
                    n, due = jobs.get_nowait()
                except asyncio.QueueEmpty:
                    return
                user = users[n % len(users)]
                body = json.dumps({"title": f"bench task {n}", "due_at": iso(due)}).encode()
                headers = {"Authorization": tokens[user], "Content-Type": "application/json"}
                began = time.perf_counter()
                try:
                    async with asyncio.timeout(request_timeout):
                        status, answer = await connection.request("POST", "/v1/tasks", headers, body)
                except (OSError, TimeoutError, http.HTTPError, asyncio.IncompleteReadError) as exc:
                    errors.append(repr(exc))
                    await connection.close()
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 201:
                    created[str(json.loads(answer)["id"])] = due
                elif len(errors) < 20:
                    errors.append(f"HTTP {status}: {answer[:200]!r}")
        finally:
            await connection.close()

    started = time.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ended = time.time()
    return CreateResult(created, latencies, statuses, started, ended, errors)


def users_of(count: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def spread(start: float, seconds: float, count: int, *, jitter: bool = True) -> list[float]:
    """``count`` due times spread evenly over ``seconds`` from ``start``, each jittered inside its slot,
    so that due times fall at every phase of the clock's millisecond."""
    step = seconds / count
    rng = random.Random(7)
    return [start + n * step + (rng.random() * step if jitter else 0.0) for n in range(count)]


def utc_now() -> datetime:
    return datetime.now(UTC)


def seconds_from_now(seconds: float) -> datetime:
    return utc_now() + timedelta(seconds=seconds)
