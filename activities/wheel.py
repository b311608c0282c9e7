"""The delivery wheel: reminders armed ahead of their instant, delivered at it together, in the worker.

A task workflow of version 3 arms each reminder here ARM_LEAD before its instant (the ``arm_reminder``
local activity returns at once), then sleeps until DELIVERY_GRACE after it. The wheel keeps one timer
per distinct instant, not per reminder: when the worker's wall clock reads the instant (never before: a
sleep that ends early is slept again), every reminder armed for it is handed to one ``deliver`` call,
which writes them in a few statements and publishes them in one pipeline. No workflow task is open
meanwhile, so no caller waits for the instant, and a burst pays no wake-ups at its instant. WARM before
it, the delivery is made ready (``ready``: a connection in hand, PostgreSQL and Redis woken by a round
trip each), so that at the instant only the statement and the publication are left.

The workflow's own delivery, at its grace timer, asks :meth:`DeliveryWheel.settled` first: usually it
finds the wheel's delivery done and returns its notification id; it delivers by itself when this
process never armed the reminder (another worker did and died, or this one restarted), or when the
wheel's delivery did not write it (failed, fenced, closed). A batch that failed is tried again, with
back-off, until every one of its reminders is delivered or taken back by its grace timer. Memory only:
nothing here must survive a restart, the durable timer is the guarantee (docs/decisions.md §29). A
worker that stops gracefully gives what it holds back to the workflows (:meth:`DeliveryWheel.release`,
tickler/worker.py), which arm it again elsewhere; one that dies leaves it to their grace timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.gcwatch import Deliveries
from core.payloads import DELIVER_AHEAD, DeliverReminderInput

log = logging.getLogger(__name__)

# What a batch delivery answers for each reminder: the notification id it wrote or found and published,
# or None when it wrote nothing the workflow can count on (stale, closed, missing: the workflow's own
# delivery looks again and decides).
Deliver = Callable[[Sequence[DeliverReminderInput]], Awaitable[Sequence[int | None]]]
# A delivery made ready ahead of its instant, and what delivers then (the batch's activities hold a
# connection and have woken both servers).
Ready = Callable[[], contextlib.AbstractAsyncContextManager[Deliver]]

# How long a delivered reminder's outcome is kept for its workflow's grace timer to find.
RETAIN = timedelta(minutes=10)
# A batch that failed (the database away, a statement timed out behind a lock) is tried again after
# RETRY_FIRST, doubling to RETRY_MAX, for what its workflows have not taken back meanwhile (each
# grace timer asks settled() and then delivers by itself); RETRY_FOR after the instant, past every
# grace, the wheel lets the rest go. Without it a reminder due during an outage waited for its grace,
# up to 33 s, after the database was back (docs/reliability.md, 2026-12-01).
RETRY_FIRST = timedelta(seconds=0.5)
RETRY_MAX = timedelta(seconds=5)
RETRY_FOR = timedelta(minutes=2)
# The last stretch before an instant, spent yielding to the loop rather than asleep (wait_for): a
# sleep that ends ~0.5 ms late leaves ~0.5 ms of spinning per distinct instant, ~1 % of a core at 1,000
# instants a minute, nothing when none is near.
SPIN = timedelta(milliseconds=1)
# How long before an instant its delivery is made ready. A process that has slept for tens of
# milliseconds answers its first round trip 0.2-0.4 ms slower than one that ran a millisecond ago (its
# core idle, its caches cold: PostgreSQL's backend, Redis): on this machine's bench, spread over 60 s,
# reminders arrived 0.7-0.9 ms sooner at the median with it (docs/decisions.md §37). Long enough for a
# cold round trip to each, short enough that both are still awake at the instant.
WARM = timedelta(milliseconds=2)


@dataclass(eq=False)
class Armed:
    input: DeliverReminderInput
    done: asyncio.Future[int | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Taken by a batch: no longer replaced in place.
    taken: bool = False


class DeliveryWheel:
    def __init__(
        self,
        deliver: Deliver,
        deliveries: Deliveries | None = None,
        *,
        ready: Ready | None = None,
        ahead: timedelta = DELIVER_AHEAD,
        retain: timedelta = RETAIN,
    ) -> None:
        self._deliver = deliver
        # Entered WARM before an instant when there is time; a failure there leaves ``deliver``.
        self._ready = ready
        # The process's garbage collector waits while a delivery is in hand (core/gcwatch.py): from
        # ``ahead`` before the instant to the end of the batch.
        self._deliveries = deliveries or Deliveries()
        self._ahead = ahead
        self._retain = retain
        # The latest armed entry of each dedupe key, waiting, in flight or done.
        self._armed: dict[str, Armed] = {}
        # What waits for each instant, and its one timer.
        self._waiting: dict[datetime, dict[str, Armed]] = {}
        self._timers: dict[datetime, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._finished: deque[tuple[float, str, Armed]] = deque()

    def __len__(self) -> int:
        """Reminders waiting for their instant."""
        return sum(len(bucket) for bucket in self._waiting.values())

    def arm(self, input: DeliverReminderInput) -> None:
        """Deliver ``input`` at ``input.not_before`` (at once if that has passed). Armed again with the
        same dedupe key, the newer input replaces a waiting one; one delivered already stays delivered."""
        key = input.dedupe_key
        current = self._armed.get(key)
        if current is not None and not current.taken:
            self._unwait(current)
        elif current is not None and current.done.done() and current.done.result() is not None:
            return
        armed = Armed(input)
        self._armed[key] = armed
        instant = input.not_before
        bucket = self._waiting.get(instant)
        if bucket is None:
            bucket = self._waiting[instant] = {}
            loop = asyncio.get_running_loop()
            wake = (instant - self._ahead - datetime.now(UTC)).total_seconds()
            self._timers[instant] = loop.call_at(loop.time() + wake, self._start, instant)
        bucket[key] = armed

    async def settled(self, dedupe_key: str) -> int | None:
        """The notification id this wheel delivered for ``dedupe_key``, waiting for a batch in flight;
        None when it did not deliver it (never armed here, not due yet by this clock, or not written).
        The caller is the workflow's delivery, which then delivers by itself: the entry is dropped."""
        armed = self._armed.pop(dedupe_key, None)
        if armed is None:
            return None
        if not armed.taken:
            self._unwait(armed)
            return None
        return await asyncio.shield(armed.done)

    def release(self) -> list[DeliverReminderInput]:
        """Drop every reminder armed here and not taken by a batch yet, and return them: a worker that
        stops gives them back to their workflows, which arm them on the worker that runs them next."""
        released = [armed.input for armed in self._armed.values() if not armed.taken]
        for input in released:
            self._unwait(self._armed.pop(input.dedupe_key))
        return released

    async def aclose(self) -> None:
        """Stop arming timers and let the batches in flight end (a worker shutting down)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- inside --------------------------------------------------------------------------------------

    def _unwait(self, armed: Armed) -> None:
        instant = armed.input.not_before
        bucket = self._waiting.get(instant)
        if bucket is not None and bucket.get(armed.input.dedupe_key) is armed:
            del bucket[armed.input.dedupe_key]
            if not bucket:
                del self._waiting[instant]
                timer = self._timers.pop(instant, None)
                if timer is not None:
                    timer.cancel()

    def _start(self, instant: datetime, retry: timedelta = RETRY_FIRST) -> None:
        self._timers.pop(instant, None)
        task = asyncio.get_running_loop().create_task(self._run(instant, retry))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, instant: datetime, retry: timedelta) -> None:
        with self._deliveries.delivering():
            batch, outcomes, failed = await self._deliver_at(instant)
        now = asyncio.get_running_loop().time()
        for armed, outcome in zip(batch, outcomes, strict=True):
            # A grace timer waiting in settled() gets None and delivers by itself.
            if not armed.done.done():
                armed.done.set_result(outcome)
            self._finished.append((now, armed.input.dedupe_key, armed))
        if failed:
            self._again(instant, batch, retry)
        self._forget(now)

    async def _deliver_at(self, instant: datetime) -> tuple[list[Armed], Sequence[int | None], bool]:
        """What waited for ``instant``, taken at it and delivered: the batch, each one's outcome, and
        whether the delivery failed. Never raises: every armed entry taken gets its outcome."""
        stack = contextlib.AsyncExitStack()
        try:
            deliver = await self._made_ready(instant, stack)
            await wait_for(instant)
            batch = list(self._waiting.pop(instant, {}).values())
            for armed in batch:
                armed.taken = True
            if not batch:
                return [], [], False
            try:
                return batch, await deliver([a.input for a in batch]), False
            except Exception:
                log.exception("%d reminders due at %s not delivered by the wheel", len(batch), instant)
                return batch, [None] * len(batch), True
        finally:
            try:
                await stack.aclose()
            except Exception:
                log.exception("the connection of the delivery due at %s was not given back cleanly", instant)

    async def _made_ready(self, instant: datetime, stack: contextlib.AsyncExitStack) -> Deliver:
        """At WARM before ``instant``, the delivery made ready (in ``stack``, left at the batch's end); the
        plain one when there is no time for it (a retry, a timer that fired late) or it failed."""
        if self._ready is None or datetime.now(UTC) >= instant - WARM:
            return self._deliver
        # Asleep, not wait_for: waking a little late only shortens WARM, and the spin is the instant's,
        # not the warm-up's (a millisecond of a core per instant, not two).
        while (early := (instant - WARM - datetime.now(UTC)).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(early)
        try:
            return await stack.enter_async_context(self._ready())
        except Exception as exc:
            # The plain delivery meets the same trouble, if it lasts, and says so.
            log.warning("the delivery due at %s was not made ready (%r): it goes cold", instant, exc)
            return self._deliver

    def _again(self, instant: datetime, batch: list[Armed], retry: timedelta) -> None:
        """Wait ``retry``, then try again what no workflow took back and nothing armed anew: each as
        a fresh entry, so that a grace timer asking meanwhile takes it back at once."""
        if datetime.now(UTC) - instant > RETRY_FOR:
            return
        again = [armed for armed in batch if self._armed.get(armed.input.dedupe_key) is armed]
        if not again:
            return
        bucket = self._waiting.setdefault(instant, {})
        for armed in again:
            fresh = self._armed[armed.input.dedupe_key] = Armed(armed.input)
            bucket[armed.input.dedupe_key] = fresh
        if instant not in self._timers:
            loop = asyncio.get_running_loop()
            following = min(retry * 2, RETRY_MAX)
            self._timers[instant] = loop.call_later(retry.total_seconds(), self._start, instant, following)
        log.warning(
            "the wheel tries %d reminders due at %s again in %.1f s",
            len(again),
            instant,
            retry.total_seconds(),
        )

    def _forget(self, now: float) -> None:
        """Drop what was delivered longer than ``retain`` ago and never asked for (its workflow moved to
        another worker, or the reminder was fenced by a change)."""
        horizon = now - self._retain.total_seconds()
        while self._finished and self._finished[0][0] < horizon:
            _, key, armed = self._finished.popleft()
            if self._armed.get(key) is armed:
                del self._armed[key]


async def wait_for(instant: datetime, at_most: timedelta | None = None) -> None:
    """Sleep until the wall clock reads ``instant``, for at most ``at_most`` when given, whatever the
    clock says.

    The event loop's timers wake late: uvloop's by 0.4-0.7 ms at the median, up to ~2 ms (whole
    milliseconds, rounded up), asyncio's by ~0.5-1.5 ms. So the sleep ends SPIN before the instant and
    the last stretch yields to the loop until the clock reads it: other callbacks still run, and the
    delivery starts within a loop turn of the instant, never before it."""
    now = datetime.now(UTC)
    deadline = now + at_most if at_most is not None else instant
    end = min(instant, deadline)
    while (now := datetime.now(UTC)) < end - SPIN:  # noqa: ASYNC110 (a clock, not an event)
        await asyncio.sleep((end - SPIN - now).total_seconds())
    while datetime.now(UTC) < end:  # noqa: ASYNC110
        await asyncio.sleep(0)
