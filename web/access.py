"""Each request's id, and its line in the access log (logger ``tickler.access``), for every route.

The id is the client's ``X-Request-ID`` when it is sane (``SANE_ID``: a proxy's or a CRM's id, kept so
that their logs and ours meet), else a new one, a uuid4 in hex. It is echoed in the answer's
X-Request-ID, it is the ``instance`` of a problem (``urn:request:<id>``), and it is on every line logged
while the request is served, a stream's included (core.logs.bound). The access line comes once the answer
has ended: for a stream, when the stream ends, with why; a stream also logs when it opens. Successful
probes of /healthz and /readyz are logged at DEBUG: a proxy checks each process every second.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Quart, Response, g, request

from core.logs import bound

log = logging.getLogger("tickler.access")

REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# Bounded, and nothing that could break a log line or a URI: letters, digits and `+/=._:-` (uuids, hex,
# base64 and the ids of common proxies), as Heroku's router judges the header, up to 128 characters.
SANE_ID = re.compile(r"[A-Za-z0-9+/=._:-]{1,128}")
INSTANCE_PREFIX = "urn:request:"
PROBES = frozenset({"/healthz", "/readyz"})


@dataclass
class AccessRecord:
    """What the request's access line says, filled in while it is served."""

    id: str
    method: str
    path: str
    route: str | None = None
    status: int | None = None
    organization_id: str | None = None
    user_id: str | None = None
    stream: bool = False
    stream_end: str | None = None
    # time.perf_counter() when the request arrived.
    started: float = field(default_factory=time.perf_counter)


_current: ContextVar[AccessRecord | None] = ContextVar("tickler_access_record", default=None)


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is sane, else a new id."""
    for name, value in headers:
        if name.lower() == _HEADER_KEY:
            text = value.decode("latin-1")
            if SANE_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def current_record() -> AccessRecord | None:
    """The record of the request served now (None outside one)."""
    return _current.get()


def current_request_id() -> str | None:
    record = _current.get()
    return record.id if record is not None else None


def problem_instance() -> str | None:
    """The ``instance`` of a problem answered now: the request, by its id (None outside a request)."""
    request_id = current_request_id()
    return INSTANCE_PREFIX + request_id if request_id is not None else None


def stream_opened(organization_id: str, user_id: str, last_event_id: int | None) -> None:
    record = _current.get()
    if record is not None:
        record.stream = True
    log.info(
        "stream opened",
        extra={"organization_id": organization_id, "user_id": user_id, "last_event_id": last_event_id},
    )


def stream_ended(reason: str) -> None:
    """Say why the stream of this request ends; the first reason given is the one logged."""
    record = _current.get()
    if record is not None and record.stream_end is None:
        record.stream_end = reason


class AccessLog:
    """ASGI middleware, outermost: gives each HTTP request its id and logs the request once its answer
    has ended."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord(request_id_from(scope["headers"]), scope["method"], scope["path"])
        token = _current.set(record)
        try:
            # Quart starts the request's tasks from here: they all see the record and the bound id. The
            # answer is Quart's to finish (_finish_answer); ``send`` goes on unwrapped, as Hypercorn gave
            # it (web/stream/routes.py reaches the connection through it).
            with bound(request_id=record.id):
                await self.app(scope, receive, send)
        finally:
            _current.reset(token)
            _log(record, time.perf_counter() - record.started)


def _log(record: AccessRecord, seconds: float) -> None:
    fields: dict[str, object] = {
        "request_id": record.id,
        "method": record.method,
        "route": record.route,
        "path": record.path,
        "status": record.status,
        "duration_ms": round(seconds * 1000, 1),
    }
    if record.organization_id is not None:
        fields |= {"organization_id": record.organization_id, "user_id": record.user_id}
    # No status: the client left (or the server stopped) before the app had an answer.
    status = record.status if record.status is not None else "-"
    if record.stream:
        fields["stream_end"] = record.stream_end
        ended = f"stream ended after {seconds:.1f} s ({record.stream_end})"
        message = f"{record.method} {record.path} {status}: {ended}"
    else:
        message = f"{record.method} {record.path} {status} in {seconds * 1000:.1f} ms"
    quiet = record.path in PROBES and record.status is not None and record.status < 400
    log.log(logging.DEBUG if quiet else logging.INFO, message, extra=fields)


async def _finish_answer(response: Response) -> Response:
    """Echo the id; note the status, the route's template and the authenticated caller. Quart runs this
    for every answer, those of its error handlers included."""
    record = _current.get()
    if record is not None:
        response.headers[REQUEST_ID_HEADER] = record.id
        record.status = response.status_code
        if request.url_rule is not None:
            record.route = request.url_rule.rule
        caller = getattr(g, "principal", None)
        if caller is not None:
            record.organization_id, record.user_id = caller.organization_id, caller.user_id
    return response


def install(app: Quart) -> None:
    """Wrap the app (call it last, so that it wraps every other middleware) and finish each answer."""
    app.asgi_app = AccessLog(app.asgi_app)  # type: ignore[method-assign]
    app.after_request(_finish_answer)
