"""Read and write the caller's row of `user_settings`, in their organization only."""

from __future__ import annotations

from datetime import UTC, datetime, time

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from core.auth import Principal
from core.db import tenant_transaction
from core.models import UserSettings
from web.me.schemas import QuietHours, UserSettingsBody
from web.resources import Resources


def _clock(value: time) -> str:
    return value.strftime("%H:%M")


def body_of(row: UserSettings | None) -> UserSettingsBody:
    if row is None:
        return UserSettingsBody()
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        quiet = QuietHours(start=_clock(row.quiet_start), end=_clock(row.quiet_end))
    return UserSettingsBody.model_validate(
        {
            "email": row.email,
            "email_unread_after_seconds": row.email_unread_after_seconds,
            "quiet_hours": quiet,
            "timezone": row.timezone,
        }
    )


async def get_settings(res: Resources, who: Principal) -> UserSettingsBody:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        row = await session.scalar(
            select(UserSettings).where(
                UserSettings.organization_id == who.organization_id, UserSettings.user_id == who.user_id
            )
        )
        return body_of(row)


async def put_settings(res: Resources, who: Principal, body: UserSettingsBody) -> UserSettingsBody:
    start, end = body.quiet_hours.times() if body.quiet_hours else (None, None)
    values = {
        "email": body.email,
        "email_unread_after_seconds": body.email_unread_after_seconds,
        "quiet_start": start,
        "quiet_end": end,
        "timezone": body.timezone,
        "updated_at": datetime.now(UTC),
    }
    statement = (
        insert(UserSettings)
        .values(organization_id=who.organization_id, user_id=who.user_id, **values)
        .on_conflict_do_update(index_elements=["organization_id", "user_id"], set_=values)
    )
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        await session.execute(statement)
    return body
