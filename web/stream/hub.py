"""One Redis subscription per web process, fanned out in-process to that process's open streams.

Each stream has a bounded queue. A stream that falls behind is closed (its client reconnects and
replays from PostgreSQL) rather than growing the server's memory. When the subscription drops, the hub
resubscribes by itself; each time it subscribes, the first time included, it tells every open stream to
replay what it may have missed. A message that does not carry the channel key's signature (one that
anyone able to publish on Redis made up) reaches no stream (core/pubsub.py).

Heartbeats and session ends come from the hub too, so that a waiting stream holds one object (its
queue's getter) rather than a timeout, a timer handle and a future renewed every heartbeat: with
10,000 streams those were 10,000 young objects living up to a heartbeat each, which CPython's
collector walks again and again (docs/performance.md). One clock task visits the streams in groups, a
group every TICK_SECONDS, each stream twice per heartbeat interval; a stream that sent nothing since
the visit before gets a heartbeat, so none stays silent longer than TICKLER_SSE_HEARTBEAT_SECONDS
(and VISIT_GROUPS ticks). A session's end is one timer per stream, set once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from core.metrics import DROP_REASONS, WebMetrics
from core.payloads import NotificationEvent
from core.pubsub import Channel

log = logging.getLogger(__name__)

RESUBSCRIBE_BACKOFF_MAX = 5.0
# How often the heartbeat clock visits its next group of streams. Every heartbeat a visit sends is
# ~40 us of the loop (the stream's wake-up, Quart, Hypercorn), and a notification that comes meanwhile
# waits behind them all: with 10,000 streams in 16 groups each visit held the loop ~20 ms every 0.47 s,
# the fan-out's tail (docs/performance.md). Groups of a 25 ms tick hold it ~1.5 ms.
TICK_SECONDS = 0.025
# Small groups are visited together, up to VISIT_STREAMS streams or VISIT_GROUPS groups a wake-up, so
# that few streams do not wake the loop 40 times a second: 1,000 streams or none make 5 wake-ups a
# second, 10,000 make 40 of ~33 streams each. A group is visited at most VISIT_GROUPS - 1 ticks early
# (0.175 s), so a stream stays silent at most that much longer than the heartbeat interval.
VISIT_STREAMS = 32
VISIT_GROUPS = 8
SUBSCRIBE_TIMEOUT = 10.0
# Dropped messages are counted one by one, logged at most this often: whoever can flood the channel with
# forged messages must not flood every web process's log too.
DROP_LOG_SECONDS = 60.0


class Control(enum.Enum):
    # The hub has (re)subscribed: replay from PostgreSQL what may have been published before.
    RESYNC = "resync"
    # End the stream: the server shuts down or the client fell too far behind.
    CLOSE = "close"
    # Send a heartbeat: the stream has sent nothing for a while.
    HEARTBEAT = "heartbeat"
    # The token behind the stream has expired: end it with `event: session.expired`.
    EXPIRED = "expired"


StreamItem = NotificationEvent | Control
Audience = tuple[str, str]  # (organization_id, user_id)


class Subscription:
    """One stream's place in the hub: its queue, and, while the stream waits on an empty queue, its
    consumer, which takes each item at once instead (web/stream/service.py ``EventStream``)."""

    def __init__(
        self, audience: Audience, maxsize: int, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.audience = audience
        self.queue: asyncio.Queue[StreamItem] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.on_overflow = on_overflow
        # Set by the stream whenever it sends something; the heartbeat clock clears it at each visit. A new
        # stream has just sent its headers and `retry:`: its first heartbeat comes after the second visit,
        # half an interval to an interval after it opened.
        self.sent = True
        self.slot = 0
        self.expiry: asyncio.TimerHandle | None = None
        # True if it took the item (its stream was waiting for one); else the item is queued.
        self.consumer: Callable[[StreamItem], bool] | None = None

    def _put(self, item: StreamItem) -> None:
        if self.consumer is not None and self.queue.empty() and self.consumer(item):
            return
        self.queue.put_nowait(item)

    def offer(self, item: StreamItem) -> None:
        try:
            self._put(item)
        except asyncio.QueueFull:
            if not self.overflowed and self.on_overflow is not None:
                self.on_overflow()
            self.overflowed = True
            self.close()

    def close(self) -> None:
        # Drop what is queued: the client replays it after reconnecting.
        while not self.queue.empty():
            self.queue.get_nowait()
        self._put(Control.CLOSE)

    def visit(self) -> None:
        """The heartbeat clock's visit: a heartbeat if nothing was sent since the last one."""
        if self.sent:
            self.sent = False
        elif self.queue.empty():
            # Counted as sent: the next visit, half an interval on, clears it; the one after sends again.
            self.sent = True
            self._put(Control.HEARTBEAT)


class StreamHub:
    def __init__(
        self,
        redis: Redis,
        channel: Channel,
        queue_size: int,
        metrics: WebMetrics | None = None,
        *,
        heartbeat_seconds: float = 15.0,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.queue_size = queue_size
        self.heartbeat_seconds = heartbeat_seconds
        self.metrics = metrics or WebMetrics()
        self._cut_off = self.metrics.streams_cut_off.labels("overflow").inc
        self._dropped = {reason: self.metrics.messages_dropped.labels(reason) for reason in DROP_REASONS}
        self._drops_unlogged = dict.fromkeys(DROP_REASONS, 0)
        self._drop_logged_at = -math.inf
        self.subscriptions: defaultdict[Audience, set[Subscription]] = defaultdict(set)
        # Each stream in one group, the groups visited in turn, one per tick: all twice per interval.
        groups = max(1, round(heartbeat_seconds / 2 / TICK_SECONDS))
        self._slots: list[set[Subscription]] = [set() for _ in range(groups)]
        self._next_slot = 0
        self.subscribed = asyncio.Event()
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._clock: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, *, wait_seconds: float = 10.0) -> None:
        self._task = asyncio.create_task(self._supervise(), name="stream-hub")
        self._clock = asyncio.create_task(self._heartbeats(), name="stream-hub-heartbeats")
        try:
            await asyncio.wait_for(self.subscribed.wait(), wait_seconds)
        except TimeoutError:
            log.warning("stream hub not subscribed to Redis yet; streams will replay once it is")

    async def stop(self) -> None:
        self.close_all()
        for task in (self._task, self._clock):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.metrics.hub_subscribed.set(0)

    def close_all(self) -> None:
        """End every stream, e.g. at shutdown, so that clients reconnect to another process."""
        self.closing = True
        for subs in self.subscriptions.values():
            for sub in subs:
                sub.close()

    # -- streams ---------------------------------------------------------------------------------------

    def subscribe(
        self, organization_id: str, user_id: str, *, expires_in: float | None = None
    ) -> Subscription:
        """A stream's subscription; ``expires_in`` seconds on, it receives Control.EXPIRED."""
        sub = Subscription((organization_id, user_id), self.queue_size, self._cut_off)
        if self.closing:
            sub.close()
        self.subscriptions[sub.audience].add(sub)
        sub.slot, self._next_slot = self._next_slot, (self._next_slot + 1) % len(self._slots)
        self._slots[sub.slot].add(sub)
        if expires_in is not None:
            sub.expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires_in), sub.offer, Control.EXPIRED
            )
        self.metrics.streams_open.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscriptions.get(sub.audience)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._slots[sub.slot].discard(sub)
            if sub.expiry is not None:
                sub.expiry.cancel()
            self.metrics.streams_open.dec()
            if not subs:
                del self.subscriptions[sub.audience]

    def streams_of(self, organization_id: str, user_id: str) -> int:
        return len(self.subscriptions.get((organization_id, user_id), ()))

    @property
    def stream_count(self) -> int:
        return sum(len(subs) for subs in self.subscriptions.values())

    def dispatch(self, raw: bytes | str) -> None:
        body = self.channel.verified_body(raw)
        if body is None:
            self._drop("signature")
            return
        try:
            event = NotificationEvent.model_validate_json(body)
        except ValidationError:
            self._drop("malformed")
            return
        for sub in tuple(self.subscriptions.get((event.organization_id, event.user_id), ())):
            sub.offer(event)

    def _drop(self, reason: str) -> None:
        self._dropped[reason].inc()
        self._drops_unlogged[reason] += 1
        now = time.monotonic()
        if now - self._drop_logged_at < DROP_LOG_SECONDS:
            return
        self._drop_logged_at = now
        counts = ", ".join(f"{n} {why}" for why, n in self._drops_unlogged.items() if n)
        log.warning("dropped messages on %s (no valid signature or malformed): %s", self.channel.name, counts)
        self._drops_unlogged = dict.fromkeys(DROP_REASONS, 0)

    # -- the heartbeat clock ---------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Visit the slots in turn, a tick's worth each, every slot twice per heartbeat interval, on a
        fixed schedule; small slots in runs (VISIT_STREAMS, VISIT_GROUPS)."""
        loop = asyncio.get_running_loop()
        slots = self._slots
        tick = self.heartbeat_seconds / 2 / len(slots)
        most = min(VISIT_GROUPS, len(slots))
        due = loop.time()
        index = 0
        while True:
            visited = groups = 0
            while visited < VISIT_STREAMS and groups < most:
                for sub in slots[index]:  # visit() never adds nor removes a subscription
                    sub.visit()
                visited += len(slots[index])
                index = (index + 1) % len(slots)
                groups += 1
            due += tick * groups
            await asyncio.sleep(max(0.0, due - loop.time()))
            # Behind by more than a whole turn (a stalled loop): start afresh rather than rush to catch up.
            if loop.time() - due > self.heartbeat_seconds:
                due = loop.time()

    # -- the subscription ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = 0.1
        first = True
        while True:
            try:
                # Subscribe confirmations are read here, not dropped: see _subscribe.
                async with self.redis.pubsub() as pubsub:
                    await self._subscribe(pubsub)
                    self.subscribed.set()
                    self.metrics.hub_subscribed.set(1)
                    if not first:
                        self.metrics.hub_resubscriptions.inc()
                    first = False
                    # Nothing published before this moment reached a stream: not at the first subscription
                    # (streams may have opened while Redis was not there yet), nor after a loss. Every
                    # stream replays from PostgreSQL; from now on, what is published arrives live.
                    log.info(
                        "subscribed to %s; open streams replay what they may have missed", self.channel.name
                    )
                    for subs in self.subscriptions.values():
                        for sub in subs:
                            sub.offer(Control.RESYNC)
                    backoff = 0.1
                    await self._listen(pubsub)
            except (RedisError, OSError) as exc:  # OSError includes the TimeoutError of _subscribe
                self.subscribed.clear()
                self.metrics.hub_subscribed.set(0)
                log.warning("Redis subscription lost (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RESUBSCRIBE_BACKOFF_MAX)

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Subscribe, and return once Redis has confirmed it: ``subscribe()`` only sends the command, and a
        replay that ran before Redis acted on it could miss a message published in between."""
        await pubsub.subscribe(self.channel.name)
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    return

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            # get_message with a timeout also sends the health-check PING on an idle connection,
            # so a dead connection raises instead of waiting forever (redis/redis-py#2089).
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                self.dispatch(message["data"])
