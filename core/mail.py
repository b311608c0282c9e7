"""Email escalation's parts that need no server (issue 18): when an email may go (quiet hours) and the
message itself. The sending, the read-state check and the retries are activities/email.py's and
workflows/email.py's."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo


def quiet_until(now: datetime, start: time | None, end: time | None, zone: str) -> datetime | None:
    """The end (UTC) of the quiet hours ``now`` falls in, or None outside them (or without any).

    ``start`` and ``end`` are wall-clock times in ``zone``; an ``end`` before ``start`` spans midnight.
    An end that does not exist that day (a spring-forward gap) is taken as the zone maps it, later."""
    if start is None or end is None or start == end:
        return None
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= clock < end:
            return None
        ends_on = local.date()
    else:
        if end <= clock < start:
            return None
        ends_on = local.date() + timedelta(days=1) if clock >= start else local.date()
    return datetime.combine(ends_on, end, tzinfo=tz).astimezone(UTC)


def message_id(organization_id: str, notification_id: int, sender: str) -> str:
    """The same for every attempt at one notification's email: receivers drop a repeat."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "tickler.invalid"
    return f"<notification-{notification_id}.{organization_id}@{domain}>"


def reminder_email(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str,
    organization_id: str,
    notification_id: int,
    now: datetime,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(now)
    message["Message-ID"] = message_id(organization_id, notification_id, sender)
    # Mail clients and servers: an automatic message, not to be answered by an auto-reply.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message
