"""Garbage collection in the long-lived processes, where it decides the latency tail.

A full collection stops the whole process while it walks every tracked object: in the worker that is
every cached workflow (~70 us each on the bench machine) and the evicted ones' garbage, in the web
process every open stream. While it runs nothing is committed, published or sent, so a reminder due then
arrives that much later (docs/performance.md, "Garbage collection"). Three things here:

- ``freeze_startup_heap`` moves what start-up built (modules, classes, the app) to the permanent
  generation, so that no later collection walks it again: ~55 ms off every full collection.
- ``GapCollector`` (the worker) runs the full collections itself, at a moment when no reminder is being
  delivered (``Deliveries``). A reminder's timer fires DELIVER_AHEAD before its instant, so a
  collection that starts when none is in hand and ends within that margin delays no reminder.
- ``SurvivorFreezer`` (the web process) freezes what each full collection keeps, so that the next one
  walks only what was made since, not every open stream again; every ``refresh_seconds`` it unfreezes
  everything and collects once, which frees the cycles of what died while frozen (closed streams).
- ``YoungClock`` (the web process) collects the young generations on a clock, since the renewal of a
  wait per stream grows them without moving CPython's counter.
- ``PauseWatch`` times every collection, feeds an optional histogram and logs the long ones, so that an
  operator (and the bench) can tell a collection from a slow database.

``collection_schedule`` puts them together for a process that has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

PauseRecorder = Callable[[int, float], None]
"""Called with (generation, seconds) after every collection."""


def freeze_startup_heap() -> int:
    """Collect, then exclude every surviving object from later collections; the number frozen.

    Only for what lives as long as the process: objects frozen are still freed when nothing refers to
    them, but a cycle among them is never collected.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcCallback:
    """A ``gc.callbacks`` entry that installs and uninstalls itself, once however often asked."""

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        raise NotImplementedError

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class PauseWatch(GcCallback):
    """Times garbage collections through ``gc.callbacks``; ``install`` / ``uninstall`` it."""

    def __init__(self, warn_after_seconds: float, record: PauseRecorder | None = None) -> None:
        self.warn_after_seconds = warn_after_seconds
        self.record = record
        self._began = 0.0
        self._began_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            self._began_cpu = time.thread_time()
            return
        seconds = time.perf_counter() - self._began
        generation: int = info["generation"]
        if self.record is not None:
            self.record(generation, seconds)
        if self.warn_after_seconds and seconds >= self.warn_after_seconds:
            # Wall time is what a waiting reminder sees; CPU time tells the collection's own work from
            # time spent waiting for a core (a loaded machine stretches a short pass).
            log.warning(
                "garbage collection of generation %d stopped the process for %.1f ms "
                "(%.1f ms of CPU, %d objects freed)",
                generation,
                seconds * 1000,
                (time.thread_time() - self._began_cpu) * 1000,
                info["collected"],
            )


class SurvivorFreezer(GcCallback):
    """Full collections that walk only what is new.

    A web process with 10,000 streams holds millions of tracked objects that live as long as their
    streams; CPython's full collection walks all of them about once a minute and frees almost none (2.3 s
    on the bench machine, docs/performance.md). Installed, each full collection ends with
    ``gc.freeze()``: its survivors move to the permanent generation, which no automatic collection
    walks. The price: a cycle among frozen objects is never collected, so every ``refresh_seconds``
    ``refresh`` unfreezes everything and collects once (one long pass per period instead of one a
    minute), which bounds what the closed streams' cycles can hold to what one period leaves.
    """

    def __init__(self, refresh_seconds: float) -> None:
        self.refresh_seconds = refresh_seconds
        self.freezes = 0
        self.refreshes = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
            self.freezes += 1

    def refresh(self) -> None:
        """Collect everything once, frozen or not; what survives is frozen again (by the callback)."""
        gc.unfreeze()
        gc.collect()
        self.refreshes += 1

    async def run(self) -> None:
        self.install()
        try:
            while True:
                await asyncio.sleep(self.refresh_seconds)
                self.refresh()
        finally:
            self.uninstall()


class Deliveries:
    """How many reminders this process is delivering: from the start of the wait for the instant to the
    publish. ``none`` is set while there are none."""

    def __init__(self) -> None:
        self._count = 0
        self.none = asyncio.Event()
        self.none.set()

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        self._count += 1
        self.none.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self.none.set()


class GapCollector:
    """Full collections on our schedule instead of CPython's, between deliveries.

    CPython collects generation 2 when the objects that survived into it since the last time reach a
    quarter of those it holds; here the same quarter is counted in allocated memory blocks
    (``sys.getallocatedblocks``, cheap to read) and checked every ``check_seconds``. The collection then
    waits for a moment when ``deliveries`` has none in hand, up to the heap having grown by
    ``forced_growth`` (a process that is never idle still collects); without ``deliveries`` (the web
    process, which cannot know when a message comes) it runs at once. While ``run`` runs, CPython's own
    full collections are off; the younger generations are collected as before.

    Counted in blocks, a heap that renews itself without growing is not collected: CPython counts every
    object that survives into generation 2, so with the SurvivorFreezer (whose freezes leave it a small
    generation 2 to take a quarter of) a web process whose streams renew their waits ran a full
    collection every few seconds, 20-30 ms each with 10,000 streams (docs/performance.md).
    """

    NEVER = 2**31 - 1  # gc.set_threshold's third number: generation-1 collections between full ones

    def __init__(
        self,
        deliveries: Deliveries | None = None,
        *,
        growth: float = 0.25,
        forced_growth: float = 1.0,
        check_seconds: float = 1.0,
        blocks: Callable[[], int] = sys.getallocatedblocks,
    ) -> None:
        self.deliveries = deliveries
        self.growth = growth
        self.forced_growth = forced_growth
        self.check_seconds = check_seconds
        self.blocks = blocks
        self.checks = 0
        self.collections = 0
        self.forced = 0
        self._baseline = 1

    async def run(self) -> None:
        automatic = gc.get_threshold()
        gc.set_threshold(automatic[0], automatic[1], self.NEVER)
        self._baseline = max(self.blocks(), 1)
        try:
            while True:
                await asyncio.sleep(self.check_seconds)
                self.checks += 1
                grown = self.blocks() / self._baseline - 1
                if grown < self.growth:
                    continue
                if self.deliveries is not None:
                    if grown < self.forced_growth:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.check_seconds):
                                await self.deliveries.none.wait()
                        if not self.deliveries.none.is_set():
                            continue  # still delivering: look at the growth again
                    else:
                        self.forced += 1
                self.collect()
        finally:
            gc.set_threshold(*automatic)

    def collect(self) -> None:
        gc.collect()
        self.collections += 1
        self._baseline = max(self.blocks(), 1)


class YoungClock:
    """Collects generation 0 every ``seconds`` (and 1 every ``older_every``-th time), whatever
    CPython's counter says.

    CPython 3.11 starts a young collection when allocations minus deallocations pass 700. Where new
    objects replace old ones one for one the counter does not move, yet every new one joins the young
    generation: a web process renews a wait per stream at every heartbeat (a future, its iterator, the
    task's wake-up: three objects) while the waits they replace die in an older generation. With 10,000
    streams the young generations grew unseen to 30,000-40,000 objects until some other allocation
    started a pass, which then walked them all: 9-20 ms, the fan-out's tail (docs/performance.md). On a
    clock each pass walks what a fraction of a second made (~0.2 ms). As CPython does, every
    ``older_every``-th pass takes generation 1 too, so that what lives a few passes (a slow request's
    objects) is still collected young, and only what outlives that reaches generation 2, walked no more
    until the heap has grown (``GapCollector``).
    """

    def __init__(self, seconds: float, older_every: int = 10) -> None:
        self.seconds = seconds
        self.older_every = older_every
        self.passes = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            self.passes += 1
            gc.collect(1 if self.passes % self.older_every == 0 else 0)


@contextlib.asynccontextmanager
async def collection_schedule(
    *,
    warn_after_seconds: float,
    record: PauseRecorder | None = None,
    between: Deliveries | None = None,
    full_on_growth: bool = False,
    young_every: float = 0,
    freeze: bool = True,
    freeze_survivors_for: float = 0,
) -> AsyncIterator[int]:
    """For a process that has started: freeze its start-up heap, time every collection, and with
    ``between`` run the full collections between its deliveries (with ``full_on_growth``, on the same
    growth rule but at once); with ``young_every`` > 0 collect the young generations that often
    (``YoungClock``); with ``freeze_survivors_for`` > 0, freeze what each full collection keeps,
    refreshed every that many seconds (``SurvivorFreezer``). Yields how many objects were frozen; on
    exit the tasks stop (CPython's schedule back) and the watch is removed."""
    frozen = freeze_startup_heap() if freeze else 0
    # First in gc.callbacks: a pass is timed before its survivors are frozen, not with the freezing.
    watch = PauseWatch(warn_after_seconds, record)
    watch.install()
    tasks = []
    if between is not None or full_on_growth:
        tasks.append(asyncio.create_task(GapCollector(between).run(), name="full collections"))
    if young_every > 0:
        tasks.append(asyncio.create_task(YoungClock(young_every).run(), name="young collections"))
    if freeze_survivors_for > 0:
        freezer = SurvivorFreezer(freeze_survivors_for)
        tasks.append(asyncio.create_task(freezer.run(), name="frozen survivors"))
    try:
        yield frozen
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watch.uninstall()
