"""Email escalation's activity (issue 18): mail one notification if it is still unread, outside its
user's quiet hours; mark it mailed. Started by the task workflow's delivery (activities/tasks.py,
``Escalations``); retried with backoff by its workflow (workflows/email.py) while the SMTP server fails."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import aiosmtplib
import jinja2
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client

from core.db import tenant_transaction
from core.mail import quiet_until, reminder_email
from core.models import Notification, UserSettings
from core.payloads import (
    EMAIL_NOTIFICATION,
    EMAIL_WORKFLOW,
    EmailInput,
    EmailOutcome,
    email_workflow_id,
)
from core.settings import Settings
from core.temporal import start_once

log = logging.getLogger(__name__)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("activities", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


class SmtpNotConfigured(Exception):
    """TICKLER_SMTP_HOST is empty: the escalation waits (retried) until a worker has one."""


def _span(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    if seconds % 60 == 0:
        return f"{seconds // 60} minute(s)"
    return f"{seconds} seconds"


class EmailActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings

    @activity.defn(name=EMAIL_NOTIFICATION)
    async def email_notification(self, input: EmailInput) -> EmailOutcome:
        now = datetime.now(UTC)
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            found = (
                await session.execute(
                    select(Notification, UserSettings)
                    .outerjoin(
                        UserSettings,
                        (UserSettings.organization_id == Notification.organization_id)
                        & (UserSettings.user_id == Notification.user_id),
                    )
                    .where(
                        Notification.id == input.notification_id,
                        Notification.organization_id == input.organization_id,
                    )
                )
            ).first()
        if found is None:
            return EmailOutcome(result="gone")
        notification, user = found
        # Read state at send time: a notification read first is never mailed.
        if notification.emailed_at is not None:
            return EmailOutcome(result="sent")
        if notification.read_at is not None:
            return EmailOutcome(result="read")
        if user is None or user.email is None or user.email_unread_after_seconds is None:
            return EmailOutcome(result="off")
        due = notification.created_at + timedelta(seconds=user.email_unread_after_seconds)
        if now < due:
            return EmailOutcome(result="waiting", wait_until=due)
        quiet_end = quiet_until(now, user.quiet_start, user.quiet_end, user.timezone)
        if quiet_end is not None:
            return EmailOutcome(result="quiet hours", wait_until=quiet_end)
        await self._send(notification, user, now)
        async with tenant_transaction(self.sessionmaker, input.organization_id) as session:
            await session.execute(
                update(Notification)
                .where(Notification.id == input.notification_id, Notification.emailed_at.is_(None))
                .values(emailed_at=now)
            )
        activity.logger.info(
            "notification %d mailed", input.notification_id, extra={"organization_id": input.organization_id}
        )
        return EmailOutcome(result="sent")

    async def _send(self, notification: Notification, user: UserSettings, now: datetime) -> None:
        settings = self.settings
        if not settings.smtp_host:
            raise SmtpNotConfigured("TICKLER_SMTP_HOST is not set: no SMTP server to send the email to")
        assert user.email is not None
        assert user.email_unread_after_seconds is not None
        title = str(notification.payload.get("title", "a task"))
        due = notification.due_at.astimezone(ZoneInfo(user.timezone)).strftime("%a %d %b %Y, %H:%M")
        fields = {
            "title": title,
            "due": due,
            "zone": user.timezone,
            "link": settings.public_url,
            "delay": _span(user.email_unread_after_seconds),
        }
        message = reminder_email(
            sender=settings.email_from,
            to=user.email,
            subject=f"Reminder: {title}",
            text=_TEMPLATES.get_template("reminder.txt").render(fields),
            html=_TEMPLATES.get_template("reminder.html").render(fields),
            organization_id=notification.organization_id,
            notification_id=notification.id,
            now=now,
        )
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            use_tls=settings.smtp_security == "tls",
            start_tls=settings.smtp_security == "starttls",
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout_seconds,
        )


class Escalations:
    """Starts a notification's escalation when its user has one set: from the task workflow's delivery,
    whose retries make the start durable. The workflow id is the notification's, so a second start (a
    retried delivery) finds it taken and does nothing."""

    def __init__(
        self, client: Client, task_queue: str, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.sessionmaker = sessionmaker

    async def consider(self, organization_id: str, notification_id: int) -> None:
        async with tenant_transaction(self.sessionmaker, organization_id) as session:
            found = (
                await session.execute(
                    select(
                        Notification.created_at,
                        Notification.read_at,
                        Notification.emailed_at,
                        UserSettings.email_unread_after_seconds,
                        UserSettings.email,
                    )
                    .join(
                        UserSettings,
                        (UserSettings.organization_id == Notification.organization_id)
                        & (UserSettings.user_id == Notification.user_id),
                    )
                    .where(
                        Notification.id == notification_id, Notification.organization_id == organization_id
                    )
                )
            ).first()
        if found is None or found.email is None or found.email_unread_after_seconds is None:
            return
        if found.read_at is not None or found.emailed_at is not None:
            return
        send_after = found.created_at + timedelta(seconds=found.email_unread_after_seconds)
        input = EmailInput(
            organization_id=organization_id, notification_id=notification_id, send_after=send_after
        )
        await start_once(
            self.client,
            EMAIL_WORKFLOW,
            input,
            email_workflow_id(organization_id, notification_id),
            self.task_queue,
        )
