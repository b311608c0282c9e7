"""``GET /v1/notifications/stream``: each user's notifications as Server-Sent Events (web/stream/service.py
says how a stream never skips nor repeats a row), and the bound on how long a stream's write may wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import cast

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from quart import Blueprint, Quart, Response, request
from quart.blueprints import BlueprintSetupState

from web import access
from web.auth import authenticated, principal
from web.problems import problems, responds
from web.resources import EXTENSION_KEY, Resources, resources
from web.stream import service

log = logging.getLogger(__name__)

PATH = "/v1/notifications/stream"

blueprint = Blueprint("stream", __name__)


@blueprint.get(PATH)
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

    Send `Last-Event-ID` (or `?last_event_id=` on a fresh page) to replay what came after that id. An id
    above your newest notification cannot be replayed: the stream starts from your newest one instead and
    says so first with `event: resync` (data `{"last_event_id": N}`, `id: N`); read your inbox again.
    Each stream's `retry:` is jittered, so that clients do not all come back at once.

    Beside them, without `id:`: `event: notification.read` (read state, for your other tabs) and
    `event: task.changed` (a task of yours created or changed anywhere, as `GET /v1/tasks/<id>` shows
    it; also sent to the assignee it left). Neither is replayed: read the inbox and the list again after
    a reconnect.
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


# -- a client that stops reading -------------------------------------------------------------------


class BoundedWrites:
    """ASGI middleware: a write of a stream that its client has not taken within
    TICKLER_SSE_WRITE_TIMEOUT_SECONDS ends the stream and resets its connection.

    Hypercorn has no write timeout (pgjones/hypercorn#262 proposed one): when a client stops reading, the
    send of the next event waits on the socket for ever, the stream's coroutine with it, holding its slot.
    Ending the response is not enough either: Hypercorn then closes the connection gracefully, which waits
    for the unsent bytes to go out, for ever too. So the connection is reset.
    """

    def __init__(self, app: Quart) -> None:
        self.app = app
        self.asgi_app = app.asgi_app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        res: Resources | None = self.app.extensions.get(EXTENSION_KEY)
        if scope["type"] != "http" or scope["path"] != PATH or res is None:
            await self.asgi_app(scope, receive, send)
            return
        seconds = res.settings.sse_write_timeout_seconds

        async def send_within(message: ASGISendEvent) -> None:
            try:
                async with asyncio.timeout(seconds):
                    await send(message)
            except TimeoutError:
                log.warning("cut off a stream that took no write in %s s (%s)", seconds, scope["client"])
                access.stream_ended(f"took no write in {seconds} s")
                res.metrics.streams_cut_off.labels("write_timeout").inc()
                # HTTP/2 multiplexes other requests on the connection: there, only this response ends.
                if scope["http_version"] in ("1.0", "1.1"):
                    _reset(send)
                # Quart ends the response (and closes the stream's generator, which frees its slot).
                raise

        await self.asgi_app(scope, receive, send_within)


@blueprint.record_once
def _bound_writes(state: BlueprintSetupState) -> None:
    # Registered with the route, so that no app serves streams without the bound.
    app = cast(Quart, state.app)
    app.asgi_app = BoundedWrites(app)  # type: ignore[method-assign]


def _reset(send: ASGISendCallable) -> None:
    """Drop the connection at once, its unsent bytes with it (an RST, not a FIN after them)."""
    # Hypercorn's asyncio worker hands the app HTTPStream.app_send, which passes events to the protocol's
    # stream_send, which passes bytes to TCPServer.protocol_send; the TCPServer holds the StreamWriter.
    # No public API reaches the connection; tests/test_delivery.py fails should this path change.
    hop: object = send
    for _ in range(3):
        owner = getattr(hop, "__self__", None)
        writer = getattr(owner, "writer", None)
        if isinstance(writer, asyncio.StreamWriter):
            sock = writer.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        hop = getattr(owner, "send", None)
    log.warning("found no connection to reset; it closes once its client reads or goes away")
