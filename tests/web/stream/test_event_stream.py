"""The stream's body (web/stream/service.py ``EventStream``) on a hub, its database reads replaced by a
list: what a waiting stream hands Quart, and how each kind of item reaches it. The whole path, with the
database, Redis and Quart, is in tests/web/test_stream.py and tests/test_delivery.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio import Redis

from core.auth import Principal
from core.metrics import WebMetrics
from core.payloads import NotificationEvent
from core.settings import Settings
from tests.web.stream.test_hub import DEADLINE, own_channel
from web.stream import service
from web.stream.hub import Control, StreamHub
from web.stream.sse import HEARTBEAT

ORG, USER = "org-body", "7"


@dataclass
class Log:
    """The user's notification ids, as PostgreSQL would answer them."""

    ids: list[int] = field(default_factory=list)
    queries: int = 0


@pytest.fixture
async def parts(
    monkeypatch: pytest.MonkeyPatch, redis: Redis, settings: Settings
) -> AsyncIterator[tuple[StreamHub, Log, Any]]:
    log = Log(ids=[1, 2, 3])

    async def newest_id(res: Any, who: Principal) -> int:
        log.queries += 1
        return max(log.ids, default=0)

    async def rows_after(res: Any, who: Principal, after: int) -> list[SimpleNamespace]:
        log.queries += 1
        return [SimpleNamespace(id=i) for i in sorted(log.ids) if i > after][: service.REPLAY_BATCH]

    monkeypatch.setattr(service, "_newest_id", newest_id)
    monkeypatch.setattr(service, "_rows_after", rows_after)
    monkeypatch.setattr(service, "_notification_event", lambda row: f"row {row.id}".encode())
    hub = StreamHub(redis, own_channel(settings, "body"), 16)  # not started: items are offered by hand
    res = SimpleNamespace(hub=hub, settings=settings, metrics=WebMetrics(), sessionmaker=None)
    yield hub, log, res
    await hub.stop()


def live(id: int, previous_id: int) -> NotificationEvent:
    return NotificationEvent(
        organization_id=ORG, user_id=USER, event="notification", id=id, previous_id=previous_id, data={}
    )


def principal() -> Principal:
    return Principal(user_id=USER, organization_id=ORG, expires_at=datetime.now(UTC) + timedelta(hours=1))


async def asked(body: service.EventStream) -> asyncio.Future[bytes]:
    """Quart asking for the stream's next bytes, the stream then waiting (the first wait, after the
    newest id's query, is a coroutine's)."""
    pending = asyncio.ensure_future(body.__anext__())
    await asyncio.sleep(0)
    return pending


async def opened(res: Any, last_id: int | None) -> service.EventStream:
    body = service.events(res, principal(), last_id)
    assert (await body.__anext__()).startswith(b"retry: ")
    return body


async def test_a_waiting_stream_hands_quart_a_future_that_the_hub_fills(parts: Any) -> None:
    hub, log, res = parts
    body = await opened(res, None)
    [sub] = hub.subscriptions[(ORG, USER)]
    first = await asked(body)
    sub.offer(live(4, previous_id=3))
    assert (await asyncio.wait_for(first, DEADLINE)).startswith(b"event: notification\nid: 4\ndata: ")
    # From then on a wait is a bare future: no coroutine, no queue getter.
    waiting = body.__anext__()
    assert isinstance(waiting, asyncio.Future)
    assert not waiting.done()
    assert sub.queue.empty()
    sub.offer(Control.HEARTBEAT)
    assert waiting.result() == HEARTBEAT
    waiting = body.__anext__()
    assert isinstance(waiting, asyncio.Future)
    sub.offer(live(5, previous_id=4))
    assert waiting.result().startswith(b"event: notification\nid: 5\n")
    # A row the stream already sent (a repeat from Redis) wakes nothing.
    waiting = body.__anext__()
    assert isinstance(waiting, asyncio.Future)
    sub.offer(live(5, previous_id=4))
    assert not waiting.done()
    assert sub.queue.empty()
    assert log.queries == 1
    await body.aclose()
    assert waiting.cancelled()
    assert hub.stream_count == 0


async def test_a_gap_or_a_resubscription_replays_from_the_log_into_the_waiting_write(parts: Any) -> None:
    hub, log, res = parts
    body = await opened(res, 1)
    # Last-Event-ID 1: rows 2 and 3 replayed first.
    assert await body.__anext__() == b"row 2"
    assert await body.__anext__() == b"row 3"
    waiting = await asked(body)
    [sub] = hub.subscriptions[(ORG, USER)]
    # Row 4 was lost on Redis; row 5 names it as its previous: the stream reads what it lacks.
    log.ids += [4, 5]
    sub.offer(live(5, previous_id=4))
    assert await asyncio.wait_for(waiting, DEADLINE) == b"row 4"
    assert await body.__anext__() == b"row 5"
    bare = body.__anext__()
    assert isinstance(bare, asyncio.Future)
    log.ids += [6]
    sub.offer(Control.RESYNC)
    assert await asyncio.wait_for(bare, DEADLINE) == b"row 6"
    await body.aclose()


async def test_items_queued_while_replaying_are_sent_after_it_in_order(parts: Any) -> None:
    hub, log, res = parts
    body = await opened(res, 0)
    [sub] = hub.subscriptions[(ORG, USER)]
    # Queued before the stream asks: taken in the coroutine, in order, after the replay.
    log.ids += [4]
    sub.offer(live(4, previous_id=3))
    sub.offer(Control.HEARTBEAT)
    sent = [await body.__anext__() for _ in range(5)]
    assert sent[:4] == [b"row 1", b"row 2", b"row 3", b"row 4"]
    assert sent[4] == HEARTBEAT  # row 4's live message named row 3, already replayed past: nothing sent
    await body.aclose()


async def test_an_expired_session_says_so_then_ends(parts: Any) -> None:
    hub, _, res = parts
    body = await opened(res, None)
    [sub] = hub.subscriptions[(ORG, USER)]
    first = await asked(body)
    sub.offer(Control.EXPIRED)
    assert await asyncio.wait_for(first, DEADLINE) == b"event: session.expired\ndata: {}\n\n"
    with pytest.raises(StopAsyncIteration):
        await body.__anext__()
    await body.aclose()
    assert hub.stream_count == 0


@pytest.mark.parametrize("overflow", [False, True], ids=["server closing", "fell behind"])
async def test_a_closed_subscription_ends_a_waiting_stream(parts: Any, overflow: bool) -> None:
    hub, _, res = parts
    body = await opened(res, None)
    [sub] = hub.subscriptions[(ORG, USER)]
    first = await asked(body)
    sub.offer(Control.HEARTBEAT)
    await asyncio.wait_for(first, DEADLINE)
    waiting = body.__anext__()
    if overflow:
        sub.overflowed = True
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await waiting
    assert body.ended == ("fell behind" if overflow else "server closing")
    await body.aclose()


async def test_quart_iterates_it_to_its_end(parts: Any) -> None:
    """`async for`, as Quart's response sending does, ends on StopAsyncIteration from the future."""
    hub, _, res = parts
    body = await opened(res, None)
    [sub] = hub.subscriptions[(ORG, USER)]
    got: list[bytes] = []

    async def consume() -> None:
        async for chunk in body:
            got.append(chunk)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.01)
    sub.offer(Control.HEARTBEAT)
    await asyncio.sleep(0)
    sub.offer(Control.EXPIRED)
    await asyncio.wait_for(consumer, DEADLINE)
    assert got == [HEARTBEAT, b"event: session.expired\ndata: {}\n\n"]
    await body.aclose()
