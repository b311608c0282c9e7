"""Garbage-collection pauses are timed and the start-up heap is frozen out of later collections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from core.gcwatch import (
    Deliveries,
    GapCollector,
    PauseWatch,
    SurvivorFreezer,
    YoungClock,
    collection_schedule,
    freeze_startup_heap,
)
from tests.helpers import wait_until


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_every_collection_is_timed_and_long_ones_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    pauses: list[tuple[int, float]] = []
    watch = PauseWatch(
        warn_after_seconds=1e-9, record=lambda generation, seconds: pauses.append((generation, seconds))
    )
    watch.install()
    watch.install()  # twice is once
    try:
        Cycle()
        with caplog.at_level(logging.WARNING, logger="core.gcwatch"):
            gc.collect()
    finally:
        watch.uninstall()
    full = [seconds for generation, seconds in pauses if generation == 2]
    assert len(full) == 1  # the same watch installed twice still records once
    assert full[0] > 0
    assert "garbage collection of generation 2 stopped the process for" in caplog.text
    assert "ms of CPU" in caplog.text  # its own work, told from time spent waiting for a core
    assert watch not in gc.callbacks
    recorded = len(pauses)
    gc.collect()
    assert len(pauses) == recorded  # uninstalled: no more records


def test_short_collections_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    watch = PauseWatch(warn_after_seconds=60)
    watch.install()
    try:
        with caplog.at_level(logging.WARNING, logger="core.gcwatch"):
            gc.collect()
    finally:
        watch.uninstall()
    assert "garbage collection" not in caplog.text


def test_freezing_takes_the_start_up_heap_out_of_collections(unfreeze: None) -> None:
    tracked = len(gc.get_objects())
    frozen = freeze_startup_heap()
    # Frozen objects that die leave the count (other threads of the session run meanwhile): never more.
    assert frozen >= gc.get_freeze_count() >= tracked // 2
    assert len(gc.get_objects()) < tracked - frozen // 2  # a full collection no longer walks them


def garbage_in_the_oldest_generation() -> weakref.ref[Cycle]:
    """A cycle that only a full collection frees: promoted while alive, then dropped."""
    cycle = Cycle()
    gc.collect(1)
    gc.collect(1)
    ref = weakref.ref(cycle)
    del cycle
    gc.collect(1)
    assert ref() is not None
    return ref


async def test_full_collections_wait_until_no_reminder_is_in_hand() -> None:
    heap = [100_000]  # allocated blocks, as the collector reads them
    deliveries = Deliveries()
    collector = GapCollector(deliveries, check_seconds=0.01, blocks=lambda: heap[0])
    automatic = gc.get_threshold()
    running = asyncio.create_task(collector.run())
    try:
        await wait_until(lambda: collector.checks, what="the collector's first look")
        assert gc.get_threshold() == (automatic[0], automatic[1], GapCollector.NEVER)

        with deliveries.delivering():
            garbage = garbage_in_the_oldest_generation()
            heap[0] = 130_000  # grown by 30 %: a full collection is due
            seen = collector.checks
            await wait_until(lambda: collector.checks >= seen + 5, what="five more looks")
            assert collector.collections == 0  # not while a reminder is in hand
            assert garbage() is not None
        await wait_until(lambda: collector.collections, what="a collection once the delivery is over")
        assert garbage() is None
        assert collector.forced == 0

        with deliveries.delivering():
            heap[0] = 270_000  # more than doubled since: collect even while delivering
            await wait_until(lambda: collector.forced, what="a forced collection")
        assert collector.collections == 2
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert gc.get_threshold() == automatic


async def test_a_modest_growth_is_left_alone() -> None:
    heap = [100_000]
    collector = GapCollector(Deliveries(), check_seconds=0.01, blocks=lambda: heap[0])
    running = asyncio.create_task(collector.run())
    try:
        heap[0] = 120_000
        await wait_until(lambda: collector.checks >= 5, what="five looks")
        assert collector.collections == 0
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_without_deliveries_a_grown_heap_is_collected_at_once() -> None:
    """The web process's full collections: on the growth rule, with nothing to wait for."""
    heap = [100_000]
    collector = GapCollector(check_seconds=0.01, blocks=lambda: heap[0])
    running = asyncio.create_task(collector.run())
    try:
        await wait_until(lambda: collector.checks, what="the collector's first look")
        garbage = garbage_in_the_oldest_generation()
        heap[0] = 126_000
        await wait_until(lambda: collector.collections, what="a collection")
        assert garbage() is None
        assert collector.forced == 0
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_young_clock_collects_what_the_counter_never_sees() -> None:
    """Objects that replace old ones one for one leave CPython's counter where it was: without the
    clock a young cycle waits for an unrelated pass; with it, it goes within a tick, and no pass of the
    clock's walks the oldest generation."""
    passes: list[int] = []
    watch = PauseWatch(warn_after_seconds=0, record=lambda generation, _: passes.append(generation))
    clock = YoungClock(seconds=0.01)
    gc.disable()  # no automatic pass at all: only the clock's
    watch.install()
    running = asyncio.create_task(clock.run())
    try:
        cycle = Cycle()
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None  # a cycle: reference counting alone never frees it
        await wait_until(lambda: gone() is None, what="the young cycle collected by the clock")
        await wait_until(lambda: clock.passes >= 12, what="twelve ticks")
        assert 2 not in passes, "the clock's passes are young ones"
        assert passes.count(1) >= 1, "every tenth takes generation 1 too"
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        watch.uninstall()
        gc.enable()


def test_deliveries_count_nested_and_failed_ones() -> None:
    deliveries = Deliveries()
    with deliveries.delivering():
        with contextlib.suppress(RuntimeError), deliveries.delivering():
            raise RuntimeError("a delivery failed")
        assert not deliveries.none.is_set()
    assert deliveries.none.is_set()


async def test_a_process_schedule_is_undone_on_exit(unfreeze: None) -> None:
    """What the worker (with deliveries) and the web process (without) wrap their serving in."""
    automatic, callbacks = gc.get_threshold(), list(gc.callbacks)
    async with collection_schedule(warn_after_seconds=60, between=Deliveries()) as frozen:
        assert frozen > 0
        assert gc.get_freeze_count() > 0
        assert len(gc.callbacks) == len(callbacks) + 1
        await wait_until(
            lambda: gc.get_threshold()[2] == GapCollector.NEVER, what="CPython's full collections off"
        )
    assert gc.get_threshold() == automatic
    assert gc.callbacks == callbacks
    async with collection_schedule(warn_after_seconds=60, freeze=False) as frozen:
        assert frozen == 0
        assert gc.get_threshold() == automatic  # no deliveries: CPython's schedule
    # The web process's: full collections on growth alone, young ones on a clock.
    async with collection_schedule(
        warn_after_seconds=60, freeze=False, full_on_growth=True, young_every=0.01
    ):
        await wait_until(
            lambda: gc.get_threshold()[2] == GapCollector.NEVER, what="CPython's full collections off"
        )
        cycle = Cycle()
        gone = weakref.ref(cycle)
        del cycle
        await wait_until(lambda: gone() is None, what="a young collection by the clock")
    assert gc.get_threshold() == automatic


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_full_collection_freezes_its_survivors_until_the_refresh(unfreeze: None) -> None:
    """What survives a full collection is walked no more; a cycle that dies frozen waits for the refresh,
    which frees it: the leak is bounded by the refresh period, not unbounded."""
    freezer = SurvivorFreezer(refresh_seconds=3600)
    freezer.install()
    try:
        # Two objects in a cycle, alive at a full collection: frozen with everything else.
        first, second = Node(), Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        gc.collect()
        assert freezer.freezes >= 1
        assert gc.get_freeze_count() > 0
        # They die as a cycle: reference counting cannot free them, and no collection walks them.
        del first, second
        gc.collect()
        assert gone() is not None
        # A cycle made after the freeze is young: collected as usual.
        fresh = Node()
        fresh.other = fresh
        fresh_gone = weakref.ref(fresh)
        del fresh
        gc.collect()
        assert fresh_gone() is None
        freezer.refresh()
        assert gone() is None, "the refresh collects what died frozen"
        assert freezer.refreshes == 1
        assert gc.get_freeze_count() > 0, "and freezes the survivors again"
    finally:
        freezer.uninstall()
    assert freezer.freezes >= 4  # the three collections and the refresh's (an automatic one may add)
    before = freezer.freezes
    gc.collect()
    assert freezer.freezes == before, "uninstalled, it freezes nothing"


async def test_the_freezer_refreshes_on_its_schedule(unfreeze: None) -> None:
    freezer = SurvivorFreezer(refresh_seconds=0.05)
    task = asyncio.create_task(freezer.run())
    try:
        await wait_until(lambda: freezer.refreshes >= 2, what="two refreshes")
        assert freezer in gc.callbacks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert freezer not in gc.callbacks


async def test_the_schedule_installs_the_freezer_only_when_asked(unfreeze: None) -> None:
    def freezers() -> list[SurvivorFreezer]:
        return [c for c in gc.callbacks if isinstance(c, SurvivorFreezer)]

    async with collection_schedule(warn_after_seconds=0, freeze=False):
        await asyncio.sleep(0)
        assert freezers() == []
    async with collection_schedule(warn_after_seconds=0, freeze=False, freeze_survivors_for=3600):
        await wait_until(lambda: len(freezers()) == 1, what="the freezer installed")
        [freezer] = freezers()
        gc.collect()
        assert freezer.freezes >= 1
    assert freezers() == []
