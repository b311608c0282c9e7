"""The one error base class. Every error a client can cause is a subclass with a 4xx status.

TicklerError            500, never raised for client mistakes
├── Unauthorized        401, no or bad credentials
├── NotFound            404, also for ids of other organizations
├── Conflict            409, the change clashes with the task's state
├── Unprocessable       422, well-formed but invalid input
├── TooManyRequests     429, a limit was reached; retry after `retry_after` seconds
└── Unavailable         503, a dependency is down; retry later
"""

from __future__ import annotations

from typing import Any


class TicklerError(Exception):
    status = 500
    title = "Internal Server Error"
    type = "about:blank"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> dict[str, str]:
        return {}

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

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Unavailable(TicklerError):
    status = 503
    title = "Service Unavailable"
