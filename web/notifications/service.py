"""Inbox operations. A read-state change is committed, then pushed to the user's other tabs."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Select, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.auth import Principal
from core.db import tenant_transaction
from core.errors import NotFound
from core.models import Notification
from core.payloads import NotificationEvent
from core.pubsub import publish
from web.notifications.schemas import NotificationQuery
from web.resources import Resources

READ_EVENT = "notification.read"


def _mine(who: Principal) -> ColumnElement[bool]:
    return and_(Notification.organization_id == who.organization_id, Notification.user_id == who.user_id)


async def _unread(session: AsyncSession, who: Principal) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Notification).where(_mine(who), Notification.read_at.is_(None))
    )
    return count or 0


def page_query(who: Principal, query: NotificationQuery) -> Select[Notification]:
    stmt = select(Notification).where(_mine(who)).order_by(Notification.id.desc()).limit(query.limit + 1)
    if query.unread is not None:
        stmt = stmt.where(
            Notification.read_at.is_(None) if query.unread else Notification.read_at.is_not(None)
        )
    if query.cursor is not None:
        stmt = stmt.where(Notification.id < int(query.cursor))
    return stmt


async def page(
    res: Resources, who: Principal, query: NotificationQuery
) -> tuple[list[Notification], str | None]:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        rows = list((await session.scalars(page_query(who, query))).all())
    shown = rows[: query.limit]
    return shown, str(shown[-1].id) if len(rows) > query.limit else None


async def unread_count(res: Resources, who: Principal) -> int:
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        return await _unread(session, who)


async def set_read(res: Resources, who: Principal, notification_id: int, read: bool) -> Notification:
    """Mark one notification read (keeping the first read time) or unread, then tell the other tabs."""
    read_at = func.coalesce(Notification.read_at, func.now()) if read else None
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        row = await session.scalar(
            update(Notification)
            .where(_mine(who), Notification.id == notification_id)
            .values(read_at=read_at)
            .returning(Notification)
        )
        if row is None:
            raise NotFound(f"No notification {notification_id} of yours.")
        count = await _unread(session, who)
    await _push(res, who, [row.id], row.read_at, count)
    return row


async def read_all(res: Resources, who: Principal) -> tuple[int, int]:
    now = datetime.now(UTC)
    async with tenant_transaction(res.sessionmaker, who.organization_id) as session:
        ids = list(
            (
                await session.scalars(
                    update(Notification)
                    .where(_mine(who), Notification.read_at.is_(None))
                    .values(read_at=now)
                    .returning(Notification.id)
                )
            ).all()
        )
    if ids:
        await _push(res, who, ids, now, 0)
    return len(ids), 0


async def _push(
    res: Resources, who: Principal, ids: list[int], read_at: datetime | None, unread: int
) -> None:
    # After the commit; at-most-once like every Redis message: a tab that misses it reads the
    # count again when it reconnects.
    await publish(
        res.redis,
        res.hub.channel,
        NotificationEvent(
            organization_id=who.organization_id,
            user_id=who.user_id,
            event=READ_EVENT,
            data={"ids": ids, "read_at": read_at.isoformat() if read_at else None, "unread_count": unread},
        ),
    )
