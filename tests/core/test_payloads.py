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
    MAX_PAST,
    TaskChange,
    TaskState,
    check_due_window,
    check_timezone,
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
