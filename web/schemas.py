"""Field types shared by the resources' request and response models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic_core import CoreSchema

from core.payloads import (
    EARLIEST,
    LATEST,
    MAX_FUTURE,
    MAX_PAST,
    Instant,
    bounded_instant,
    check_due_window,
)

# CRM ids arrive as strings; keep them printable and short (they end up in search attributes).
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")]


def _in_range(value: datetime) -> datetime:
    check_due_window(bounded_instant(value), datetime.now(UTC))
    return value


def _text_only(value: object) -> object:
    # pydantic would take a number as a Unix time; the API promises RFC 3339 text.
    if isinstance(value, int | float):
        raise ValueError("must be an RFC 3339 date-time string with an offset, not a number")
    return value


# -- the bounds of times, stated in their JSON schema ------------------------------------------------
#
# JSON Schema has no bound on a date-time that tools act on (`formatMinimum` and friends are ajv's, and
# schemathesis ignores them), so the bounds are stated twice: exactly in `formatMinimum` and
# `formatExclusiveMaximum`, and as a `pattern` that admits only times inside them, which generators honour.
# A pattern reads the text, not the instant: a time written on day d lies, whatever its offset (less than
# 24 h either way), strictly between d-1 and d+2 in UTC. So it admits any offset on the days far enough
# inside, offsets at or behind UTC (Z, -05:00) on the first day, offsets at or ahead of it on the last.
# What it leaves out, and the server accepts: a time on a day next to a bound whose offset keeps it inside
# (2000-01-01T06:00:00+05:00). A regular expression cannot compare a time with its offset.

_TIME = r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
_HOURS = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_ANY_OFFSET = rf"(?:[Zz]|[+-]{_HOURS})"
_BEHIND_UTC = rf"(?:[Zz]|[+-]00:00|-{_HOURS})"
_AHEAD_OF_UTC = rf"(?:[Zz]|[+-]00:00|\+{_HOURS})"


def _group(regex: str) -> str:
    return f"(?:{regex})" if "|" in regex else regex


def _digits(low: str, high: str) -> str:
    """A regex of the digit strings from ``low`` to ``high``, both of one length."""
    if low == high:
        return low
    if low[0] == high[0]:
        return low[0] + _group(_digits(low[1:], high[1:]))
    rest = len(low) - 1
    parts, first, last = [], low[0], high[0]
    if low[1:] != "0" * rest:
        parts.append(low[0] + _group(_digits(low[1:], "9" * rest)))
        first = chr(ord(first) + 1)
    if high[1:] != "9" * rest:
        last = chr(ord(last) - 1)
    if first <= last:
        parts.append(
            (first if first == last else f"[{first}-{last}]") + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}")
        )
    if high[1:] != "9" * rest:
        parts.append(high[0] + _group(_digits("0" * rest, high[1:])))
    return "|".join(parts)


def _days(year: int, first: tuple[int, int], last: tuple[int, int]) -> str:
    """Days of ``year`` from (month, day) ``first`` to ``last``; the date-time format refuses 30 February."""
    (first_month, first_day), (last_month, last_day) = first, last
    if first_month == last_month:
        return f"{year:04}-{first_month:02}-{_group(_digits(f'{first_day:02}', f'{last_day:02}'))}"
    parts = [f"{first_month:02}-{_group(_digits(f'{first_day:02}', '31'))}"]
    if first_month + 1 < last_month:
        months = _group(_digits(f"{first_month + 1:02}", f"{last_month - 1:02}"))
        parts.append(f"{months}-{_group(_digits('01', '31'))}")
    parts.append(f"{last_month:02}-{_group(_digits('01', f'{last_day:02}'))}")
    return f"{year:04}-(?:{'|'.join(parts)})"


def _dates(first: date, last: date) -> str:
    """A regex of the dates (YYYY-MM-DD) from ``first`` to ``last``."""
    if first.year == last.year:
        return _days(first.year, (first.month, first.day), (last.month, last.day))
    parts = [_days(first.year, (first.month, first.day), (12, 31))]
    if first.year + 1 < last.year:
        years = _group(_digits(str(first.year + 1), str(last.year - 1)))
        parts.append(f"{years}-{_group(_digits('01', '12'))}-{_group(_digits('01', '31'))}")
    parts.append(_days(last.year, (1, 1), (last.month, last.day)))
    return "|".join(parts)


def instant_schema(low: datetime, high: datetime) -> dict[str, Any]:
    """Schema keywords for the RFC 3339 times within [``low``, ``high``), whole UTC days of it."""
    day = timedelta(days=1)
    low, high = low.astimezone(UTC), high.astimezone(UTC)
    first = low.date() if low == datetime.combine(low.date(), time(), UTC) else low.date() + day
    last = high.date()
    pattern = "|".join(
        (
            f"(?:{_dates(first + day, last - 2 * day)}){_TIME}{_ANY_OFFSET}",
            f"{first.isoformat()}{_TIME}{_BEHIND_UTC}",
            f"{(last - day).isoformat()}{_TIME}{_AHEAD_OF_UTC}",
        )
    )
    return {
        "pattern": f"^(?:{pattern})$",
        "formatMinimum": f"{first.isoformat()}T00:00:00Z",
        "formatExclusiveMaximum": f"{last.isoformat()}T00:00:00Z",
    }


@dataclass(frozen=True)
class _Within:
    """Writes the bounds of a time into its JSON schema, as they are when the document is made."""

    window: Callable[[datetime], tuple[datetime, datetime]]

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        schema.update(instant_schema(*self.window(datetime.now(UTC))))
        return schema


# How long a served document stays right: the start of the due window moves on with the clock, so it is
# stated as it will be this much later.
DOCUMENT_LIFETIME = timedelta(days=1)


def _due_window(now: datetime) -> tuple[datetime, datetime]:
    return max(EARLIEST, now - MAX_PAST + DOCUMENT_LIFETIME), min(LATEST, now + MAX_FUTURE)


# Any time a caller sends, e.g. a query's bound: [2000-01-01T00:00:00Z, 2100-01-01T00:00:00Z).
BoundedTime = Annotated[Instant, _Within(lambda now: (EARLIEST, LATEST))]

# An RFC 3339 time with an offset; naive times are refused, since nobody can tell which zone they meant.
DueTime = Annotated[
    AwareDatetime,
    BeforeValidator(_text_only),
    AfterValidator(_in_range),
    _Within(_due_window),
    Field(
        description=(
            "RFC 3339 date-time with an offset, e.g. 2026-12-01T10:00:00+01:00; at most 366 days before "
            "and 3660 days after the request. This document states that window as of when it was served, "
            "in whole UTC days and a day shorter at its start, so that it holds for a day."
        )
    ),
]
