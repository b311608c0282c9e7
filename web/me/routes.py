"""`/v1/me/settings`: the caller's own settings."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import validate_request, validate_response

from web.auth import authenticated, principal
from web.me import service
from web.me.schemas import UserSettingsBody
from web.problems import problems
from web.resources import resources

blueprint = Blueprint("me", __name__, url_prefix="/v1/me")


@blueprint.get("/settings")
@problems(401, 429, 503)
@authenticated
@validate_response(UserSettingsBody)
async def get_settings() -> UserSettingsBody:
    """Your settings: where and when unread reminders are mailed, your quiet hours and time zone."""
    return await service.get_settings(resources(), principal())


@blueprint.put("/settings")
@problems(400, 401, 413, 415, 422, 429, 503)
@authenticated
@validate_request(UserSettingsBody)
@validate_response(UserSettingsBody)
async def put_settings(data: UserSettingsBody) -> UserSettingsBody:
    """Replace your settings. A notification is mailed once it has stayed unread
    `email_unread_after_seconds`, never in your quiet hours (it waits for their end)."""
    return await service.put_settings(resources(), principal(), data)
