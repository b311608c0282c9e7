"""The stream's work behind its route: what to send a user, from PostgreSQL and from the hub.

PostgreSQL is the log; a message from the hub only wakes the stream up. The stream subscribes first,
then sends every row after the last id (Last-Event-ID, or the newest id when the client brings none or
one above it: then ``event: resync`` says so), and on each wake-up sends the rows after the last id it
sent. Ids of one user commit in id order (the delivery activity takes a per-user lock), so "after the
last id sent" never skips nor repeats a row, whatever Redis loses, repeats or reorders. A message that
names the row before it (``previous_id``) as the last one sent is the next row itself and goes out
without a query.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import re
from collections import deque
from collections.abc import Awaitable
from datetime import UTC, datetime
from functools import partial

from quart import json
from sqlalchemy import func, select

from core.auth import Principal
from core.db import tenant_transaction
from core.errors import TooManyRequests
from core.models import Notification, notification_message
from core.settings import Settings
from web import access
from web.resources import Resources
from web.stream.hub import Control, StreamItem, Subscription
from web.stream.sse import HEARTBEAT, format_event, format_retry

REPLAY_BATCH = 200
_EVENT_ID = re.compile(r"[0-9]{1,19}")


def parse_last_event_id(raw: str | None) -> int | None:
    """A garbage id means "no replay": it must reveal nothing, nor fail."""
    # ASCII digits only: str.isdigit() also accepts "²" or "٣", on which int() fails or surprises.
    if raw is None or not _EVENT_ID.fullmatch(raw.strip()):
        return None
    value = int(raw.strip())
    return value if value < 2**63 else None


async def _rows_after(res: Resources, who: Principal, after: int) -> list[Notification]:
    """The next REPLAY_BATCH rows of the user's after id ``after``."""
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        rows = await session.scalars(
            select(Notification)
            .where(
                Notification.organization_id == who.organization_id,
                Notification.user_id == who.user_id,
                Notification.id > after,
            )
            .order_by(Notification.id)
            .limit(REPLAY_BATCH)
        )
        return list(rows.all())


async def _newest_id(res: Resources, who: Principal) -> int:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        newest = await session.scalar(
            select(func.max(Notification.id)).where(
                Notification.organization_id == who.organization_id, Notification.user_id == who.user_id
            )
        )
    return newest or 0


def _notification_event(row: Notification) -> bytes:
    return format_event(json.dumps(notification_message(row)), event="notification", id=str(row.id))


def _retry_ms(settings: Settings) -> int:
    """This stream's ``retry:``: jittered, so that the clients of a web process that dies come back spread
    out over a while, not in one wave."""
    spread = settings.sse_retry_jitter
    return round(settings.sse_retry_ms * random.uniform(1 - spread, 1 + spread))


def _resync_event(last_id: int) -> bytes:
    # The id moves the client's Last-Event-ID down to where this stream really starts.
    return format_event(json.dumps({"last_event_id": last_id}), event="resync", id=str(last_id))


def events(res: Resources, who: Principal, last_id: int | None) -> EventStream:
    return EventStream(res, who, last_id)


class EventStream:
    """The body of one stream: an async iterator of SSE bytes that Quart writes as they come.

    A class rather than an async generator for what a waiting stream costs. A generator's wait was five
    young objects (the ``Queue.get`` coroutine, its getter future, the iterator awaiting it, the
    ``asend`` of Quart's ``async for``, a bound method), renewed at every item and heartbeat: with 10,000
    streams, thousands a second, which CPython's young collections walked again and again and which set
    the fan-out's tail (docs/performance.md). Here a stream with nothing queued hands Quart one future,
    and the hub, through the subscription's consumer, resolves it with the next event's bytes: three
    objects per wait (the future, its iterator, the task's wake-up), which the web process's young
    collections on a clock keep from piling up (core/gcwatch.py, YoungClock). What needs the database
    (the newest id at the start, a replay after a gap or a resubscription) runs in a coroutine, as
    before.
    """

    def __init__(self, res: Resources, who: Principal, last_id: int | None) -> None:
        self.res = res
        self.who = who
        self.last_id = last_id
        self.sub: Subscription | None = None
        self.started = False
        self.catch_up = False
        self.finished = False
        self.closed = False
        self.pending: deque[bytes] = deque()
        self.waiter: asyncio.Future[bytes] | None = None
        self.filler: asyncio.Task[bytes] | None = None
        self.context: contextvars.Context | None = None
        # Why the stream ends, for its access line: unless it ends itself, its client has gone.
        self.ended = "client left"
        metric = res.metrics.stream_events_sent
        self.replayed, self.live = metric.labels("replay"), metric.labels("live")

    def __aiter__(self) -> EventStream:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        sub = self.sub
        if sub is None or not self.started or self.pending or self.catch_up or self.finished:
            return self._next()
        if not sub.queue.empty():
            return self._next()
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    async def aclose(self) -> None:
        """Quart's end of the response, however it ends (the client gone, a write timed out, an error)."""
        if self.closed:
            return
        self.closed = True
        if self.filler is not None:
            self.filler.cancel()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()
        if self.sub is not None:
            self.sub.consumer = None
            self.res.hub.unsubscribe(self.sub)
            access.stream_ended(self.ended)

    # -- the slow path: opening, replays, items already queued ----------------------------------------

    async def _next(self) -> bytes:
        try:
            while True:
                if self.pending:
                    return self.pending.popleft()
                if self.finished:
                    raise StopAsyncIteration
                if self.sub is None:
                    return self._open()
                if not self.started:
                    await self._start()
                    continue
                if self.catch_up:
                    await self._replay_batch()
                    continue
                if not self.sub.queue.empty():
                    out = self._take(self.sub.queue.get_nowait())
                    if out is not None:
                        return out
                    continue
                self.waiter = waiter = asyncio.get_running_loop().create_future()
                return await waiter
        except (StopAsyncIteration, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.ended = f"failed: {type(exc).__name__}"
            raise

    def _open(self) -> bytes:
        # Subscribed before the first query, so that what commits meanwhile wakes the stream up. The hub
        # sends the stream its heartbeats and, when the token expires, Control.EXPIRED.
        who = self.who
        left = (who.expires_at - datetime.now(UTC)).total_seconds()
        self.sub = self.res.hub.subscribe(who.organization_id, who.user_id, expires_in=left)
        self.sub.consumer = self._hand
        self.context = contextvars.copy_context()
        access.stream_opened(who.organization_id, who.user_id, self.last_id)
        return format_retry(_retry_ms(self.res.settings))

    async def _start(self) -> None:
        newest = await _newest_id(self.res, self.who)
        if self.last_id is None:
            self.last_id = newest
        elif self.last_id > newest:
            # An id above every row of the user's (from another database, or made up): live rows, whose
            # ids are below it, would be taken for rows already sent. Start from the newest row instead,
            # and tell the client that what it shows may lack something.
            self.last_id = newest
            self.pending.append(_resync_event(newest))
        # With an id from the client, send what came after it; without, start from the newest row.
        self.catch_up = self.last_id < newest
        self.started = True

    async def _replay_batch(self) -> None:
        sub, after = self.sub, self.last_id
        if sub is None or after is None:  # not opened and started: nothing to replay yet
            return
        rows = await _rows_after(self.res, self.who, after)
        for row in rows:
            self.last_id = row.id
            self.pending.append(_notification_event(row))
        if rows:
            sub.sent = True
            self.replayed.inc(len(rows))
        self.catch_up = len(rows) == REPLAY_BATCH

    # -- the fast path: the hub hands an item to a waiting stream -------------------------------------

    def _hand(self, item: StreamItem) -> bool:
        """The subscription's consumer, called by the hub: False if the stream is not waiting."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return False
        try:
            out = self._take(item)
        except Exception as exc:  # one stream's failure must not reach the hub's other streams
            self.ended = f"failed: {type(exc).__name__}"
            self.waiter = None
            waiter.set_exception(exc)
            return True
        if out is not None:
            self.waiter = None
            waiter.set_result(out)
        elif self.finished:
            self.waiter = None
            waiter.set_exception(StopAsyncIteration())
        elif self.catch_up:
            # A gap or a resubscription: replay from PostgreSQL, in the request's context (its access
            # record), and answer the waiting write with the first of it.
            self.waiter = None
            self.filler = asyncio.get_running_loop().create_task(self._next(), context=self.context)
            self.filler.add_done_callback(partial(_forward, waiter))
        # Else a row already sent: the stream waits on.
        return True

    def _take(self, item: StreamItem) -> bytes | None:
        """What ``item`` makes this stream send now, if anything (state updated as if sent)."""
        sub = self.sub
        if sub is None:  # not opened: the hub knows nothing of it yet
            return None
        if item is Control.HEARTBEAT:
            return HEARTBEAT
        if item is Control.EXPIRED:
            # The token behind this stream has expired: end it; the client must sign in again.
            self.ended = "session expired"
            self.finished = True
            return format_event("{}", event="session.expired")
        if item is Control.CLOSE:
            self.ended = "fell behind" if sub.overflowed else "server closing"
            self.finished = True
            return None
        if item is Control.RESYNC:
            self.catch_up = True
            return None
        if item.id is None:
            # An event with no row of its own (e.g. a read-state change): forwarded as it is.
            sub.sent = True
            self.live.inc()
            return format_event(json.dumps(item.data), event=item.event)
        if item.previous_id == self.last_id:
            # The next row of the user's log, carried whole: no query (the common case).
            self.last_id = item.id
            sub.sent = True
            self.live.inc()
            return format_event(json.dumps(item.data), event=item.event, id=str(item.id))
        self.catch_up = self.last_id is not None and item.id > self.last_id
        return None


def _forward(waiter: asyncio.Future[bytes], filler: asyncio.Task[bytes]) -> None:
    if filler.cancelled():
        waiter.cancel()
    elif (exc := filler.exception()) is not None:
        if not waiter.done():
            waiter.set_exception(exc)
    elif not waiter.done():
        waiter.set_result(filler.result())


def check_stream_limit(res: Resources, who: Principal) -> None:
    """A user holds at most TICKLER_SSE_MAX_STREAMS_PER_USER streams in this process."""
    if res.hub.streams_of(who.organization_id, who.user_id) >= res.settings.sse_max_streams_per_user:
        raise TooManyRequests(
            f"You have {res.settings.sse_max_streams_per_user} streams open already; close one, or share "
            "one stream between your tabs.",
            retry_after=max(1, res.settings.sse_retry_ms // 1000),
        )
