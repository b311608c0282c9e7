"""Notifications are never lost nor shown twice, whatever fails: end to end on the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.tasks import TaskActivities
from core.db import make_engine, make_sessionmaker, tenant_transaction
from core.gcwatch import Deliveries
from core.models import Notification
from core.payloads import DELIVER_AHEAD, DeliverReminderInput, NotificationEvent
from core.pubsub import Channel, make_redis, publish
from core.settings import Settings
from tests.helpers import (
    STREAM,
    STREAM_DEADLINE,
    StreamReader,
    bearer,
    insert_notifications,
    new_org,
    open_stream,
    run_worker,
    serve_app,
    task_row,
    wait_until,
)
from tickler import devstack
from web.resources import EXTENSION_KEY, Resources


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/tasks", json={"title": "Call Ana", **body}, headers=headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def task_ids(stream: StreamReader) -> list[str]:
    return [json.loads(e.data)["task_id"] for e in stream.notifications]


async def test_many_users_in_two_organizations_each_receive_exactly_their_own(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    orgs = [new_org(), new_org()]
    users = ["7", "8", "9"]
    audiences = [(org, user) for org in orgs for user in users]
    async with contextlib.AsyncExitStack() as stack:
        streams = {
            (org, user, tab): await stack.enter_async_context(
                open_stream(client, bearer(settings, user, org))
            )
            for org, user in audiences
            for tab in range(2)  # two tabs each
        }
        for stream in streams.values():
            await stream.read_past_heartbeat()
        # Each user of each organization gets two tasks, created by someone else of the same organization.
        expected: dict[tuple[str, str], set[str]] = {audience: set() for audience in audiences}
        for org, user in audiences:
            creator = bearer(settings, "creator", org)
            for _ in range(2):
                task = await create(client, creator, due_at=soon(2), assignee_id=user)
                expected[(org, user)].add(task["id"])
        for stream in streams.values():
            await stream.read_until(lambda _, s=stream: len(s.notifications) >= 2)  # type: ignore[misc]
        for (org, user, tab), stream in streams.items():
            await stream.read_past_heartbeat()
            assert sorted(task_ids(stream)) == sorted(expected[(org, user)]), f"{org}/{user} tab {tab}"
            assert len(set(stream.notification_ids)) == 2


async def test_a_client_that_was_away_gets_what_it_missed_in_order_once(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    me = bearer(settings, "7", new_org())
    async with open_stream(client, me) as first:
        await first.read_past_heartbeat()
        before = await create(client, me, due_at=soon(1.5))
        await first.read_until(lambda _: len(first.notifications) == 1)
        last_seen = first.notification_ids[-1]
    # The tab is closed; three reminders fire meanwhile.
    missed = [await create(client, me, due_at=soon(1 + n * 0.3)) for n in range(3)]
    inbox = await wait_until(
        lambda: _inbox_count(client, me, 4), within=STREAM_DEADLINE, what="the missed reminders to fire"
    )
    assert inbox
    async with open_stream(client, me | {"Last-Event-ID": str(last_seen)}) as again:
        await again.read_past_heartbeat()
        assert sorted(task_ids(again)) == sorted(t["id"] for t in missed)
        assert again.notification_ids == sorted(again.notification_ids)
        assert before["id"] not in task_ids(again)


async def _inbox_count(client: httpx.AsyncClient, headers: dict[str, str], count: int) -> bool:
    page = (await client.get("/v1/notifications", headers=headers)).json()
    return len(page["items"]) >= count


async def test_a_duplicated_delivery_makes_one_row_and_one_event(
    client: httpx.AsyncClient,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    org = new_org()
    task = task_row(org=org, user="7")
    async with tenant_transaction(sessionmaker, org) as session:
        session.add(task)
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    delivery = DeliverReminderInput(
        task_id=task.id,
        organization_id=org,
        dedupe_key=f"{task.id}/1/0",
        due_at=task.due_at,
        not_before=task.due_at,
    )
    async with open_stream(client, bearer(settings, "7", org)) as stream:
        await stream.read_past_heartbeat()
        # The same occurrence delivered twice, at once and again after: a retry, a duplicated execution.
        environment = ActivityEnvironment()
        first, second = await asyncio.gather(
            environment.run(activities.deliver_reminder, delivery),
            environment.run(activities.deliver_reminder, delivery),
        )
        third = await environment.run(activities.deliver_reminder, delivery)
        assert first == second == third
        await stream.read_until(lambda _: len(stream.notifications) >= 1)
        await stream.read_past_heartbeat()
        await stream.read_past_heartbeat()
        assert stream.notification_ids == [first]
    async with tenant_transaction(sessionmaker, org) as session:
        count = await session.scalar(
            select(func.count()).select_from(Notification).where(Notification.task_id == task.id)
        )
    assert count == 1


async def test_each_published_row_names_the_users_row_before_it(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """The chain that lets streams send a row straight from its message (web/stream/service.py)."""
    org = new_org()
    tasks = [task_row(org=org, user="7"), task_row(org=org, user="7")]
    async with tenant_transaction(sessionmaker, org) as session:
        session.add_all(tasks)
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    deliveries = [
        DeliverReminderInput(
            task_id=t.id, organization_id=org, dedupe_key=f"{t.id}/1/0", due_at=t.due_at, not_before=t.due_at
        )
        for t in tasks
    ]
    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(settings.redis_channel)
        environment = ActivityEnvironment()
        first = await environment.run(activities.deliver_reminder, deliveries[0])
        second = await environment.run(activities.deliver_reminder, deliveries[1])
        again = await environment.run(activities.deliver_reminder, deliveries[0])
        assert again == first
        published: list[NotificationEvent] = []
        async with asyncio.timeout(STREAM_DEADLINE):
            while len(published) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    body = Channel.of(settings).verified_body(message["data"])
                    assert body is not None, "the worker signs what it publishes"
                    event = NotificationEvent.model_validate_json(body)
                    if event.organization_id == org:
                        published.append(event)
    assert [(e.id, e.previous_id) for e in published] == [(first, 0), (second, first), (first, None)]


async def test_a_delivery_waits_for_its_instant_but_no_longer_than_the_margin(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """The workflow's timer fires DELIVER_AHEAD early; the activity makes up the difference on the clock,
    and a wrong clock cannot make it hold the workflow task for longer than that."""
    org = new_org()
    tasks = [task_row(org=org, user="7"), task_row(org=org, user="7")]
    async with tenant_transaction(sessionmaker, org) as session:
        session.add_all(tasks)
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    environment = ActivityEnvironment()
    instants = [datetime.now(UTC) + DELIVER_AHEAD / 2, datetime.now(UTC) + timedelta(hours=1)]
    for task, instant in zip(tasks, instants, strict=True):
        delivery = DeliverReminderInput(
            task_id=task.id,
            organization_id=org,
            dedupe_key=f"{task.id}/1/0",
            due_at=task.due_at,
            not_before=instant,
        )
        await environment.run(activities.deliver_reminder, delivery)
    async with tenant_transaction(sessionmaker, org) as session:
        rows = {n.task_id: n for n in await session.scalars(select(Notification))}
    on_time, far = rows[tasks[0].id], rows[tasks[1].id]
    assert on_time.created_at >= instants[0]
    assert far.created_at < instants[1] - timedelta(minutes=59)


async def test_a_delivery_is_in_hand_from_its_wait_to_its_publish(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """What the worker's garbage collector waits on (core/gcwatch.py): no full collection in between."""
    task = task_row(org=new_org(), user="7")
    async with tenant_transaction(sessionmaker, task.organization_id) as session:
        session.add(task)
    deliveries = Deliveries()
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings), deliveries)
    delivery = DeliverReminderInput(
        task_id=task.id,
        organization_id=task.organization_id,
        dedupe_key=f"{task.id}/1/0",
        due_at=task.due_at,
        not_before=datetime.now(UTC) + DELIVER_AHEAD,
    )
    running = asyncio.create_task(ActivityEnvironment().run(activities.deliver_reminder, delivery))
    await wait_until(lambda: not deliveries.none.is_set(), what="the delivery in hand while it waits")
    assert await running is not None
    assert deliveries.none.is_set()
    wrong = delivery.model_copy(update={"organization_id": new_org(), "not_before": task.due_at})
    with pytest.raises(ApplicationError):
        await ActivityEnvironment().run(activities.deliver_reminder, wrong)
    assert deliveries.none.is_set()  # a failed delivery is not in hand either


async def test_a_closed_task_gets_no_notification(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """Completed or cancelled before its reminder: the delivery writes nothing and says so (None)."""
    org = new_org()
    done, cancelled = task_row(org=org, status="done"), task_row(org=org, status="cancelled")
    async with tenant_transaction(sessionmaker, org) as session:
        session.add_all([done, cancelled])
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    for task in (done, cancelled):
        delivery = DeliverReminderInput(
            task_id=task.id,
            organization_id=org,
            dedupe_key=f"{task.id}/1/0",
            due_at=task.due_at,
            not_before=task.due_at,
        )
        assert await ActivityEnvironment().run(activities.deliver_reminder, delivery) is None
    async with tenant_transaction(sessionmaker, org) as session:
        assert await session.scalar(select(func.count()).select_from(Notification)) == 0


async def test_a_delivery_for_a_task_of_another_organization_is_refused_for_good(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    task = task_row(org=new_org(), user="7")
    async with tenant_transaction(sessionmaker, task.organization_id) as session:
        session.add(task)
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))
    wrong = DeliverReminderInput(
        task_id=task.id,
        organization_id=new_org(),
        dedupe_key=f"{task.id}/1/0",
        due_at=task.due_at,
        not_before=task.due_at,
    )
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(activities.deliver_reminder, wrong)
    assert refused.value.non_retryable
    assert refused.value.type == "TaskNotFound"


# -- a stack of its own: its own Redis, web app and worker ------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[devstack.ManagedProcess]:
    process = devstack.start_redis(tmp_path, devstack.free_port())
    yield process
    process.stop()


async def test_a_redis_restart_loses_nothing(
    settings: Settings, temporal: Client, own_redis: devstack.ManagedProcess, tmp_path: Path
) -> None:
    own = settings.model_copy(
        update={
            "redis_url": own_redis.address,
            "temporal_task_queue": f"redis-restart-{uuid.uuid4().hex[:8]}",
        }
    )
    engine = make_engine(own, application_name="tickler-test-worker")
    redis = make_redis(own)
    me = bearer(own, "7", new_org())
    try:
        async with (
            run_worker(temporal, own, engine, redis),
            serve_app(own) as (url, app),
            httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
            open_stream(client, me) as stream,
        ):
            await stream.read_past_heartbeat()
            first = await create(client, me, due_at=soon(1))
            await stream.read_until(lambda _: len(stream.notifications) == 1)

            own_redis.stop()
            hub = _resources(app).hub
            await wait_until(lambda: not hub.subscribed.is_set(), what="the hub to notice Redis is gone")
            # Fires while Redis is down: the row commits, the publish fails and is retried.
            second = await create(client, me, due_at=soon(0.5))
            org = second["organization_id"]
            await wait_until(
                lambda: _has_row(engine, org, second["id"]), what="the row written without Redis"
            )

            restarted = devstack.start_redis(tmp_path, int(own_redis.address.rsplit(":", 1)[1].split("/")[0]))
            try:
                await stream.read_until(lambda _: len(stream.notifications) >= 2, within=30)
                third = await create(client, me, due_at=soon(0.5))
                await stream.read_until(lambda _: len(stream.notifications) >= 3)
                await stream.read_past_heartbeat()
                await stream.read_past_heartbeat()
                assert task_ids(stream) == [first["id"], second["id"], third["id"]]
                assert len(set(stream.notification_ids)) == 3
            finally:
                restarted.stop()
    finally:
        await redis.aclose()
        await engine.dispose()


def _resources(app: Any) -> Resources:
    resources: Resources = app.extensions[EXTENSION_KEY]
    return resources


async def _has_row(engine: AsyncEngine, org: str, task_id: str) -> bool:
    async with tenant_transaction(make_sessionmaker(engine), org) as connection:
        count = await connection.scalar(
            select(func.count()).select_from(Notification).where(Notification.task_id == uuid.UUID(task_id))
        )
    return bool(count)


async def test_no_polling_with_streams_open_and_nothing_due(
    settings: Settings, temporal: Client, redis: Redis
) -> None:
    """With clients connected and nothing due, neither the web process nor the worker queries PostgreSQL."""
    own = settings.model_copy(update={"temporal_task_queue": f"idle-{uuid.uuid4().hex[:8]}"})
    worker_engine = make_engine(own, application_name="tickler-test-idle-worker")
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(worker_engine.sync_engine, "before_cursor_execute", count)
    headers = [bearer(own, str(user), new_org()) for user in range(20)]
    try:
        async with (
            run_worker(temporal, own, worker_engine, redis),
            serve_app(own) as (url, app),
            httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
        ):
            event.listen(_resources(app).engine.sync_engine, "before_cursor_execute", count)
            async with contextlib.AsyncExitStack() as stack:
                streams = [await stack.enter_async_context(open_stream(client, h)) for h in headers]
                for stream in streams:
                    await stream.read_past_heartbeat()
                connected = len(statements)
                # Three more heartbeats on every stream: seconds of idling, measured by the server's clock.
                for _ in range(3):
                    for stream in streams:
                        await stream.read_past_heartbeat()
                assert statements[connected:] == [], "an idle stream or worker sent queries"
                # Connecting costs one transaction: the tenant setting and the newest id.
                assert connected <= 2 * len(streams), "more than one transaction per connecting stream"
    finally:
        await worker_engine.dispose()


async def test_a_client_too_slow_is_cut_off_and_others_go_on(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    own = settings.model_copy(update={"sse_queue_size": 2})
    org = new_org()
    slow_user, fast_user = bearer(own, "slow", org), bearer(own, "fast", org)
    [row] = await insert_notifications(sessionmaker, org, "fast", 1)
    async with (
        serve_app(own) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
        open_stream(client, slow_user) as slow,
        open_stream(client, fast_user | {"Last-Event-ID": str(row - 1)}) as fast,
    ):
        await slow.read_past_heartbeat()
        await fast.read_past_heartbeat()
        # A burst of wake-ups for the slow user, faster than its stream can look them up.
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(500):
                message = NotificationEvent(
                    organization_id=org, user_id="slow", event="notification", id=2**62 + n, data={}
                )
                pipe.publish(own.redis_channel, Channel.of(own).encode(message))
            await pipe.execute()
        await _read_to_the_end(slow)
        # The fast user's stream is still live and receives its own event.
        await publish(
            redis,
            Channel.of(own),
            NotificationEvent(organization_id=org, user_id="fast", event="ping", data={"ok": True}),
        )
        await fast.read_until(lambda line: line == "event: ping")


async def _read_to_the_end(stream: StreamReader) -> None:
    with pytest.raises(StopAsyncIteration):
        await stream.read_until(lambda _: False)


async def test_a_client_that_stops_reading_is_cut_off_and_others_see_no_delay(
    settings: Settings, redis: Redis
) -> None:
    """Hypercorn has no write timeout: without ours, the stalled client's stream holds its slot and its
    connection for ever."""
    own = settings.model_copy(
        update={
            "sse_write_timeout_seconds": 2.0,
            # Never full here: the write timeout alone must end the stream.
            "sse_queue_size": 10_000,
            "redis_channel": f"stalled-{uuid.uuid4().hex[:8]}",
        }
    )
    org = new_org()
    async with (
        serve_app(own) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
        open_stream(client, bearer(own, "reader", org)) as reader,
        _stalled_client(url, bearer(own, "stalled", org)) as stalled,
    ):
        hub = _resources(app).hub
        await reader.read_past_heartbeat()
        await wait_until(lambda: hub.streams_of(org, "stalled") == 1, what="the stalled client's stream")
        # Twice what the server's socket may buffer, for a client that reads none.
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(2 * _largest_send_buffer() // 16_000):
                event = NotificationEvent(
                    organization_id=org, user_id="stalled", event="ping", data={"n": n, "pad": "x" * 16_000}
                )
                pipe.publish(own.redis_channel, Channel.of(own).encode(event))
            await pipe.execute()
        ping = NotificationEvent(organization_id=org, user_id="reader", event="ping", data={"ok": True})
        await publish(redis, Channel.of(own), ping)
        await reader.read_until(lambda line: line == "event: ping")
        # The other stream did not wait for the stalled one to be cut off.
        assert hub.streams_of(org, "stalled") == 1

        await wait_until(
            lambda: hub.streams_of(org, "stalled") == 0, what="the stalled stream cut off, its slot freed"
        )
        # Reset, not closed after the bytes it would not take: what it reads next fails.
        with pytest.raises(ConnectionResetError):
            await _read_to_the_end_of(stalled)
        await publish(redis, Channel.of(own), ping)
        await reader.read_until(lambda line: line == "event: ping")


@contextlib.asynccontextmanager
async def _stalled_client(url: str, headers: dict[str, str]) -> AsyncIterator[socket.socket]:
    """A raw connection that asks for the stream, then reads nothing."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Before connecting, so that the window the client offers is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        lines = [f"GET {STREAM} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        yield sock


def _largest_send_buffer() -> int:
    """What the kernel lets a socket's send buffer grow to (Linux; elsewhere its usual 4 MiB)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 << 20


async def _read_to_the_end_of(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(STREAM_DEADLINE):
        while await loop.sock_recv(sock, 1 << 16):
            pass


async def test_a_stream_opened_before_the_hub_first_subscribes_misses_nothing(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """The web process serves while its Redis is not there yet (it waits 10 s for it at start)."""
    port = devstack.free_port()
    own = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    org = new_org()
    async with (
        serve_app(own) as (url, app),
        httpx.AsyncClient(base_url=url, timeout=STREAM_DEADLINE) as client,
        open_stream(client, bearer(own, "7", org)) as stream,
    ):
        assert not _resources(app).hub.subscribed.is_set()
        await stream.read_past_heartbeat()
        # Committed before any web process listened: had its message been published, no stream got it.
        [missed] = await insert_notifications(sessionmaker, org, "7", 1)
        redis = devstack.start_redis(tmp_path, port)
        try:
            await stream.read_until(lambda line: line == f"id: {missed}")
            await stream.read_until(lambda line: line == "")
        finally:
            redis.stop()
        assert stream.notification_ids == [missed]
