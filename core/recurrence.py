"""Recurrence rules judged by running them: the occurrences a rule yields, bounded in count and in time.

A rule is user data, and python-dateutil's iteration is unbounded in time: ``INTERVAL=0`` never advances,
and a rule that matches no day (``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30``) walks day by day to year 9999
inside one call, seconds of CPU that nothing can interrupt. So a rule is never run on an event loop nor
in workflow code: :class:`RuleRunner` runs it in a child process that is killed at its time budget, and
the functions the child runs also stop after :data:`MAX_STEPS` occurrences.

Occurrences are computed in the task's IANA time zone (wall clock, DST-correct) and returned in UTC.
The next one runs in an activity, not in the workflow: the result depends on the tz database, which
changes with releases, and an activity's result is recorded in the history, so a replay never recomputes
it (docs/decisions.md §18).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import CancelledError as FutureCancelled
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from dateutil.rrule import rrule, rrulestr
from pebble import ProcessExpired, ProcessPool

from core.payloads import MAX_FUTURE

if TYPE_CHECKING:
    from core.payloads import Recurrence

T = TypeVar("T")

# The smallest interval between two reminders of a series, measured on the occurrences a rule yields
# (not on its text): a rule whose own occurrences come closer is refused, and at run time an occurrence
# closer than this to the previous due time is skipped (a due time moved near the rule's next one).
MIN_INTERVAL = timedelta(hours=1)
# No occurrence is looked for further ahead than the latest due time a caller may set.
HORIZON = MAX_FUTURE
# How many occurrences a check computes to judge a rule, and how many steps any evaluation may take.
CHECKED_OCCURRENCES = 50
MAX_STEPS = 200_000  # from the series' start: an hourly series of ten years, in about 0.2 s of CPU
# Wall time a rule may take in its child process before the child is killed and the rule refused.
BUDGET_SECONDS = 1.0
# Wall time a caller waits for a free child (others' rules running) before it is told to retry.
QUEUE_SECONDS = 5.0


class RuleUnusable(ValueError):
    """The rule cannot be used: its message says why, in words for the user who wrote it."""


class RunnerBusy(Exception):
    """Every child was busy for longer than the queue budget: retry later."""


# -- what the child process runs: plain values in, plain values out ---------------------------------------


def _occurrences(
    rule: str | None,
    every: int | None,
    unit: str | None,
    zone_name: str,
    after: datetime,
    start: datetime | None = None,
) -> Iterator[tuple[datetime, datetime]]:
    """The occurrences of the series that starts at ``start`` (default ``after``), strictly after
    ``after`` and up to ``after + HORIZON``, each as (UTC instant, wall time in the zone); at most
    MAX_STEPS from the start. A wall time that does not exist (a spring change) is the same instant as the
    next one: only the first of those is yielded."""
    zone = ZoneInfo(zone_name)
    # The series keeps the wall time of its start: a day whose wall time does not exist does not move it.
    dtstart = (start or after).astimezone(zone)
    try:
        horizon = after + HORIZON
    except OverflowError:
        raise RuleUnusable("the due time is too far ahead for a recurring task") from None
    if rule is None:
        assert every is not None
        period = timedelta(days=every * (7 if unit == "weeks" else 1))
        wall = dtstart.replace(tzinfo=None)
        # Straight to the period before `after` (a day's width of margin for the zone's offsets).
        skipped = max(0, (after.replace(tzinfo=None) - wall - timedelta(days=1)) // period)
        walls = (wall + period * n for n in range(skipped + 1, skipped + MAX_STEPS + 1))
        local: Iterator[datetime] = (w.replace(tzinfo=zone) for w in walls)
    else:
        # An aware DTSTART makes dateutil build each occurrence on the local wall clock.
        parsed = rrulestr(rule.removeprefix("RRULE:"), dtstart=dtstart)
        assert isinstance(parsed, rrule)
        # Known before one step: dateutil would repeat DTSTART until MAX_STEPS (a second of CPU).
        if parsed._interval == 0:
            raise RuleUnusable("INTERVAL=0 never advances: give INTERVAL=1 or more")
        local = iter(parsed)
    previous = after
    for steps, occurrence in enumerate(local, 1):
        if steps > MAX_STEPS:
            raise RuleUnusable(
                f"the rule yields {MAX_STEPS} occurrences before the end of its window: too many to walk"
            )
        moment = occurrence.astimezone(UTC)
        if moment > horizon:
            return
        if moment > previous:
            previous = moment
            yield moment, occurrence.replace(tzinfo=None)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RuleUnusable) else f"the rule cannot be evaluated ({exc})"


def check_in_child(
    rule: str | None, every: int | None, unit: str | None, zone: str, due_at: datetime
) -> str | None:
    """None if the rule is usable from ``due_at``, else why not. Computes CHECKED_OCCURRENCES at most.

    Two occurrences are too close when they are so both as instants and on the wall clock: an hourly rule
    across a DST change is not refused for the one pair the change brings together (the worker skips
    the later of such a pair, next_in_child)."""
    try:
        previous: tuple[datetime, datetime] | None = None
        for count, (moment, wall) in enumerate(_occurrences(rule, every, unit, zone, due_at), 1):
            if previous is not None and max(moment - previous[0], wall - previous[1]) < MIN_INTERVAL:
                first = previous[0]
                return (
                    f"two occurrences are only {_span(moment - first)} apart ({first:%Y-%m-%d %H:%M:%S}"
                    f" and {moment:%Y-%m-%d %H:%M:%S} UTC); reminders of a series must be at least"
                    f" {_span(MIN_INTERVAL)} apart"
                )
            previous = (moment, wall)
            if count >= CHECKED_OCCURRENCES:
                break
        if previous is None:
            return "the rule yields no occurrence after due_at within ten years"
        return None
    except Exception as exc:  # the rule is user data: whatever it raises, it is the rule's fault
        return _describe(exc)


def next_in_child(
    rule: str | None,
    every: int | None,
    unit: str | None,
    zone: str,
    after: datetime,
    start: datetime | None = None,
) -> tuple[datetime | None, str | None]:
    """(the next due time at least MIN_INTERVAL after ``after``, None) or (None, why the rule is unusable).
    (None, None): the series has no occurrence left within the horizon. ``start``: the series' first due
    time (default ``after``), whose wall time and COUNT the rule keeps."""
    try:
        for moment, _ in _occurrences(rule, every, unit, zone, after, start):
            if moment - after >= MIN_INTERVAL:
                return moment, None
        return None, None
    except Exception as exc:
        return None, _describe(exc)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} hour" + ("s" if seconds != 3600 else "")
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} minute" + ("s" if seconds != 60 else "")
    return f"{seconds} second" + ("s" if seconds != 1 else "")


def _values(recurrence: Recurrence) -> tuple[str | None, int | None, str | None]:
    return recurrence.rrule, recurrence.every, recurrence.unit


def next_occurrence(
    recurrence: Recurrence, timezone: str, after: datetime, start: datetime | None = None
) -> datetime | None:
    """In this process, bounded in steps but not in time: for tests and for rules already judged."""
    following, error = next_in_child(*_values(recurrence), timezone, after, start)
    if error is not None:
        raise RuleUnusable(error)
    return following


# -- the parent's side ------------------------------------------------------------------------------------


class RuleRunner:
    """Children that run rules for one process, each call killed at ``budget`` seconds (pebble).

    Children are spawned, not forked: the worker and the web process hold threads (Temporal's core,
    the loop's executor) that a fork would copy in whatever state they are.
    """

    def __init__(
        self, workers: int = 2, budget: float = BUDGET_SECONDS, queue_budget: float = QUEUE_SECONDS
    ) -> None:
        self.budget = budget
        self.queue_budget = queue_budget
        self._pool = ProcessPool(max_workers=workers, context=multiprocessing.get_context("spawn"))
        # Calls wait here, not in the pool's queue, so that the time a call waits is bounded too.
        self._slots = asyncio.Semaphore(workers)
        self.timeouts = 0

    async def _run(self, function: Any, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self.queue_budget):
                await self._slots.acquire()
        except TimeoutError:
            raise RunnerBusy(f"no rule evaluator free within {self.queue_budget:g} s") from None
        try:
            future = self._pool.schedule(function, args=args, timeout=self.budget)
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                future.cancel()  # pebble kills the child running it
                raise
        except (TimeoutError, FutureCancelled, ProcessExpired):
            # Killed at its budget, or died (out of memory): either way the rule is what did it.
            self.timeouts += 1
            raise RuleUnusable(
                f"the rule takes longer than {self.budget:g} s to evaluate (a rule that matches almost no"
                " day does): simplify it"
            ) from None
        finally:
            self._slots.release()

    async def check(self, recurrence: Recurrence, timezone: str, due_at: datetime) -> None:
        """Raise RuleUnusable (why, for the caller) unless the rule is usable from ``due_at``."""
        error = await self._run(check_in_child, *_values(recurrence), timezone, due_at)
        if error is not None:
            raise RuleUnusable(error)

    async def next_occurrence(
        self, recurrence: Recurrence, timezone: str, after: datetime, start: datetime | None = None
    ) -> datetime | None:
        """The next due time (None: the series is over); RuleUnusable if the rule cannot be used."""
        following, error = await self._run(next_in_child, *_values(recurrence), timezone, after, start)
        if error is not None:
            raise RuleUnusable(error)
        result: datetime | None = following
        return result

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=5)
