"""The inbox: a user's notifications, newest first, and their read state."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import validate_querystring, validate_response

from core.models import notification_message
from web.auth import authenticated, principal
from web.notifications import service
from web.notifications.schemas import (
    NotificationOut,
    NotificationPage,
    NotificationQuery,
    ReadAllResult,
    UnreadCount,
)
from web.problems import problems
from web.resources import resources

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/notifications")


@blueprint.get("")
@problems(401, 422, 429, 503)
@authenticated
@validate_querystring(NotificationQuery)
@validate_response(NotificationPage)
async def list_notifications(query_args: NotificationQuery) -> NotificationPage:
    """Your notifications in your organization, newest first, a page at a time; `unread=true` filters."""
    rows, cursor = await service.page(resources(), principal(), query_args)
    items = [NotificationOut.model_validate(notification_message(n)) for n in rows]
    return NotificationPage(items=items, next_cursor=cursor)


@blueprint.get("/unread-count")
@problems(401, 429, 503)
@authenticated
@validate_response(UnreadCount)
async def unread_count() -> UnreadCount:
    """How many of your notifications are unread: the bell's badge."""
    return UnreadCount(count=await service.unread_count(resources(), principal()))


@blueprint.post("/<int(max=9223372036854775807):notification_id>/read")
@problems(401, 404, 429, 503)
@authenticated
@validate_response(NotificationOut)
async def mark_read(notification_id: int) -> NotificationOut:
    """Mark one notification read; your other tabs get `event: notification.read`."""
    row = await service.set_read(resources(), principal(), notification_id, read=True)
    return NotificationOut.model_validate(notification_message(row))


@blueprint.post("/<int(max=9223372036854775807):notification_id>/unread")
@problems(401, 404, 429, 503)
@authenticated
@validate_response(NotificationOut)
async def mark_unread(notification_id: int) -> NotificationOut:
    """Mark one notification unread again; your other tabs get `event: notification.read`."""
    row = await service.set_read(resources(), principal(), notification_id, read=False)
    return NotificationOut.model_validate(notification_message(row))


@blueprint.post("/read-all")
@problems(401, 429, 503)
@authenticated
@validate_response(ReadAllResult)
async def read_all() -> ReadAllResult:
    """Mark every notification of yours read."""
    updated, unread = await service.read_all(resources(), principal())
    return ReadAllResult(updated=updated, unread_count=unread)
