"""The notification stream over real HTTP: framing, heartbeat, replay from Last-Event-ID, no duplicates."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.payloads import NotificationEvent
from core.pubsub import Channel, publish
from core.settings import Settings
from tests.helpers import (
    HEARTBEAT,
    STREAM,
    STREAM_DEADLINE,
    bearer,
    insert_notifications,
    new_org,
    open_stream,
)

DEADLINE = STREAM_DEADLINE


# -- framing -----------------------------------------------------------------------------------------


async def test_the_stream_opens_with_retry_and_headers_then_heartbeats(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with open_stream(client, bearer(settings, "7", new_org())) as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        await stream.read_past_heartbeat()
        [retry] = [e.retry for e in stream.events]
        assert retry is not None
        assert stream.lines[:2] == [f"retry: {retry}", ""]
        assert retry_bounds(settings)[0] <= retry <= retry_bounds(settings)[1]
        # An idle stream sends nothing but heartbeats: comments, which dispatch no event.
        assert [line for line in stream.lines[2:] if line] == [HEARTBEAT]
        await stream.read_until(lambda line: line == HEARTBEAT)


async def test_an_event_source_client_sees_the_retry_first(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with aconnect_sse(client, "GET", STREAM, headers=bearer(settings, "7", new_org())) as source:
        async with asyncio.timeout(DEADLINE):
            first = await anext(source.aiter_sse())
    assert first.retry is not None
    assert retry_bounds(settings)[0] <= first.retry <= retry_bounds(settings)[1]


def retry_bounds(settings: Settings) -> tuple[float, float]:
    spread = settings.sse_retry_ms * settings.sse_retry_jitter
    return settings.sse_retry_ms - spread, settings.sse_retry_ms + spread


async def test_each_stream_tells_its_client_another_retry(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """So that the clients of a web process that dies do not all come back in one wave."""
    org = new_org()
    retries = []
    for user in range(8):
        async with aconnect_sse(client, "GET", STREAM, headers=bearer(settings, str(user), org)) as source:
            async with asyncio.timeout(DEADLINE):
                retries.append((await anext(source.aiter_sse())).retry)
    assert len(set(retries)) > 1, retries


# -- replay ------------------------------------------------------------------------------------------


async def test_last_event_id_replays_what_came_after_in_order_once(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    ids = await insert_notifications(sessionmaker, org, "7", 4)
    headers = {**bearer(settings, "7", org), "Last-Event-ID": str(ids[0])}
    async with open_stream(client, headers) as stream:
        await stream.read_past_heartbeat()
    assert stream.notification_ids == ids[1:]
    for event, n in zip(stream.notifications, range(1, 4), strict=True):
        data = json.loads(event.data)
        assert data["id"] == int(event.id)
        assert data["title"] == f"Call Ana #{n}"
        assert data["kind"] == "reminder"


async def test_last_event_id_zero_replays_everything(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    ids = await insert_notifications(sessionmaker, org, "7", 3)
    async with open_stream(client, {**bearer(settings, "7", org), "Last-Event-ID": "0"}) as stream:
        await stream.read_past_heartbeat()
    assert stream.notification_ids == ids


async def test_the_query_parameter_works_like_the_header(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    ids = await insert_notifications(sessionmaker, org, "7", 3)
    async with open_stream(client, bearer(settings, "7", org), {"last_event_id": str(ids[0])}) as stream:
        await stream.read_past_heartbeat()
    assert stream.notification_ids == ids[1:]


async def test_without_last_event_id_nothing_is_replayed(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    await insert_notifications(sessionmaker, org, "7", 2)
    async with open_stream(client, bearer(settings, "7", org)) as stream:
        await stream.read_past_heartbeat()
    assert stream.notifications == []


@pytest.mark.parametrize(
    "garbage",
    [
        "abc",
        "-1",
        "99999999999999999999999",
        "9223372036854775808",
        "1.5",
        "0x10",
        "1e3",
        "",
        pytest.param(
            "²",
            id="superscript-two",
        ),
    ],
)
@pytest.mark.parametrize("via", ["header", "query"])
async def test_a_garbage_last_event_id_replays_nothing_and_fails_nothing(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    garbage: str,
    via: str,
) -> None:
    org = new_org()
    await insert_notifications(sessionmaker, org, "7", 2)
    headers: dict[bytes, bytes] = {k.encode(): v.encode() for k, v in bearer(settings, "7", org).items()}
    params = None
    if via == "header":
        # Header bytes beyond ASCII are read as Latin-1 by the server.
        headers[b"Last-Event-ID"] = garbage.encode("latin-1")
    else:
        params = {"last_event_id": garbage}
    async with open_stream(client, headers, params) as stream:
        await stream.read_past_heartbeat()
    assert stream.notifications == []


async def test_another_users_rows_are_never_replayed(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org, other_org = new_org(), new_org()
    await insert_notifications(sessionmaker, org, "7", 3)
    bos = await insert_notifications(sessionmaker, org, "8", 1)
    # The same user id in another organization is another person.
    namesakes = await insert_notifications(sessionmaker, other_org, "7", 1)

    async with open_stream(client, {**bearer(settings, "8", org), "Last-Event-ID": "0"}) as stream:
        await stream.read_past_heartbeat()
    assert stream.notification_ids == bos

    async with open_stream(client, {**bearer(settings, "7", other_org), "Last-Event-ID": "0"}) as stream:
        await stream.read_past_heartbeat()
    assert stream.notification_ids == namesakes

    async with open_stream(client, {**bearer(settings, "9", org), "Last-Event-ID": "0"}) as stream:
        await stream.read_past_heartbeat()
    assert stream.notifications == []


async def test_a_last_event_id_above_the_newest_starts_from_the_newest_and_says_so(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    """Else live rows, whose ids are below the client's, would be taken for rows it has and dropped."""
    org = new_org()
    [newest] = await insert_notifications(sessionmaker, org, "7", 1)
    ahead = {**bearer(settings, "7", org), "Last-Event-ID": str(newest + 1000)}
    async with open_stream(client, ahead) as stream:
        await stream.read_past_heartbeat()
        [resync] = [e for e in stream.events if e.event == "resync"]
        # The id moves the client's Last-Event-ID to where the stream starts.
        assert resync.id == str(newest)
        assert json.loads(resync.data) == {"last_event_id": newest}
        [fresh] = await insert_notifications(sessionmaker, org, "7", 1)
        assert fresh < newest + 1000
        await publish(redis, Channel.of(settings), live(org, fresh, "Call Ana #0", previous_id=newest))
        await stream.read_until(lambda line: line == f"id: {fresh}")
        await stream.read_until(lambda line: line == "")
    assert stream.notification_ids == [fresh]


async def test_a_last_event_id_of_a_user_with_no_notifications_starts_from_zero(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with open_stream(client, {**bearer(settings, "7", new_org()), "Last-Event-ID": "5"}) as stream:
        await stream.read_past_heartbeat()
    assert [(e.event, e.id, json.loads(e.data)) for e in stream.events if e.event == "resync"] == [
        ("resync", "0", {"last_event_id": 0})
    ]


async def test_a_last_event_id_at_the_newest_is_no_resync(
    client: httpx.AsyncClient, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    [newest] = await insert_notifications(sessionmaker, org, "7", 1)
    async with open_stream(client, {**bearer(settings, "7", org), "Last-Event-ID": str(newest)}) as stream:
        await stream.read_past_heartbeat()
    assert [e for e in stream.events if e.event == "resync"] == []


# -- live --------------------------------------------------------------------------------------------


def live(org: str, id: int, title: str, user: str = "7", previous_id: int | None = None) -> NotificationEvent:
    """What the delivery activity publishes for a committed row."""
    return NotificationEvent(
        organization_id=org,
        user_id=user,
        event="notification",
        id=id,
        data={"id": id, "title": title},
        previous_id=previous_id,
    )


async def test_the_next_row_named_by_its_message_is_sent_without_reading_postgresql(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    async with open_stream(client, bearer(settings, "7", org)) as stream:
        await stream.read_past_heartbeat()
        first, second = await insert_notifications(sessionmaker, org, "7", 2)
        # Each message names the row before it, which is the last the stream sent: it goes out as it is
        # (its title differs from the row's only to show where the event came from).
        await publish(redis, Channel.of(settings), live(org, first, "from the message", previous_id=0))
        await publish(redis, Channel.of(settings), live(org, second, "also", previous_id=first))
        await stream.read_until(lambda line: line == f"id: {second}")
        await stream.read_until(lambda line: line == "")
    assert stream.notification_ids == [first, second]
    assert [json.loads(e.data)["title"] for e in stream.notifications] == ["from the message", "also"]


async def test_a_message_after_one_the_stream_missed_makes_it_read_what_it_lacks(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    async with open_stream(client, bearer(settings, "7", org)) as stream:
        await stream.read_past_heartbeat()
        lost, second = await insert_notifications(sessionmaker, org, "7", 2)
        # The first row's message never came: the second's names a predecessor the stream has not sent.
        await publish(redis, Channel.of(settings), live(org, second, "from the message", previous_id=lost))
        await stream.read_until(lambda line: line == f"id: {second}")
        await stream.read_until(lambda line: line == "")
    assert stream.notification_ids == [lost, second]
    assert [json.loads(e.data)["title"] for e in stream.notifications] == ["Call Ana #0", "Call Ana #1"]


async def test_a_live_event_already_replayed_is_not_sent_twice(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    ids = await insert_notifications(sessionmaker, org, "7", 3)
    async with open_stream(client, {**bearer(settings, "7", org), "Last-Event-ID": str(ids[0])}) as stream:
        await stream.read_past_heartbeat()
        assert stream.notification_ids == ids[1:]

        # A retried delivery publishes its row again.
        await publish(redis, Channel.of(settings), live(org, ids[2], "Call Ana #2"))
        await publish(redis, Channel.of(settings), live(org, ids[1], "Call Ana #1"))
        # Redis keeps the order of a channel: once the fresh row arrives, the duplicates had their chance.
        [fresh] = await insert_notifications(sessionmaker, org, "7", 1)
        await publish(redis, Channel.of(settings), live(org, fresh, "Call Ana #0"))
        await stream.read_until(lambda line: line == f"id: {fresh}")
        await stream.read_until(lambda line: line == "")

    assert stream.notification_ids == [*ids[1:], fresh]
    data = json.loads(stream.notifications[-1].data)
    assert data["id"] == fresh
    assert data["title"] == "Call Ana #0"


async def test_a_republished_old_notification_is_not_sent_after_a_reconnect(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    ids = await insert_notifications(sessionmaker, org, "7", 2)
    # The client had everything up to ids[-1] when it reconnected.
    async with open_stream(client, {**bearer(settings, "7", org), "Last-Event-ID": str(ids[-1])}) as stream:
        await stream.read_past_heartbeat()
        assert stream.notifications == []
        # deliver_reminder retried after its publish (e.g. the worker died before completing it) publishes
        # the existing row again: "streams drop duplicates by id", says activities/tasks.py.
        await publish(redis, Channel.of(settings), live(org, ids[-1], "Call Ana #1"))
        await publish(redis, Channel.of(settings), live(org, ids[0], "Call Ana #0"))
        [fresh] = await insert_notifications(sessionmaker, org, "7", 1)
        await publish(redis, Channel.of(settings), live(org, fresh, "Call Ana #0"))
        await stream.read_until(lambda line: line == f"id: {fresh}")
        await stream.read_until(lambda line: line == "")

    assert stream.notification_ids == [fresh]


async def test_after_the_hub_loses_redis_the_stream_replays_what_it_missed(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    before = await insert_notifications(sessionmaker, org, "7", 1)
    async with open_stream(client, bearer(settings, "7", org)) as stream:
        await stream.read_past_heartbeat()
        # Committed while nobody listened: their messages were lost with the subscription.
        missed = await insert_notifications(sessionmaker, org, "7", 2)
        assert await redis.client_kill_filter(_type="pubsub") >= 1
        await stream.read_until(lambda line: line == f"id: {missed[-1]}")
        await stream.read_past_heartbeat()
    # From where the stream started (the newest row then), in order, once.
    assert stream.notification_ids == missed
    assert before[0] < missed[0]
