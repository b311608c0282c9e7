"""The next occurrence of a recurring task, in the task's IANA time zone (wall clock, DST-correct).

Runs in an activity, not in the workflow: the result depends on the tz database, which changes with
releases, and an activity's result is recorded in the history, so a replay never recomputes it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

from core.payloads import Recurrence


def next_occurrence(recurrence: Recurrence, timezone: str, after: datetime) -> datetime | None:
    """The first occurrence strictly after ``after`` (the current due time); None once the rule ends."""
    zone = ZoneInfo(timezone)
    start = after.astimezone(zone)
    if recurrence.rrule is not None:
        # An aware DTSTART makes dateutil build each occurrence on the local wall clock.
        following = rrulestr(recurrence.rrule.removeprefix("RRULE:"), dtstart=start).after(start, inc=False)
        return None if following is None else following.astimezone(UTC)
    assert recurrence.every is not None
    days = recurrence.every * (7 if recurrence.unit == "weeks" else 1)
    wall = start.replace(tzinfo=None) + timedelta(days=days)
    return wall.replace(tzinfo=zone).astimezone(UTC)
