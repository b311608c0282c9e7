"""``GET /v1/notifications/stream``: each user's notifications as Server-Sent Events.

Subscribe first, then replay from PostgreSQL what is newer than Last-Event-ID, then go live: nothing
committed in between is missed, and ids already sent are dropped at the seam.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator

from quart import Blueprint, Response, json, request
from sqlalchemy import func, select

from core.auth import Principal
from core.models import Notification, notification_message
from web.auth import authenticated, principal
from web.resources import Resources, resources
from web.stream.hub import Control, StreamItem
from web.stream.sse import HEARTBEAT, format_event, format_retry

blueprint = Blueprint("stream", __name__)

REPLAY_BATCH = 200
# Ids recently sent, to drop duplicates (the replay/live seam, a re-published retry).
RECENT_IDS = 4096


def parse_last_event_id(raw: str | None) -> int | None:
    """A garbage or negative id means "no replay": it must reveal nothing, nor fail."""
    if raw is None or not raw.strip().isdigit():
        return None
    value = int(raw.strip())
    return value if 0 <= value < 2**63 else None


class _Sent:
    def __init__(self) -> None:
        self.ids: OrderedDict[int, None] = OrderedDict()

    def add(self, id: int) -> bool:
        """Remember an id; False if it was sent already."""
        if id in self.ids:
            return False
        self.ids[id] = None
        if len(self.ids) > RECENT_IDS:
            self.ids.popitem(last=False)
        return True


async def _replay(
    res: Resources, who: Principal, after: int, sent: _Sent
) -> AsyncIterator[tuple[int, bytes]]:
    while True:
        async with res.sessionmaker() as session:
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
            if sent.add(row.id):
                yield (
                    row.id,
                    format_event(json.dumps(notification_message(row)), event="notification", id=str(row.id)),
                )
        if len(rows) < REPLAY_BATCH:
            return


async def _newest_id(res: Resources, who: Principal) -> int:
    async with res.sessionmaker() as session:
        newest = await session.scalar(
            select(func.max(Notification.id)).where(
                Notification.organization_id == who.organization_id, Notification.user_id == who.user_id
            )
        )
    return newest or 0


async def _events(res: Resources, who: Principal, last_id: int | None) -> AsyncIterator[bytes]:
    settings = res.settings
    sent = _Sent()
    getter: asyncio.Task[StreamItem] | None = None
    # Subscribed before the first query, so that what commits meanwhile arrives live.
    sub = res.hub.subscribe(who.organization_id, who.user_id)
    try:
        yield format_retry(settings.sse_retry_ms)
        if last_id is None:
            # Where a resync after a lost Redis subscription starts from.
            last_id = await _newest_id(res, who)
        else:
            async for id, chunk in _replay(res, who, last_id, sent):
                last_id = id
                yield chunk
        while True:
            if getter is None:
                getter = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait({getter}, timeout=settings.sse_heartbeat_seconds)
            if not done:
                yield HEARTBEAT
                continue
            item = getter.result()
            getter = None
            if item is Control.CLOSE:
                return
            if item is Control.RESYNC:
                async for id, chunk in _replay(res, who, last_id, sent):
                    last_id = id
                    yield chunk
                continue
            assert not isinstance(item, Control)
            if item.id is not None:
                if not sent.add(item.id):
                    continue
                last_id = max(last_id, item.id)
            yield format_event(json.dumps(item.data), event=item.event, id=str(item.id) if item.id else None)
    finally:
        # Runs on a client disconnect too (CancelledError at the await above, re-raised after this).
        if getter is not None:
            getter.cancel()
        res.hub.unsubscribe(sub)


@blueprint.get("/v1/notifications/stream")
@authenticated
async def stream() -> Response:
    """Your notifications as Server-Sent Events (`event: notification`, `id:` = notification id).

    Send `Last-Event-ID` (or `?last_event_id=` on a fresh page) to replay what came after that id.
    """
    res = resources()
    who = principal()
    last_id = parse_last_event_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
    response = Response(
        _events(res, who, last_id),
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    # Quart ends responses after RESPONSE_TIMEOUT; a stream lives until the client or server ends it.
    response.timeout = None
    return response
