"""Reminders armed ahead and delivered at their instant together (activities/wheel.py, decisions §29):
the wheel alone with a fake delivery, the batch on the real PostgreSQL and Redis, and the whole path."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from activities.tasks import TaskActivities
from activities.wheel import SPIN, WARM, Deliver, DeliveryWheel, wait_for
from core.db import tenant_transaction
from core.models import Notification
from core.payloads import STATE_QUERY, DeliverReminderInput, NotificationEvent, TaskState, delivery_grace
from core.pubsub import Channel
from core.settings import Settings
from tests.helpers import (
    STREAM_DEADLINE,
    bearer,
    new_org,
    open_stream,
    short_grace_task_id,
    start_task,
    task_row,
    task_state,
    wait_until,
)
from tickler.worker import build_worker, hand_back

# -- the wheel alone ----------------------------------------------------------------------------------


class FakeDelivery:
    """Records each batch and when it came; answers an id per reminder, or None for the keys in
    ``unwritten``, or raises while ``failing``."""

    def __init__(self) -> None:
        self.batches: list[tuple[datetime, list[DeliverReminderInput]]] = []
        self.unwritten: set[str] = set()
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, inputs: Sequence[DeliverReminderInput]) -> list[int | None]:
        self.batches.append((datetime.now(UTC), list(inputs)))
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise ConnectionError("the database is down")
        return [None if i.dedupe_key in self.unwritten else hash(i.dedupe_key) for i in inputs]


def reminder(instant: datetime, key: str | None = None, version: int = 1) -> DeliverReminderInput:
    return DeliverReminderInput(
        task_id=uuid.uuid4(),
        organization_id="org",
        dedupe_key=key or uuid.uuid4().hex,
        due_at=instant,
        not_before=instant,
        version=version,
        assignee_id="7",
    )


async def test_reminders_due_at_one_instant_go_in_one_batch_never_before_it() -> None:
    fake = FakeDelivery()
    wheel = DeliveryWheel(fake)
    instant = datetime.now(UTC) + timedelta(milliseconds=400)
    later = instant + timedelta(milliseconds=200)
    burst = [reminder(instant) for _ in range(200)]
    for r in [*burst, reminder(later)]:
        wheel.arm(r)
    assert len(wheel) == 201
    await wait_until(lambda: len(fake.batches) == 2, what="two batches")
    (first_at, first), (second_at, second) = fake.batches
    assert {r.dedupe_key for r in first} == {r.dedupe_key for r in burst}
    assert first_at >= instant
    assert second_at >= later
    assert len(second) == 1
    assert [await wheel.settled(r.dedupe_key) for r in burst[:3]] == [hash(r.dedupe_key) for r in burst[:3]]
    await wheel.aclose()


async def test_the_wait_for_an_instant_ends_at_it_and_keeps_the_loop_turning() -> None:
    """The loop's timers wake up to ~2 ms late, so the last SPIN before an instant is spent yielding
    to the loop: the wait never ends before the instant, and other work runs meanwhile (how much
    sooner it ends is the bench's to show, docs/performance.md)."""
    turns = 0
    done = asyncio.Event()

    async def other_work() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    worker = asyncio.create_task(other_work())
    for _ in range(20):
        instant = datetime.now(UTC) + SPIN / 2  # straight into the last stretch
        await wait_for(instant)
        assert datetime.now(UTC) >= instant
    done.set()
    await worker
    assert turns > 0, "the loop was held while the waits spun"
    # A sleep first when the instant is further away; never early either.
    instant = datetime.now(UTC) + timedelta(milliseconds=30)
    await wait_for(instant)
    assert datetime.now(UTC) >= instant


async def test_a_delivery_is_made_ready_before_its_instant_and_goes_cold_when_that_fails() -> None:
    """WARM before an instant the wheel makes its delivery ready (the activities check out a connection
    and wake both servers) and delivers through what that gave, at the instant; one that could not be
    made ready, or has no time left for it, is delivered all the same."""
    cold, warm = FakeDelivery(), FakeDelivery()
    entered: list[datetime] = []
    left: list[datetime] = []
    failing = False
    failing_on_exit = False

    @contextlib.asynccontextmanager
    async def ready() -> AsyncIterator[Deliver]:
        entered.append(datetime.now(UTC))
        if failing:
            raise ConnectionError("the database is down")
        yield warm
        left.append(datetime.now(UTC))
        if failing_on_exit:
            raise ConnectionError("the connection broke on its way back")

    wheel = DeliveryWheel(cold, ready=ready)
    instant = datetime.now(UTC) + timedelta(milliseconds=300)
    wheel.arm(reminder(instant))
    await wait_until(lambda: len(left) == 1, what="the batch delivered and its connection given back")
    assert instant - WARM <= entered[0] < instant
    assert [len(batch) for _, batch in warm.batches] == [1]
    assert instant <= warm.batches[0][0] <= left[0]
    assert cold.batches == []

    # Its connection not given back cleanly: the batch's outcome stands all the same.
    failing_on_exit = True
    soon = reminder(datetime.now(UTC) + timedelta(milliseconds=300))
    wheel.arm(soon)
    await wait_until(lambda: len(left) == 2, what="the second batch made ready and delivered")
    assert await wheel.settled(soon.dedupe_key) == hash(soon.dedupe_key)

    failing = True
    later = datetime.now(UTC) + timedelta(milliseconds=300)
    failed_ready = reminder(later)
    wheel.arm(failed_ready)
    await wait_until(lambda: len(cold.batches) == 1, what="the batch delivered cold")
    assert cold.batches[0][0] >= later
    assert len(entered) == 3
    assert await wheel.settled(failed_ready.dedupe_key) == hash(failed_ready.dedupe_key)

    # Armed after its instant (a worker that took it over late): delivered at once, not made ready.
    wheel.arm(reminder(datetime.now(UTC) - timedelta(seconds=1)))
    await wait_until(lambda: len(cold.batches) == 2, what="the late reminder delivered")
    assert len(entered) == 3
    await wheel.aclose()


async def test_armed_again_replaces_what_waits_and_settled_early_takes_it_back() -> None:
    fake = FakeDelivery()
    wheel = DeliveryWheel(fake)
    instant = datetime.now(UTC) + timedelta(milliseconds=300)
    wheel.arm(reminder(instant, "a", version=1))
    wheel.arm(reminder(instant, "a", version=2))  # a title edit in the lead window
    moved = instant + timedelta(milliseconds=100)
    wheel.arm(reminder(moved, "b", version=1))
    wheel.arm(reminder(moved + timedelta(hours=1), "b", version=2))  # moved an hour on
    wheel.arm(reminder(instant + timedelta(hours=1), "c"))
    # The workflow's own delivery asks before this clock reached the instant (clocks apart, or a
    # time-skipping server): the wheel lets it go, and will not deliver it.
    assert await wheel.settled("c") is None
    await wait_until(lambda: fake.batches, what="the batch")
    [(_, batch)] = fake.batches
    assert [(r.dedupe_key, r.version) for r in batch] == [("a", 2)]
    assert len(wheel) == 1  # b, an hour on
    await wheel.aclose()
    assert len(wheel) == 0


async def test_settled_waits_for_the_batch_in_flight_and_a_failure_leaves_it_to_the_workflow() -> None:
    fake = FakeDelivery()
    fake.gate = asyncio.Event()
    wheel = DeliveryWheel(fake)
    instant = datetime.now(UTC) + timedelta(milliseconds=50)
    wheel.arm(reminder(instant, "a"))
    wheel.arm(reminder(instant, "b"))
    wheel.arm(reminder(instant, "stale"))
    fake.unwritten.add("stale")
    await wait_until(lambda: fake.batches, what="the batch to start")
    waiting = asyncio.create_task(wheel.settled("a"))
    await asyncio.sleep(0)
    assert not waiting.done()
    fake.gate.set()
    assert await waiting == hash("a")
    assert await wheel.settled("stale") is None
    # Armed again once delivered (an edit just after the instant): nothing more to do.
    wheel.arm(reminder(instant, "b", version=2))
    assert len(wheel) == 0
    assert await wheel.settled("b") == hash("b")
    # Failed: the workflow's own delivery does it.
    fake.failing = True
    wheel.arm(reminder(datetime.now(UTC), "down"))
    await wait_until(lambda: len(fake.batches) == 2, what="the failing batch")
    assert await wheel.settled("down") is None
    await wheel.aclose()


async def test_a_failed_batch_is_tried_again_until_its_workflows_take_it_back() -> None:
    """The database away at the instant: the wheel tries again (0.5 s, doubling to 5 s) what no grace
    timer took back meanwhile, so a reminder comes once the database does, not at its grace."""
    fake = FakeDelivery()
    fake.failing = True
    wheel = DeliveryWheel(fake)
    instant = datetime.now(UTC)
    for key in ("a", "b", "c"):
        wheel.arm(reminder(instant, key))
    await wait_until(lambda: len(fake.batches) == 2, what="the first batch and one retry")
    assert len(wheel) == 3, "all three wait for the next try"
    # b's grace timer comes first: it takes b back and delivers it by itself.
    assert await wheel.settled("b") is None
    fake.failing = False
    await wait_until(lambda: len(fake.batches) == 3, what="the try after the database is back")
    retried_at, retried = fake.batches[2]
    assert [r.dedupe_key for r in retried] == ["a", "c"]
    assert retried_at - fake.batches[1][0] >= timedelta(seconds=0.9), "the second wait doubled"
    assert await wheel.settled("a") == hash("a")
    assert await wheel.settled("c") == hash("c")
    assert len(wheel) == 0
    await wheel.aclose()


# -- the batch on the real servers ---------------------------------------------------------------------


async def test_a_batch_writes_each_row_once_fenced_by_version_and_publishes_them_in_order(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    orgs = [new_org(), new_org()]
    tasks = [task_row(org=org, user=user) for org in orgs for user in ("7", "8", "9") for _ in range(3)]
    changed = task_row(org=orgs[0], user="7", version=2)  # armed at version 1, changed since
    closed = task_row(org=orgs[1], user="8", status="done")
    for org in orgs:
        async with tenant_transaction(sessionmaker, org) as session:
            session.add_all([t for t in [*tasks, changed, closed] if t.organization_id == org])
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings))

    def armed(task: Any) -> DeliverReminderInput:
        return DeliverReminderInput(
            task_id=task.id,
            organization_id=task.organization_id,
            dedupe_key=f"{task.id}/1/0",
            due_at=task.due_at,
            not_before=task.due_at,
            version=1,
            assignee_id=task.assignee_id,
        )

    inputs = [armed(t) for t in [*reversed(tasks), changed, closed]]
    async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
        await pubsub.subscribe(settings.redis_channel)
        # As the wheel delivers: made ready first, on the connection that gave; then without it.
        async with activities.ready_to_deliver() as deliver:
            ids = await deliver(inputs)
        again = await activities.deliver_batch(inputs[:2])
        published: list[NotificationEvent] = []
        async with asyncio.timeout(STREAM_DEADLINE):
            while len(published) < len(tasks) + 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    body = Channel.of(settings).verified_body(message["data"])
                    assert body is not None
                    event = NotificationEvent.model_validate_json(body)
                    if event.organization_id in orgs:
                        published.append(event)
    assert ids[-2:] == [None, None]  # stale, closed
    assert all(ids[: len(tasks)])
    assert again == ids[:2]
    rows: list[Notification] = []
    for org in orgs:
        async with tenant_transaction(sessionmaker, org) as session:
            rows += list(await session.scalars(select(Notification)))
    assert sorted(r.id for r in rows) == sorted(i for i in ids if i is not None)
    # One statement per chunk: one transaction, one now().
    assert len({r.created_at for r in rows}) == 1
    # Each user's events arrive in the order of their rows, each naming the one before (web/stream).
    first_time = published[: len(tasks)]
    for org in orgs:
        for user in ("7", "8", "9"):
            mine = [e for e in first_time if (e.organization_id, e.user_id) == (org, user)]
            assert [e.previous_id for e in mine] == [0, mine[0].id, mine[1].id]


# -- the whole path ---------------------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/tasks", json={"title": "Call Ana", **body}, headers=headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def notifications(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get("/v1/notifications", headers=headers)).json()["items"]
    return items


async def test_a_burst_arrives_at_its_instant_from_one_statement(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    org = new_org()
    users = [str(n) for n in range(5)]
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(client, bearer(settings, u, org))) for u in users
        ]
        for stream in streams:
            await stream.read_past_heartbeat()
        due = datetime.now(UTC) + timedelta(seconds=8)
        boss = bearer(settings, "boss", org)
        created = await asyncio.gather(
            *(create(client, boss, due_at=due.isoformat(), assignee_id=u) for u in users for _ in range(8))
        )
        assert datetime.now(UTC) < due, "the machine was too slow to create the burst ahead of its instant"
        for stream in streams:
            await stream.read_until(lambda _, s=stream: len(s.notifications) >= 8)  # type: ignore[misc]
    rows = [n for u in users for n in await notifications(client, bearer(settings, u, org))]
    assert sorted(r["task_id"] for r in rows) == sorted(t["id"] for t in created)
    written = {datetime.fromisoformat(r["created_at"]) for r in rows}
    assert min(written) >= due  # never early
    assert len(written) == 1  # one statement: the wheel, not forty workflow tasks


@pytest.mark.parametrize("lead", [1.0, 0.1, 0.01], ids=["1s", "100ms", "10ms"])
async def test_a_change_confirmed_before_the_instant_wins(
    client: httpx.AsyncClient, settings: Settings, lead: float
) -> None:
    """A title edit and a reschedule, each answered before the instant: the reminder carries the new
    title; the moved one does not fire at the old instant. An answer that comes after the instant (a
    loaded machine, at 10 ms) may lose, as the design allows, and then the test checks only that the
    reminder fired once."""
    org = new_org()
    me = bearer(settings, "7", org)
    due = datetime.now(UTC) + timedelta(seconds=3)
    edited = await create(client, me, due_at=due.isoformat())
    moved = await create(client, me, due_at=due.isoformat())
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - lead))
    edit, move = await asyncio.gather(
        client.patch(f"/v1/tasks/{edited['id']}", json={"title": "Call Ana at noon"}, headers=me),
        client.patch(
            f"/v1/tasks/{moved['id']}", json={"due_at": (due + timedelta(hours=1)).isoformat()}, headers=me
        ),
    )
    answered = datetime.now(UTC)
    assert edit.status_code == 200, edit.text
    assert move.status_code == 200, move.text
    # The moved one, had it fired, would be in the same statement as the edited one (one user).
    fired = await wait_until(
        lambda: notifications(client, me), within=STREAM_DEADLINE, what="the edited task's reminder"
    )
    by_task = {n["task_id"]: n for n in fired}
    assert edited["id"] in by_task
    if answered < due:
        assert by_task[edited["id"]]["title"] == "Call Ana at noon"
        assert moved["id"] not in by_task


async def test_a_worker_gone_in_the_lead_window_leaves_the_reminder_to_the_next_once(
    temporal: Client,
    settings: Settings,
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    """The worker that armed the reminder loses it (its wheel dropped, as a process that dies loses its
    memory) and stops; another worker on the queue runs the grace timer and delivers it, once, at most
    its grace (3 to 33 s) and a workflow task late."""
    own, state, first = await _armed_in_a_first_worker(temporal, settings, sessionmaker, redis, 4)
    await first.wheel.aclose()  # as a process that dies: what its wheel held is gone
    second = TaskActivities(sessionmaker, redis, Channel.of(own))
    async with build_worker(temporal, own, second):

        async def rows() -> list[Notification]:
            async with tenant_transaction(sessionmaker, state.organization_id) as session:
                return list(await session.scalars(select(Notification)))

        grace = delivery_grace(state.task_id)
        within = grace.total_seconds() + STREAM_DEADLINE + 10
        [row] = await wait_until(rows, within=within, what="the reminder from the second worker")
        assert row.created_at >= state.due_at + grace
        handle = temporal.get_workflow_handle(f"task-{state.task_id}")
        await wait_until(
            lambda: _done(handle), within=STREAM_DEADLINE, what="the workflow to record the delivery"
        )
        assert len(await rows()) == 1


async def test_a_worker_that_stops_hands_its_armed_reminders_to_the_next(
    temporal: Client,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    """A worker stopped gracefully (tickler/worker.py: polling ends, then ``hand_back``) gives each
    reminder armed in its wheel back to its workflow; the next worker on the queue arms it and delivers
    it at its instant, not at its grace timer (a deploy would otherwise make up to 33 s late every
    reminder due in the next ten minutes)."""
    own, state, first = await _armed_in_a_first_worker(temporal, settings, sessionmaker, redis, 12)
    assert await hand_back(temporal, first.wheel) == 1
    assert len(first.wheel) == 0
    await first.wheel.aclose()
    second = TaskActivities(sessionmaker, redis, Channel.of(own))
    async with build_worker(temporal, own, second):
        await wait_until(lambda: len(second.wheel) == 1, what="the reminder armed again in the second worker")

        async def rows() -> list[Notification]:
            async with tenant_transaction(sessionmaker, state.organization_id) as session:
                return list(await session.scalars(select(Notification)))

        [row] = await wait_until(rows, within=STREAM_DEADLINE + 12, what="the reminder")
        # Written by the second worker's wheel: the grace timer's delivery cannot write before its grace.
        assert state.due_at <= row.created_at < state.due_at + delivery_grace(state.task_id)
        handle = temporal.get_workflow_handle(f"task-{state.task_id}")
        await wait_until(
            lambda: _done(handle), within=STREAM_DEADLINE + 10, what="the workflow to record the delivery"
        )
        assert len(await rows()) == 1


async def test_a_hand_back_refused_or_out_of_time_leaves_the_reminders_to_their_grace(
    temporal: Client,
) -> None:
    """No workflow to signal (Temporal refuses), or no time left: nothing is handed back, the wheel is
    empty all the same (its reminders are their grace timers' now), and the stop is not held up."""
    wheel = DeliveryWheel(FakeDelivery())
    later = datetime.now(UTC) + timedelta(minutes=5)
    wheel.arm(reminder(later))
    assert await hand_back(temporal, wheel) == 0
    assert len(wheel) == 0
    for _ in range(3):
        wheel.arm(reminder(later))
    assert await hand_back(temporal, wheel, within=0.0) == 0
    assert len(wheel) == 0
    await wheel.aclose()


async def _armed_in_a_first_worker(
    temporal: Client,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    due_in: float,
) -> tuple[Settings, TaskState, TaskActivities]:
    """A task due in ``due_in`` s, armed in the wheel of a worker on a queue of its own, which has then
    stopped polling (its wheel still holds the reminder)."""
    queue = f"wheel-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"temporal_task_queue": queue})
    # Its grace timer ~4 s after the instant (3 to 33 s by task id), which the tests wait for.
    state = task_state(due_in=timedelta(seconds=due_in), task_id=short_grace_task_id())
    first = TaskActivities(sessionmaker, redis, Channel.of(own))
    async with build_worker(temporal, own, first):
        await start_task(temporal, state, queue)
        await wait_until(lambda: len(first.wheel) == 1, what="the reminder armed in the first worker")
    return own, state, first


async def _done(handle: Any) -> bool:
    state: TaskState = await handle.query(STATE_QUERY, result_type=TaskState)
    return bool(state.done_offsets)
