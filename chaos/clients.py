"""Stream clients as a browser's EventSource behaves: one stream per user through the proxy, reconnecting
after the server's `retry:` with Last-Event-ID, every event counted per connection by notification id.

A client starts with Last-Event-ID 0: its users are new, so this is a page that has read an empty inbox;
without it a reminder that fired before the first connection could not be replayed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from httpx_sse import SSEError, aconnect_sse

STREAM = "/v1/notifications/stream"
# Before the first `retry:` arrives, what EventSource uses by default.
DEFAULT_RETRY_MS = 3000
# Heartbeats come every few seconds: a stream silent for this long is dead (the browser's view too).
READ_TIMEOUT = 15.0


@dataclass
class Received:
    notification_id: int
    task_id: str
    connection: int
    at: float  # time.time()
    lateness: float  # seconds after its due time


@dataclass
class StreamClient:
    user: str
    headers: dict[str, str]
    last_id: int = 0
    received: list[Received] = field(default_factory=list)
    # time.time() of each connection's first event (its `retry:`): the stream is open from there.
    opened_at: list[float] = field(default_factory=list)
    dropped_at: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    resyncs: int = 0
    retry_ms: int = DEFAULT_RETRY_MS
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def task_ids(self) -> set[str]:
        return {r.task_id for r in self.received}

    def duplicate_events(self) -> tuple[int, int]:
        """Events received more than once: (on one connection, across this client's connections)."""
        per_connection = Counter((r.connection, r.notification_id) for r in self.received)
        overall = Counter(r.notification_id for r in self.received)
        return (
            sum(n - 1 for n in per_connection.values()),
            sum(n - 1 for n in overall.values()),
        )

    async def follow(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Stream until ``stop``; on any end of a connection, wait `retry:` and reconnect."""
        while not stop.is_set():
            connection = len(self.opened_at)
            headers = {**self.headers, "Last-Event-ID": str(self.last_id)}
            try:
                async with aconnect_sse(client, "GET", STREAM, headers=headers) as source:
                    if source.response.status_code != 200:
                        self.errors[f"HTTP {source.response.status_code}"] += 1
                    else:
                        first = True
                        async for sse in source.aiter_sse():
                            if first:
                                self.opened_at.append(time.time())
                                self.opened.set()
                                first = False
                            if sse.retry is not None:
                                self.retry_ms = sse.retry
                            if sse.event == "notification":
                                self._take(json.loads(sse.data), int(sse.id), connection)
                            elif sse.event == "resync":
                                self.resyncs += 1
                                self.last_id = int(sse.id)
                        if not stop.is_set():
                            self.errors["stream ended"] += 1
            except (httpx.HTTPError, SSEError) as exc:
                self.errors[type(exc).__name__] += 1
            if stop.is_set():
                return
            if len(self.opened_at) > connection:
                self.dropped_at.append(time.time())
            # Like EventSource: the server's retry, after every kind of end.
            try:
                async with asyncio.timeout(self.retry_ms / 1000):
                    await stop.wait()
            except TimeoutError:
                pass

    def _take(self, data: dict[str, object], notification_id: int, connection: int) -> None:
        now = time.time()
        due = datetime.fromisoformat(str(data["due_at"])).timestamp()
        self.received.append(Received(notification_id, str(data["task_id"]), connection, now, now - due))
        self.last_id = max(self.last_id, notification_id)


class Crowd:
    """Many clients, one per user, sharing one connection pool to the proxy."""

    def __init__(self, base_url: str, clients: list[StreamClient]) -> None:
        self.clients = clients
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10.0, read=READ_TIMEOUT),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Crowd:
        self._tasks = [asyncio.create_task(c.follow(self._http, self._stop)) for c in self.clients]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    async def all_open(self, within: float) -> None:
        async with asyncio.timeout(within):
            for client in self.clients:
                await client.opened.wait()

    async def until_received(self, expected: dict[str, str], within: float) -> bool:
        """Until every client has each of its expected tasks (task id -> user); False at the deadline."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            # Each user's set once a poll, not once per expected task.
            have = {c.user: c.task_ids for c in self.clients}
            if all(task in have[user] for task, user in expected.items()):
                return True
            await asyncio.sleep(0.2)
        return False
