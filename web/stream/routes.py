"""``GET /v1/notifications/stream``: each user's notifications as Server-Sent Events (web/stream/service.py
says how a stream never skips nor repeats a row)."""

from __future__ import annotations

from quart import Blueprint, Response, request

from web.auth import authenticated, principal
from web.problems import problems, responds
from web.resources import resources
from web.stream import service

blueprint = Blueprint("stream", __name__)


@blueprint.get("/v1/notifications/stream")
@problems(401, 429)
@responds(
    200,
    "Server-Sent Events until the token expires (`event: session.expired`) or the client leaves.",
    media_type="text/event-stream",
    schema={"type": "string"},
)
@authenticated
async def stream() -> Response:
    """Your notifications as Server-Sent Events (`event: notification`, `id:` = notification id).

    Send `Last-Event-ID` (or `?last_event_id=` on a fresh page) to replay what came after that id.
    """
    res = resources()
    who = principal()
    service.check_stream_limit(res, who)
    last_id = service.parse_last_event_id(
        request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    )
    response = Response(
        service.events(res, who, last_id),
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    # Quart ends responses after RESPONSE_TIMEOUT; a stream lives until the client or server ends it.
    response.timeout = None
    return response
