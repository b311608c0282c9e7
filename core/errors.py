"""The one error base class. Every error a client can cause is a subclass with a 4xx status.

TicklerError            500, never raised for client mistakes
├── Unauthorized        401, no or bad credentials
├── Forbidden           403, good credentials without the role the route needs (the codec endpoint)
├── NotFound            404, also for ids of other organizations
├── Conflict            409, the change clashes with the task's state
├── Unprocessable       422, well-formed but invalid input
├── TooManyRequests     429, a limit was reached; retry after `retry_after` seconds
└── Unavailable         503, a dependency is down or too slow; retry after `retry_after` seconds
"""

from __future__ import annotations

from typing import Any

# What a 503 tells clients to wait: long enough that a fleet of them does not hammer a dependency that
# is coming back, short against the outages it covers (a restart, a lock held for a while).
UNAVAILABLE_RETRY_AFTER = 5


class TicklerError(Exception):
    status = 500
    title = "Internal Server Error"
    type = "about:blank"
    # Seconds until a retry can succeed, when the error says (header Retry-After and the body's field).
    retry_after: int | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def problem(self) -> dict[str, Any]:
        """RFC 9457 problem details."""
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class Unauthorized(TicklerError):
    status = 401
    title = "Unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(TicklerError):
    status = 403
    title = "Forbidden"


class NotFound(TicklerError):
    status = 404
    title = "Not Found"


class Conflict(TicklerError):
    status = 409
    title = "Conflict"


class Unprocessable(TicklerError):
    status = 422
    title = "Unprocessable Content"


class TooManyRequests(TicklerError):
    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class Unavailable(TicklerError):
    status = 503
    title = "Service Unavailable"

    def __init__(self, detail: str, *, retry_after: int = UNAVAILABLE_RETRY_AFTER) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after
