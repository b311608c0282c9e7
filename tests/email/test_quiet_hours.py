"""When an escalation email may go, and what it is (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from core.mail import message_id, quiet_until


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("now", "start", "end", "zone", "until"),
    [
        # Same-day hours, in and out.
        ("2026-12-01T13:30:00+00:00", "13:00", "14:00", "UTC", "2026-12-01T14:00:00+00:00"),
        ("2026-12-01T14:00:00+00:00", "13:00", "14:00", "UTC", None),
        ("2026-12-01T12:59:59+00:00", "13:00", "14:00", "UTC", None),
        # Over midnight: before it, after it, and the day between.
        ("2026-12-01T22:00:00+00:00", "20:00", "08:00", "UTC", "2026-12-02T08:00:00+00:00"),
        ("2026-12-02T07:59:00+00:00", "20:00", "08:00", "UTC", "2026-12-02T08:00:00+00:00"),
        ("2026-12-02T12:00:00+00:00", "20:00", "08:00", "UTC", None),
        # In the user's zone: 20:00-08:00 in São Paulo (UTC-3) is 23:00-11:00 UTC.
        ("2026-12-01T22:30:00+00:00", "20:00", "08:00", "America/Sao_Paulo", None),
        ("2026-12-01T23:30:00+00:00", "20:00", "08:00", "America/Sao_Paulo", "2026-12-02T11:00:00+00:00"),
        # Lisbon springs forward on 2026-03-29 at 01:00 (to 02:00): quiet until 08:00 local is 07:00 UTC.
        ("2026-03-29T00:30:00+00:00", "22:00", "08:00", "Europe/Lisbon", "2026-03-29T07:00:00+00:00"),
    ],
)
def test_an_email_in_quiet_hours_waits_for_their_end(
    now: str, start: str, end: str, zone: str, until: str | None
) -> None:
    found = quiet_until(at(now), time.fromisoformat(start), time.fromisoformat(end), zone)
    assert found == (at(until) if until else None)
    if found is not None:
        assert found.tzinfo == UTC


def test_no_quiet_hours_never_wait() -> None:
    assert quiet_until(datetime.now(UTC), None, None, "UTC") is None


def test_the_message_id_is_the_notifications_for_every_attempt() -> None:
    first = message_id("org-1", 42, "Tickler <tickler@example.com>")
    assert first == message_id("org-1", 42, "Tickler <tickler@example.com>")
    assert first == "<notification-42.org-1@example.com>"
    assert message_id("org-1", 43, "Tickler <tickler@example.com>") != first
