"""Hypothesis generators of hostile values for every field a caller sends, shared by the workflow's and
the REST API's property tests, and a bridge that runs a property against the session's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.payloads import SIGNALS, TIMEZONES

T = TypeVar("T")

# Any JSON document: what a signal from another service or a hand-written update can carry.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=23, minutes=59)), timezone(-timedelta(hours=23, minutes=59)), timezone.max]
) | st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439))


def _near_now(seconds: int) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# Times: anywhere in datetime's range with extreme offsets, naive, near now (so that some apply and fire),
# numbers, and text that is not a time.
times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=_offsets).map(
        datetime.isoformat
    ),
    st.datetimes().map(datetime.isoformat),
    st.integers(min_value=-400 * 86400, max_value=4000 * 86400).map(_near_now),
    st.integers(min_value=-5, max_value=30).map(_near_now),
    st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)

_RULE_PARTS = [
    "INTERVAL", "COUNT", "UNTIL", "BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY", "BYMONTHDAY", "BYYEARDAY",
    "BYWEEKNO", "BYMONTH", "BYSETPOS", "WKST", "DTSTART", "TZID",
]  # fmt: skip
_rule_values = st.one_of(
    st.integers(min_value=-1000, max_value=1000).map(str),
    st.lists(st.integers(min_value=-400, max_value=400), min_size=1, max_size=30).map(
        lambda values: ",".join(map(str, values))
    ),
    st.sampled_from(["0", "99999999999999999999", "MO,TU", "1MO,-1FR", "20300101T000000Z", "19000101", ""]),
    st.text(max_size=12),
)
# Rules: built from RFC 5545's parts with any values (INTERVAL=0, lists of seconds, UNTIL that overflows,
# BY-rules that match no day), and any text.
rules = st.one_of(
    st.builds(
        lambda freq, parts: ";".join([f"FREQ={freq}", *(f"{name}={value}" for name, value in parts)]),
        st.sampled_from(["SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY", "NEVER"]),
        st.lists(st.tuples(st.sampled_from(_RULE_PARTS), _rule_values), max_size=4),
    ),
    st.text(max_size=60),
)
zones = st.one_of(
    st.sampled_from(sorted(TIMEZONES)),
    st.sampled_from(["America", "US", "", "x" * 300, "../../etc/passwd", "Europe/Berlin\x00", "localtime"]),
    st.text(max_size=80),
)
recurrences = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "rrule": rules,
            "every": st.integers() | json_values,
            "unit": st.sampled_from(["days", "weeks", "years"]) | json_values,
        },
    ),
    json_values,
)
texts = st.text(max_size=300) | st.text(max_size=3).map(lambda t: t * 5000) | json_values
ints = st.integers() | st.integers(min_value=-5, max_value=600) | json_values

# The fields of a change (signals and the change update), each hostile or plain JSON, and extra ones.
change_fields = {
    "due_at": times,
    "until": times,
    "minutes": ints,
    "title": texts,
    "notes": texts,
    "reminder_offsets": st.lists(ints, max_size=12) | json_values,
    "recurrence": recurrences,
    "clear": st.lists(st.sampled_from(["notes", "recurrence", "title"])) | json_values,
    "clear_recurrence": st.booleans() | json_values,
    "timezone": zones | json_values,
    "organization_id": texts,
    "request_id": texts,
    "status": json_values,
}
change_payloads = st.fixed_dictionaries({}, optional=change_fields) | json_values
signal_calls = st.tuples(st.sampled_from(SIGNALS), change_payloads)
update_payloads = (
    st.fixed_dictionaries(
        {"action": st.sampled_from(["edit", "reschedule", "snooze", "complete", "cancel"]) | json_values},
        optional=change_fields,
    )
    | json_values
)

# The bodies of the REST routes, from the same generators.
create_bodies = st.fixed_dictionaries(
    {"title": st.just("Call Ana") | texts, "due_at": times},
    optional={key: change_fields[key] for key in ("notes", "reminder_offsets", "recurrence", "timezone")}
    | {"assignee_id": texts},
)
patch_bodies = st.fixed_dictionaries(
    {},
    optional={
        key: change_fields[key]
        for key in ("title", "notes", "due_at", "reminder_offsets", "recurrence", "timezone")
    },
)


def examples(count: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis settings for properties that talk to the real servers: no per-example deadline (a
    rule may take its whole budget), a fixed seed so that CI is repeatable, no example database."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


async def check_property(
    strategy: st.SearchStrategy[T], check: Callable[[T], Coroutine[Any, Any, None]], count: int
) -> None:
    """Run ``check`` on ``count`` examples of ``strategy`` (and shrink a failure), each on this event loop.

    Hypothesis drives synchronous tests: it runs in a thread, and each example is awaited here, where
    the session's clients live."""
    loop = asyncio.get_running_loop()

    @examples(count)
    @given(strategy)
    def prop(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(timeout=60)

    await asyncio.to_thread(prop)
