"""The stream hub on the real Redis: fan-out per (organization, user), bounded queues, resubscription."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from core.payloads import NotificationEvent
from core.pubsub import Channel, make_redis, publish
from core.settings import Settings
from tests.helpers import new_org, wait_until
from tickler import devstack
from web.stream.hub import TICK_SECONDS, Control, StreamHub, StreamItem, Subscription

HubFactory = Callable[..., Awaitable[StreamHub]]


def own_channel(settings: Settings, purpose: str) -> Channel:
    """A channel of the test's own, signed with the suite's key."""
    return Channel(f"{settings.redis_channel}-{purpose}-{uuid.uuid4().hex[:8]}", Channel.of(settings).key)


# Longer than the hub's first resubscription backoff (0.1 s) and its 1 s read timeout, with room to spare.
DEADLINE = 10.0


@pytest.fixture
async def make_hub(redis: Redis, settings: Settings) -> AsyncIterator[HubFactory]:
    """Started hubs, each on a channel of its own (the web app's hub shares this Redis), stopped after."""
    hubs: list[StreamHub] = []

    async def make(queue_size: int = 16, heartbeat_seconds: float = 15.0) -> StreamHub:
        hub = StreamHub(redis, own_channel(settings, "hub"), queue_size, heartbeat_seconds=heartbeat_seconds)
        hubs.append(hub)
        await hub.start()
        assert hub.subscribed.is_set()
        return hub

    yield make
    for hub in hubs:
        await hub.stop()


def event(org: str, user: str, id: int | None = None, **data: object) -> NotificationEvent:
    return NotificationEvent(organization_id=org, user_id=user, event="notification", id=id, data=data)


async def next_item(sub: Subscription) -> StreamItem:
    return await asyncio.wait_for(sub.queue.get(), DEADLINE)


async def test_each_subscription_receives_only_its_own_events(make_hub: HubFactory, redis: Redis) -> None:
    hub = await make_hub()
    org, other_org = new_org(), new_org()
    ana = hub.subscribe(org, "7")
    bo = hub.subscribe(org, "8")
    # The same user id in another organization is another person.
    namesake = hub.subscribe(other_org, "7")

    await publish(redis, hub.channel, event(org, "7", 1))
    await publish(redis, hub.channel, event(org, "8", 2))
    await publish(redis, hub.channel, event(other_org, "7", 3))
    await publish(redis, hub.channel, event(org, "9", 4))
    await publish(redis, hub.channel, event(org, "7", 5))

    # Redis keeps the order of one channel: had a foreign event reached a queue, it would sit in between.
    assert [await next_item(ana), await next_item(ana)] == [event(org, "7", 1), event(org, "7", 5)]
    assert await next_item(bo) == event(org, "8", 2)
    assert await next_item(namesake) == event(other_org, "7", 3)
    assert ana.queue.empty()
    assert bo.queue.empty()
    assert namesake.queue.empty()
    assert hub.stream_count == 3


async def test_two_streams_of_one_user_both_receive(make_hub: HubFactory, redis: Redis) -> None:
    hub = await make_hub()
    org = new_org()
    tab1, tab2 = hub.subscribe(org, "7"), hub.subscribe(org, "7")
    await publish(redis, hub.channel, event(org, "7", 1))
    assert await next_item(tab1) == event(org, "7", 1)
    assert await next_item(tab2) == event(org, "7", 1)
    hub.unsubscribe(tab1)
    hub.unsubscribe(tab1)  # twice is harmless
    await publish(redis, hub.channel, event(org, "7", 2))
    assert await next_item(tab2) == event(org, "7", 2)
    assert tab1.queue.empty()
    hub.unsubscribe(tab2)
    assert hub.stream_count == 0
    assert not hub.subscriptions


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json",
        b"null",
        b"[]",
        b'"a string"',
        b"\xff\xfe\x00",
        b'{"organization_id": "o"}',
        b'{"organization_id": 1, "user_id": 7, "event": "notification", "data": {}}',
        b'{"organization_id": "o", "user_id": "7", "event": "notification", "data": []}',
        b'{"organization_id": "o", "user_id": "7", "event": "notification", "id": "x", "data": {}}',
        b"[" * 100_000,
    ],
    ids=repr,
)
async def test_a_malformed_message_is_dropped_and_later_ones_arrive(
    make_hub: HubFactory, redis: Redis, garbage: bytes
) -> None:
    hub = await make_hub()
    org = new_org()
    sub = hub.subscribe(org, "7")
    await redis.publish(hub.channel.name, garbage)
    # Signed garbage too: it passes the signature, not the parsing.
    await redis.publish(hub.channel.name, hub.channel.sign(garbage))
    await publish(redis, hub.channel, event(org, "7", 1))
    assert await next_item(sub) == event(org, "7", 1)
    assert sub.queue.empty()
    assert hub._task is not None
    assert not hub._task.done()


async def test_a_message_without_the_channel_keys_signature_reaches_no_stream(
    make_hub: HubFactory, redis: Redis
) -> None:
    """Anyone who can publish on Redis could otherwise push made-up notifications into any user's tabs."""
    hub = await make_hub()
    org = new_org()
    sub = hub.subscribe(org, "7")
    forged = event(org, "7", 1, title="Your password expired: sign in at evil.example")
    body = forged.model_dump_json().encode()
    other_key = Channel(hub.channel.name, b"not-the-key-" * 4)
    for message in (
        body,  # unsigned, as every message was before signatures
        other_key.sign(body),  # signed with another key
        hub.channel.sign(body).replace(b"evil.example", b"evil.example!"),  # tampered after signing
        hub.channel.sign(body)[:70] + b"." + body,  # a signature cut short
    ):
        await redis.publish(hub.channel.name, message)
    await publish(redis, hub.channel, event(org, "7", 2))
    assert await next_item(sub) == event(org, "7", 2)
    assert sub.queue.empty()
    dropped = hub.metrics.messages_dropped.labels("signature")._value.get()
    assert dropped == 4


async def test_a_stream_that_falls_behind_is_closed_and_others_go_on(
    make_hub: HubFactory, redis: Redis
) -> None:
    hub = await make_hub(queue_size=2)
    org = new_org()
    slow = hub.subscribe(org, "7")
    other = hub.subscribe(org, "8")

    for id in (1, 2, 3):
        await publish(redis, hub.channel, event(org, "7", id))
    await publish(redis, hub.channel, event(org, "8", 10))

    await wait_until(lambda: slow.overflowed, within=DEADLINE, what="the slow stream to overflow")
    # What was queued is dropped (the client replays it after reconnecting): only CLOSE is left.
    assert await next_item(slow) is Control.CLOSE
    assert await next_item(other) == event(org, "8", 10)
    assert not other.overflowed

    await publish(redis, hub.channel, event(org, "8", 11))
    assert await next_item(other) == event(org, "8", 11)
    assert not other.overflowed


async def test_close_all_ends_every_stream(make_hub: HubFactory, redis: Redis) -> None:
    hub = await make_hub()
    org = new_org()
    subs = [hub.subscribe(org, "7"), hub.subscribe(org, "7"), hub.subscribe(new_org(), "8")]
    await publish(redis, hub.channel, event(org, "7", 1))
    await wait_until(lambda: all(not s.queue.empty() for s in subs[:2]), within=DEADLINE, what="delivery")

    hub.close_all()
    for sub in subs:
        assert await next_item(sub) is Control.CLOSE
        assert sub.queue.empty()
    # A stream opened while the process shuts down ends at once.
    late = hub.subscribe(org, "7")
    assert await next_item(late) is Control.CLOSE


async def test_after_the_connection_is_killed_the_hub_resubscribes_and_resyncs(
    make_hub: HubFactory, redis: Redis
) -> None:
    hub = await make_hub()
    org = new_org()
    ana, bo = hub.subscribe(org, "7"), hub.subscribe(org, "8")

    async def listeners() -> int:
        [(_, count)] = await redis.pubsub_numsub(hub.channel.name)
        return int(count)

    assert await listeners() == 1
    killed = await redis.client_kill_filter(_type="pubsub")
    assert killed >= 1

    # Every stream is told to replay from PostgreSQL what may have been published while unsubscribed.
    assert await next_item(ana) is Control.RESYNC
    assert await next_item(bo) is Control.RESYNC
    count: int = await wait_until(listeners, within=DEADLINE, what="the hub to listen again")
    assert count == 1
    assert hub.subscribed.is_set()

    await publish(redis, hub.channel, event(org, "7", 1))
    await publish(redis, hub.channel, event(org, "8", 2))
    assert await next_item(ana) == event(org, "7", 1)
    assert await next_item(bo) == event(org, "8", 2)
    assert ana.queue.empty()
    assert bo.queue.empty()


async def test_the_first_subscription_resyncs_the_streams_opened_before_it(
    settings: Settings, tmp_path: Path
) -> None:
    """A web process whose Redis is not there yet serves streams all the same; what was published before
    the hub first subscribes reached none of them, so each must replay it."""
    port = devstack.free_port()
    client = make_redis(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
    hub = StreamHub(client, own_channel(settings, "first"), 16)
    server: devstack.ManagedProcess | None = None
    try:
        await hub.start(wait_seconds=0.1)
        assert not hub.subscribed.is_set()
        early = hub.subscribe(new_org(), "7")
        server = devstack.start_redis(tmp_path, port)
        assert await next_item(early) is Control.RESYNC
        assert hub.subscribed.is_set()
        assert early.queue.empty()
    finally:
        await hub.stop()
        await client.aclose()
        if server is not None:
            server.stop()


# -- heartbeats and session ends, from the hub's one clock ---------------------------------------------


async def test_a_quiet_stream_gets_a_heartbeat_each_interval_and_a_busy_one_none(
    make_hub: HubFactory,
) -> None:
    interval = 0.4
    hub = await make_hub(heartbeat_seconds=interval)
    org = new_org()
    quiet, busy = hub.subscribe(org, "7"), hub.subscribe(org, "8")
    stop = asyncio.Event()

    async def keep_sending() -> None:  # as a stream does whenever it writes an event
        while not stop.is_set():
            busy.sent = True
            await asyncio.sleep(interval / 8)

    sender = asyncio.create_task(keep_sending())
    loop = asyncio.get_running_loop()
    arrivals = []
    try:
        for _ in range(4):
            assert await next_item(quiet) is Control.HEARTBEAT
            arrivals.append(loop.time())
    finally:
        stop.set()
        await sender
    assert busy.queue.empty(), "a stream that keeps sending needs no heartbeat"
    # One per interval, not one per visit (the clock visits each stream twice per interval). A lower
    # bound only: a loaded machine may delay a beat, never bring it forward.
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap > interval * 0.75 for gap in gaps), gaps
    # Once it falls quiet, the busy one gets its heartbeats too.
    assert await next_item(busy) is Control.HEARTBEAT


async def test_the_clock_visits_a_few_streams_at_a_time(make_hub: HubFactory) -> None:
    """Every heartbeat a visit sends holds the loop (~40 us each with Quart and Hypercorn), and a
    notification that comes meanwhile waits behind them: with 10,000 streams in 16 groups a visit was
    ~20 ms every 0.47 s, the fan-out's tail. Groups are as many as ticks of TICK_SECONDS in half an
    interval, so a production interval visits a few dozen streams at a time."""
    hub = await make_hub(heartbeat_seconds=15.0)
    org = new_org()
    subs = [hub.subscribe(org, str(n)) for n in range(3_000)]
    groups = hub._slots
    assert len(groups) == round(15.0 / 2 / TICK_SECONDS) == 300
    assert max(len(group) for group in groups) == 10  # 3,000 streams, 10 per visit
    for sub in subs:
        hub.unsubscribe(sub)
    assert not any(groups)


async def test_a_heartbeat_never_pushes_an_event_out_of_a_full_queue(
    make_hub: HubFactory, redis: Redis
) -> None:
    hub = await make_hub(queue_size=2, heartbeat_seconds=0.2)
    org = new_org()
    sub = hub.subscribe(org, "7")
    await publish(redis, hub.channel, event(org, "7", 1))
    await publish(redis, hub.channel, event(org, "7", 2))
    await wait_until(lambda: sub.queue.full(), what="both events queued")
    # Several visits later: the events wait for their stream, no heartbeat was squeezed in, none dropped.
    visits = asyncio.get_running_loop().time() + 0.5
    await wait_until(lambda: asyncio.get_running_loop().time() > visits, what="a few turns of the clock")
    assert not sub.overflowed
    assert [await next_item(sub), await next_item(sub)] == [event(org, "7", 1), event(org, "7", 2)]


async def test_a_session_ends_by_one_timer_set_at_subscription(make_hub: HubFactory) -> None:
    hub = await make_hub()
    org = new_org()
    ending = hub.subscribe(org, "7", expires_in=0.2)
    assert await next_item(ending) is Control.EXPIRED
    # A stream that ends first takes its timer with it.
    lasting = hub.subscribe(org, "8", expires_in=3600)
    assert lasting.expiry is not None
    assert not lasting.expiry.cancelled()
    hub.unsubscribe(lasting)
    assert lasting.expiry.cancelled()
    assert hub.streams_of(org, "8") == 0
