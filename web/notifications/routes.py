"""The inbox: a user's notifications, newest first."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import validate_querystring, validate_response
from sqlalchemy import select

from core.models import Notification, notification_message
from web.auth import authenticated, principal
from web.notifications.schemas import NotificationOut, NotificationPage, NotificationQuery
from web.resources import resources

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/notifications")


@blueprint.get("")
@authenticated
@validate_querystring(NotificationQuery)
@validate_response(NotificationPage)
async def list_notifications(query_args: NotificationQuery) -> NotificationPage:
    """Your notifications in your organization, newest first, a page at a time."""
    who = principal()
    stmt = (
        select(Notification)
        .where(Notification.organization_id == who.organization_id, Notification.user_id == who.user_id)
        .order_by(Notification.id.desc())
        .limit(query_args.limit + 1)
    )
    if query_args.cursor is not None:
        stmt = stmt.where(Notification.id < int(query_args.cursor))
    async with resources().sessionmaker() as session:
        rows = (await session.scalars(stmt)).all()
    page = rows[: query_args.limit]
    more = len(rows) > query_args.limit
    return NotificationPage(
        items=[NotificationOut.model_validate(notification_message(n)) for n in page],
        next_cursor=str(page[-1].id) if more else None,
    )
