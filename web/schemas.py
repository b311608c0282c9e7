"""Field types shared by the resources' request and response models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, StringConstraints

# CRM ids arrive as strings; keep them printable and short (they end up in search attributes).
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$")]

MAX_PAST = timedelta(days=366)
MAX_FUTURE = timedelta(days=366 * 10)


def _in_range(value: datetime) -> datetime:
    now = datetime.now(UTC)
    if not now - MAX_PAST <= value <= now + MAX_FUTURE:
        raise ValueError("must be within one year in the past and ten years in the future")
    return value


def _text_only(value: object) -> object:
    # pydantic would take a number as a Unix time; the API promises RFC 3339 text.
    if isinstance(value, int | float):
        raise ValueError("must be an RFC 3339 date-time string with an offset, not a number")
    return value


# An RFC 3339 time with an offset; naive times are refused, since nobody can tell which zone they meant.
DueTime = Annotated[
    AwareDatetime,
    BeforeValidator(_text_only),
    AfterValidator(_in_range),
    Field(description="RFC 3339 date-time with an offset, e.g. 2026-12-01T10:00:00+01:00."),
]
