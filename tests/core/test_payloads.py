"""The bounds of every value a caller sends, checked where it is parsed (web, signal, update alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from core.payloads import (
    EARLIEST,
    LATEST,
    MAX_FUTURE,
    MAX_OFFSET,
    MAX_PAST,
    MAX_REMINDERS,
    Recurrence,
    TaskChange,
    TaskState,
    check_due_window,
    check_timezone,
    normalize_offsets,
)
from tests.helpers import task_state


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/Argentina/ComodRivadavia", "US/Eastern"])
def test_real_zones_are_taken(name: str) -> None:
    assert check_timezone(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "America",  # a directory of the zone database: IsADirectoryError from ZoneInfo, a 500 before
        "US",
        "x" * 300,  # OSError (file name too long) from ZoneInfo
        "",
        "../../etc/passwd",
        "Europe/Berlin\x00",
        "localtime",  # a file on some machines, not a zone of tzdata: never the same answer everywhere
        "Mars/Olympus",
    ],
)
def test_anything_else_is_refused_with_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown IANA time zone"):
        check_timezone(name)


def change(**fields: Any) -> TaskChange:
    return TaskChange.model_validate({"action": "reschedule", **fields})


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00Z",  # minus DELIVER_AHEAD overflowed in the workflow
        "0001-01-01T00:00:00+23:59",  # overflows on the way to UTC
        "9999-12-31T23:59:59-23:59",
        "1999-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "2026-12-01T10:00:00",  # no offset: nobody can tell which zone was meant
        10**30,
        "tomorrow",
    ],
)
@pytest.mark.parametrize("field", ["due_at", "until"])
def test_times_outside_the_absolute_bounds_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        change(**{field: value})


def test_times_inside_the_bounds_are_taken() -> None:
    assert change(due_at=EARLIEST.isoformat()).due_at == EARLIEST
    last = LATEST - timedelta(microseconds=1)
    assert change(until=last.isoformat()).until == last


def test_due_window_is_relative_to_the_clock_that_applies_it() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    check_due_window(now - MAX_PAST, now)
    check_due_window(now + MAX_FUTURE, now)
    for due in (now - MAX_PAST - timedelta(seconds=1), now + MAX_FUTURE + timedelta(seconds=1)):
        with pytest.raises(ValueError, match="one year in the past and ten years in the future"):
            check_due_window(due, now)


@pytest.mark.parametrize(
    "fields",
    [
        {"organization_id": "o" * 65},
        {"request_id": "r" * 101},
        {"minutes": 0},
        {"minutes": 10**20},
        {"reminder_offsets": list(range(11))},
        {"reminder_offsets": [10**12]},
        {"timezone": "America"},
        {"title": ""},
        {"title": "a\x00b"},
        {"notes": "\ud800"},
        {"recurrence": {"rrule": "FREQ=DAILY;UNTIL=99999999999999999999"}},
        {"recurrence": "FREQ=DAILY"},
        {"status": "done"},
    ],
)
def test_a_change_is_bounded_in_every_field(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        change(**fields)


def test_a_stopped_series_round_trips_and_old_states_still_load() -> None:
    state = task_state(recurrence_stopped="the rule yields no occurrence")
    assert (
        TaskState.model_validate_json(state.model_dump_json()).recurrence_stopped == state.recurrence_stopped
    )
    old = state.model_dump(mode="json", exclude={"recurrence_stopped"})
    assert TaskState.model_validate(old).recurrence_stopped is None


@pytest.mark.parametrize(
    "body",
    [
        {"rrule": "FREQ=WEEKLY;BYDAY=TU"},
        {"every": 2, "unit": "weeks"},
        {"every": 1, "unit": "days", "rrule": None},
        {"every": 366, "unit": "days"},
    ],
)
def test_a_recurrence_is_a_rule_or_every_n_days_or_weeks(body: dict[str, Any]) -> None:
    Recurrence.model_validate(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "either `rrule` or `every`"),
        ({"rrule": "FREQ=DAILY", "every": 1, "unit": "days"}, "either `rrule` or `every`"),
        ({"unit": "days"}, "either `rrule` or `every`"),
        ({"every": 1}, "needs a `unit`"),
        ({"every": 0, "unit": "days"}, "greater than or equal to 1"),
        ({"every": 367, "unit": "days"}, "less than or equal to 366"),
        ({"every": 1, "unit": "months"}, "'days' or 'weeks'"),
        # JSON's integers only: pydantic's lax mode would read these as 1 and 2.
        ({"every": True, "unit": "days"}, "must be an integer"),
        ({"every": "2", "unit": "days"}, "must be an integer"),
        ({"rrule": "FREQ=DAILY", "tz": "UTC"}, "Extra inputs are not permitted"),
    ],
)
def test_anything_else_is_not_a_recurrence(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Recurrence.model_validate(body)


@pytest.mark.parametrize(
    ("offsets", "normalized"),
    [
        ([0], (0,)),
        # Soonest reminder last, each once: the order the workflow arms them in.
        ([0, 600, 600, 3600], (3600, 600, 0)),
        ([MAX_OFFSET] * MAX_REMINDERS, (MAX_OFFSET,)),
    ],
)
def test_offsets_are_normalized(offsets: list[int], normalized: tuple[int, ...]) -> None:
    assert normalize_offsets(offsets) == normalized


@pytest.mark.parametrize(
    "offsets", [[], list(range(MAX_REMINDERS + 1)), [-1], [MAX_OFFSET + 1]], ids=["none", "11", "-1", "1y+1s"]
)
def test_offsets_out_of_bounds_are_refused(offsets: list[int]) -> None:
    with pytest.raises(ValueError, match="reminder offsets"):
        normalize_offsets(offsets)


DUE_AT = datetime(2026, 12, 1, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "offsets", "done", "pending"),
    [
        ("open", (0,), (), [(DUE_AT, 0)]),
        (
            "open",
            (3600, 600, 0),
            (),
            [(DUE_AT - timedelta(hours=1), 3600), (DUE_AT - timedelta(minutes=10), 600), (DUE_AT, 0)],
        ),
        ("open", (3600, 600, 0), (3600,), [(DUE_AT - timedelta(minutes=10), 600), (DUE_AT, 0)]),
        ("open", (600, 0), (600, 0), []),
        ("done", (600, 0), (), []),
        ("cancelled", (0,), (), []),
    ],
)
def test_pending_reminders_are_the_open_task_s_undelivered_ones_soonest_first(
    status: str, offsets: tuple[int, ...], done: tuple[int, ...], pending: list[tuple[datetime, int]]
) -> None:
    state = task_state(due_at=DUE_AT, status=status, reminder_offsets=offsets, done_offsets=done)
    assert state.pending_reminders() == pending


@pytest.mark.parametrize(
    ("now", "skipped"),
    [
        (DUE_AT - timedelta(days=1), ()),
        (DUE_AT - timedelta(minutes=30), (3600,)),
        (DUE_AT - timedelta(minutes=10), (3600, 600)),  # its instant counts as passed
        # Created or rescheduled into the past: the reminder at due time still fires, at once.
        (DUE_AT + timedelta(days=1), (3600, 600)),
    ],
)
def test_arming_skips_the_early_reminders_already_passed(now: datetime, skipped: tuple[int, ...]) -> None:
    # What the previous revision delivered is forgotten: each arming is its own occurrence.
    state = task_state(due_at=DUE_AT, reminder_offsets=(3600, 600, 0), done_offsets=(0,))
    armed = state.skipping_passed_reminders(now)
    assert armed.done_offsets == skipped
    assert (DUE_AT, 0) in armed.pending_reminders()


def test_each_reminder_of_each_revision_has_its_own_dedupe_key() -> None:
    first = task_state(reminder_offsets=(600, 0))
    moved = first.model_copy(update={"schedule_revision": 2})
    keys = {state.dedupe_key(offset) for state in (first, moved) for offset in (600, 0)}
    assert len(keys) == 4
    # A change that leaves due_at alone keeps the keys: a reminder is never delivered twice.
    assert first.model_copy(update={"version": 5, "title": "Call Ana"}).dedupe_key(0) == first.dedupe_key(0)
