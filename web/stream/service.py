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

import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from quart import json
from sqlalchemy import func, select

from core.auth import Principal
from core.db import tenant_transaction
from core.errors import TooManyRequests
from core.models import Notification, notification_message
from core.settings import Settings
from web import access
from web.resources import Resources
from web.stream.hub import Control
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


async def _rows_after(res: Resources, who: Principal, after: int) -> AsyncIterator[Notification]:
    while True:
        async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
            rows = (
                await session.scalars(
                    select(Notification)
                    .where(
                        Notification.organization_id == who.organization_id,
                        Notification.user_id == who.user_id,
                        Notification.id > after,
                    )
                    .order_by(Notification.id)
                    .limit(REPLAY_BATCH)
                )
            ).all()
        for row in rows:
            after = row.id
            yield row
        if len(rows) < REPLAY_BATCH:
            return


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


async def events(res: Resources, who: Principal, last_id: int | None) -> AsyncIterator[bytes]:
    settings = res.settings
    replayed, live = (res.metrics.stream_events_sent.labels(source) for source in ("replay", "live"))
    # Subscribed before the first query, so that what commits meanwhile wakes the stream up. The hub
    # sends the stream its heartbeats and, when the token expires, Control.EXPIRED.
    left = (who.expires_at - datetime.now(UTC)).total_seconds()
    sub = res.hub.subscribe(who.organization_id, who.user_id, expires_in=left)
    access.stream_opened(who.organization_id, who.user_id, last_id)
    # Why the stream ends, for its access line: unless it ends itself, its client has gone.
    ended = "client left"
    try:
        yield format_retry(_retry_ms(settings))
        newest = await _newest_id(res, who)
        if last_id is None:
            last_id = newest
        elif last_id > newest:
            # An id above every row of the user's (from another database, or made up): live rows, whose
            # ids are below it, would be taken for rows already sent. Start from the newest row instead,
            # and tell the client that what it shows may lack something.
            last_id = newest
            yield _resync_event(last_id)
        # With an id from the client, send what came after it; without, start from the newest row.
        catch_up = last_id < newest
        while True:
            if catch_up:
                async for row in _rows_after(res, who, last_id):
                    last_id = row.id
                    sub.sent = True
                    yield _notification_event(row)
                    replayed.inc()  # after the yield: the generator resumes once the write was taken
                catch_up = False
            # No task and no timeout per stream: its own coroutine waits on its queue, which the hub also
            # feeds with heartbeats and the session's end (memory and collector work per stream).
            item = await sub.queue.get()
            if item is Control.HEARTBEAT:
                yield HEARTBEAT
                continue
            if item is Control.EXPIRED:
                # The token behind this stream has expired: end it; the client must sign in again.
                yield format_event("{}", event="session.expired")
                ended = "session expired"
                return
            if item is Control.CLOSE:
                ended = "fell behind" if sub.overflowed else "server closing"
                return
            if item is Control.RESYNC:
                catch_up = True
            elif item.id is None:
                # An event with no row of its own (e.g. a read-state change): forwarded as it is.
                sub.sent = True
                yield format_event(json.dumps(item.data), event=item.event)
                live.inc()
            elif item.previous_id == last_id:
                # The next row of the user's log, carried whole: no query (the common case).
                last_id = item.id
                sub.sent = True
                yield format_event(json.dumps(item.data), event=item.event, id=str(item.id))
                live.inc()
            else:
                catch_up = item.id > last_id
    except Exception as exc:
        ended = f"failed: {type(exc).__name__}"
        raise
    finally:
        # Runs on a client disconnect too (CancelledError at the await above, re-raised after this).
        res.hub.unsubscribe(sub)
        access.stream_ended(ended)


def check_stream_limit(res: Resources, who: Principal) -> None:
    """A user holds at most TICKLER_SSE_MAX_STREAMS_PER_USER streams in this process."""
    if res.hub.streams_of(who.organization_id, who.user_id) >= res.settings.sse_max_streams_per_user:
        raise TooManyRequests(
            f"You have {res.settings.sse_max_streams_per_user} streams open already; close one, or share "
            "one stream between your tabs.",
            retry_after=max(1, res.settings.sse_retry_ms // 1000),
        )
