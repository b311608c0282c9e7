"""Recurrence rules judged by running them, within a budget of steps and of time (no server needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter, ValidationError

from core import recurrence
from core.payloads import NewRecurrence, Recurrence
from core.recurrence import (
    MIN_INTERVAL,
    RuleRunner,
    RuleUnusable,
    RunnerBusy,
    check_in_child,
    next_in_child,
)
from tests.helpers import wait_until

# A Tuesday, 09:00 UTC (10:00 in Berlin).
DUE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def rule(text: str) -> Recurrence:
    """A rule as yesterday's validator may have let it through: no check of its own."""
    return Recurrence.model_construct(rrule=text, every=None, unit=None)


@pytest.fixture(scope="module")
def runner() -> Iterator[RuleRunner]:
    runner = RuleRunner(workers=1, budget=0.5)
    yield runner
    runner.close()


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("FREQ=WEEKLY;BYDAY=TU", "Europe/Berlin", datetime(2026, 12, 8, 9, tzinfo=UTC)),
        (
            "FREQ=DAILY;BYHOUR=10,15;BYMINUTE=0;BYSECOND=0",
            "Europe/Berlin",
            datetime(2026, 12, 1, 14, tzinfo=UTC),
        ),
        ("RRULE:FREQ=MONTHLY;BYMONTHDAY=-1", "UTC", datetime(2026, 12, 31, 9, tzinfo=UTC)),
        ("FREQ=HOURLY;INTERVAL=2", "UTC", DUE + timedelta(hours=2)),
        ("FREQ=DAILY;COUNT=1", "UTC", None),  # the series is over after due_at
        ("FREQ=DAILY;UNTIL=20261201T120000Z", "UTC", None),
    ],
)
def test_next_occurrence_of_usable_rules(text: str, zone: str, expected: datetime | None) -> None:
    assert next_in_child(text, None, None, zone, DUE) == (expected, None)


@pytest.mark.parametrize(
    ("after", "zone", "expected"),
    [
        # 10:00 stays 10:00 on the wall clock across the spring and autumn changes.
        (datetime(2026, 3, 28, 9, tzinfo=UTC), "Europe/Berlin", datetime(2026, 3, 29, 8, tzinfo=UTC)),
        (datetime(2026, 10, 24, 8, tzinfo=UTC), "Europe/Berlin", datetime(2026, 10, 25, 9, tzinfo=UTC)),
        # 02:30 does not exist on 8 March 2026 in New York: dateutil keeps the wall time, zoneinfo reads it
        # with the offset before the change (07:30 UTC), which is still a day after the previous one.
        (
            datetime(2026, 3, 7, 7, 30, tzinfo=UTC),
            "America/New_York",
            datetime(2026, 3, 8, 7, 30, tzinfo=UTC),
        ),
    ],
)
def test_daily_rules_keep_the_wall_clock_across_dst(after: datetime, zone: str, expected: datetime) -> None:
    assert next_in_child("FREQ=DAILY", None, None, zone, after) == (expected, None)


@pytest.mark.parametrize(
    ("every", "unit", "expected"),
    [(1, "days", DUE + timedelta(days=1)), (2, "weeks", DUE + timedelta(weeks=2))],
)
def test_every_n_days_or_weeks(every: int, unit: str, expected: datetime) -> None:
    assert next_in_child(None, every, unit, "Europe/Berlin", DUE) == (expected, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # Never advances: dateutil yields due_at forever.
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL=0"),
        # A list of seconds gets around any check of FREQ: the occurrences are what is judged.
        ("FREQ=DAILY;BYSECOND=0,1,2", "1 second apart"),
        ("FREQ=DAILY;BYMINUTE=0,30", "30 minutes apart"),
        ("FREQ=MINUTELY", "1 minute apart"),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "no occurrence"),
        ("FREQ=DAILY;UNTIL=20200101T000000Z", "no occurrence"),
    ],
)
def test_check_refuses_rules_by_their_occurrences(text: str, reason: str) -> None:
    message = check_in_child(text, None, None, "UTC", DUE)
    assert message is not None
    assert reason in message


def test_check_accepts_a_rule_one_interval_apart() -> None:
    assert check_in_child("FREQ=HOURLY", None, None, "UTC", DUE) is None
    assert timedelta(hours=1) == MIN_INTERVAL


def test_next_occurrence_skips_what_is_closer_than_the_smallest_interval() -> None:
    # Yesterday's validator let a list of seconds through: at run time it fires once a day at most here.
    following, error = next_in_child("FREQ=DAILY;BYSECOND=0,1,2", None, None, "UTC", DUE)
    assert (following, error) == (DUE + timedelta(days=1), None)
    # A due time moved to 08:30 next to a 09:00 rule: the 09:00 of that day is skipped.
    following, _ = next_in_child(
        "FREQ=DAILY;BYHOUR=9;BYMINUTE=0", None, None, "UTC", DUE - timedelta(minutes=30)
    )
    assert following == DUE + timedelta(days=1)


def test_next_occurrence_never_raises() -> None:
    for text in ("FREQ=DAILY;INTERVAL=0", "FREQ=DAILY;UNTIL=99999999999999999999", "FREQ=NEVER", "x"):
        following, error = next_in_child(text, None, None, "UTC", DUE)
        assert following is None
        assert error
    # A due time at the top of the range: the horizon cannot be computed, the rule is refused.
    _, error = next_in_child("FREQ=DAILY", None, None, "UTC", datetime.max.replace(tzinfo=UTC))
    assert error is not None


async def test_runner_kills_a_rule_at_its_budget_and_goes_on(runner: RuleRunner) -> None:
    # No day is 30 February: dateutil walks day by day to year 9999 inside one call (seconds of CPU).
    with pytest.raises(RuleUnusable, match=r"longer than 0\.5 s"):
        await runner.next_occurrence(rule("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30"), "UTC", DUE)
    assert runner.timeouts == 1  # killed, not waited for
    # The killed child is replaced: the next rule is answered.
    assert await runner.next_occurrence(rule("FREQ=WEEKLY"), "UTC", DUE) == DUE + timedelta(weeks=1)
    await runner.check(rule("FREQ=WEEKLY"), "Europe/Berlin", DUE)
    with pytest.raises(RuleUnusable, match="INTERVAL=0"):
        await runner.check(rule("FREQ=DAILY;INTERVAL=0"), "UTC", DUE)


async def test_runner_bounds_the_wait_for_a_child() -> None:
    runner = RuleRunner(workers=1, budget=2.0, queue_budget=0.2)
    try:
        slow = asyncio.create_task(runner.check(rule("FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30"), "UTC", DUE))
        await wait_until(runner._slots.locked, what="the slow rule to hold the only child")
        with pytest.raises(RunnerBusy):
            await runner.check(rule("FREQ=WEEKLY"), "UTC", DUE)
        with pytest.raises(RuleUnusable):
            await slow
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"rrule": "FREQ=DAILY;UNTIL=99999999999999999999"}, "not a valid RRULE"),
        ({"rrule": "FREQ=DAILY;INTERVAL=x"}, "not a valid RRULE"),
        ({"rrule": "BYDAY=TU"}, "needs a FREQ"),
        ({"rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY"}, "RRULE body only"),
        ({"rrule": "FREQ=DAILY;" + "BYSECOND=1;" * 60}, "at most 500 characters"),
        ({"every": 0, "unit": "days"}, "greater than or equal to 1"),
    ],
)
def test_rule_syntax_is_checked_totally(body: dict[str, object], message: str) -> None:
    """The model's check runs in workflow code (a signal's rule): whatever the text, a ValidationError."""
    with pytest.raises(ValidationError, match=message):
        TypeAdapter(NewRecurrence).validate_python(body)


def local(zone: str, year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time of ``zone`` that exists and is not ambiguous, in UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone)).astimezone(UTC)


# One day (or week) after a wall-clock time, across the changes of each kind of zone: the wall clock is
# kept, so the span in UTC is 23, 23.5, 25 hours or a week less an hour. Both kinds of recurrence agree.
DAY_AFTER = [
    # Europe: spring forward, fall back.
    ("Europe/Berlin", local("Europe/Berlin", 2026, 3, 28, 10), local("Europe/Berlin", 2026, 3, 29, 10)),
    ("Europe/Berlin", local("Europe/Berlin", 2026, 10, 24, 10), local("Europe/Berlin", 2026, 10, 25, 10)),
    # Southern hemisphere: the changes are the other way round in the year.
    ("Australia/Sydney", local("Australia/Sydney", 2026, 4, 4, 9), local("Australia/Sydney", 2026, 4, 5, 9)),
    (
        "Australia/Sydney",
        local("Australia/Sydney", 2026, 10, 3, 9),
        local("Australia/Sydney", 2026, 10, 4, 9),
    ),
    # A change of half an hour (+10:30 to +11).
    (
        "Australia/Lord_Howe",
        local("Australia/Lord_Howe", 2026, 10, 3, 10),
        local("Australia/Lord_Howe", 2026, 10, 4, 10),
    ),
    # 02:30 does not exist on 8 March 2026 in New York: read with the offset before the change (EST),
    # i.e. 03:30 EDT (the day after: test_a_series_at_a_missing_wall_time_comes_back_to_it).
    ("America/New_York", datetime(2026, 3, 7, 7, 30, tzinfo=UTC), datetime(2026, 3, 8, 7, 30, tzinfo=UTC)),
    # 01:30 happens twice on 1 November 2026 in New York: the first one (EDT), then 01:30 EST the day after.
    ("America/New_York", datetime(2026, 10, 31, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
    ("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 2, 6, 30, tzinfo=UTC)),
    # No DST, but a day that is not UTC's: +14 and +05:45.
    (
        "Pacific/Kiritimati",
        local("Pacific/Kiritimati", 2026, 12, 31, 8),
        local("Pacific/Kiritimati", 2027, 1, 1, 8),
    ),
    ("Asia/Kathmandu", local("Asia/Kathmandu", 2026, 12, 1, 9), local("Asia/Kathmandu", 2026, 12, 2, 9)),
]


@pytest.mark.parametrize(("zone", "after", "expected"), DAY_AFTER)
def test_daily_series_keep_the_wall_clock_in_every_kind_of_zone(
    zone: str, after: datetime, expected: datetime
) -> None:
    assert next_in_child("FREQ=DAILY", None, None, zone, after) == (expected, None)
    assert next_in_child(None, 1, "days", zone, after) == (expected, None)
    assert check_in_child("FREQ=DAILY", None, None, zone, after) is None


@pytest.mark.parametrize(
    ("text", "every", "zone", "after", "expected"),
    [
        # Monday 09:00 in New York, across the spring change: a week less an hour in UTC.
        (
            "FREQ=WEEKLY",
            1,
            "America/New_York",
            local("America/New_York", 2026, 3, 2, 9),
            local("America/New_York", 2026, 3, 9, 9),
        ),
        # BYDAY is the zone's weekday: Monday 22:00 in Pago Pago (-11) is Tuesday in UTC.
        (
            "FREQ=WEEKLY;BYDAY=MO",
            1,
            "Pacific/Pago_Pago",
            local("Pacific/Pago_Pago", 2026, 11, 30, 22),
            datetime(2026, 12, 8, 9, tzinfo=UTC),
        ),
        # Every other week, across the autumn change in Sydney (April).
        (
            "FREQ=WEEKLY;INTERVAL=2",
            2,
            "Australia/Sydney",
            local("Australia/Sydney", 2026, 3, 30, 9),
            local("Australia/Sydney", 2026, 4, 13, 9),
        ),
    ],
)
def test_weekly_series_keep_the_zone_s_wall_clock_and_weekday(
    text: str, every: int, zone: str, after: datetime, expected: datetime
) -> None:
    assert next_in_child(text, None, None, zone, after) == (expected, None)
    assert next_in_child(None, every, "weeks", zone, after) == (expected, None)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # 08:00 at +14 is 18:00 UTC the day before: the zone's last day of December is UTC's 30th.
        (local("Pacific/Kiritimati", 2026, 12, 1, 8), datetime(2026, 12, 30, 18, tzinfo=UTC)),
        (local("Pacific/Kiritimati", 2026, 12, 31, 8), datetime(2027, 1, 30, 18, tzinfo=UTC)),
    ],
)
def test_monthly_series_count_the_days_of_the_zone(after: datetime, expected: datetime) -> None:
    assert next_in_child("FREQ=MONTHLY;BYMONTHDAY=-1", None, None, "Pacific/Kiritimati", after) == (
        expected,
        None,
    )


def test_an_hourly_series_keeps_its_beat_across_the_missing_hour() -> None:
    # 29 March 2026 in Berlin: 02:00 does not exist; read as CET it is the same instant as 03:00 CEST, the
    # duplicate is skipped, and the series goes on every hour in UTC.
    fired = [datetime(2026, 3, 29, 0, tzinfo=UTC)]
    for _ in range(4):
        following, error = next_in_child("FREQ=HOURLY", None, None, "Europe/Berlin", fired[-1])
        assert error is None
        assert following is not None
        fired.append(following)
    assert fired == [datetime(2026, 3, 29, hour, tzinfo=UTC) for hour in range(5)]


@pytest.mark.parametrize(
    ("zone", "due_at"),
    [
        ("Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC)),
        ("America/New_York", datetime(2026, 3, 7, 12, tzinfo=UTC)),
    ],
)
def test_an_hourly_rule_is_accepted_just_before_a_spring_change(zone: str, due_at: datetime) -> None:
    assert check_in_child("FREQ=HOURLY", None, None, zone, due_at) is None


@pytest.mark.parametrize(("text", "every"), [("FREQ=DAILY", None), (None, 1)])
def test_a_series_at_a_missing_wall_time_comes_back_to_it(text: str | None, every: int | None) -> None:
    # Daily at 02:30 in New York from 1 March, fired on 8 March 2026 at 03:30 EDT (02:30 does not exist
    # that day): 9 March is 02:30 EDT again, since the series keeps the wall time of its start.
    start = local("America/New_York", 2026, 3, 1, 2, 30)
    after = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    unit = "days" if every else None
    assert next_in_child(text, every, unit, "America/New_York", after, start) == (
        local("America/New_York", 2026, 3, 9, 2, 30),
        None,
    )


def test_count_counts_from_the_series_start() -> None:
    """COUNT=3: the due time and two more; computed from each previous due time it never ended."""
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    fired = [start]
    while (
        following := next_in_child("FREQ=DAILY;COUNT=3", None, None, "UTC", fired[-1], start)[0]
    ) is not None:
        fired.append(following)
        assert len(fired) < 10, "the series never ended"
    assert fired == [start + timedelta(days=n) for n in range(3)]


def test_a_snoozed_occurrence_does_not_move_the_series() -> None:
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    snoozed = start + timedelta(minutes=30)
    assert next_in_child("FREQ=DAILY", None, None, "UTC", snoozed, start) == (start + timedelta(days=1), None)
    assert next_in_child(None, 1, "days", "UTC", snoozed, start) == (start + timedelta(days=1), None)


def test_a_series_started_years_ago_is_still_computed() -> None:
    start = datetime(2017, 1, 1, 9, tzinfo=UTC)
    after = datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert next_in_child("FREQ=HOURLY", None, None, "Europe/Berlin", after, start) == (
        after + timedelta(hours=1),
        None,
    )
    # Every other Sunday since 1 January 2017 (518 weeks before 6 December 2026).
    assert next_in_child(None, 2, "weeks", "UTC", after, start)[0] == datetime(2026, 12, 6, 9, tzinfo=UTC)


def test_a_rule_is_walked_at_most_max_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # INTERVAL=0 is refused before a step; any other rule that repeats itself meets this bound.
    monkeypatch.setattr(recurrence, "MAX_STEPS", 3)
    with pytest.raises(RuleUnusable, match="yields 3 occurrences"):
        list(recurrence._occurrences("FREQ=HOURLY;BYSETPOS=1,1", None, None, "UTC", DUE))
