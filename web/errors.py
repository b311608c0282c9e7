"""One error model for every route: RFC 9457 ``application/problem+json``. A 500 reveals nothing.

A dependency that is down or too slow (PostgreSQL, Redis) is not a bug: its errors answer 503 with
Retry-After, once the timeouts of core/db.py and core/pubsub.py have ended the wait.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from quart import Quart, Response, json
from quart_schema import RequestSchemaValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from core.errors import TicklerError, Unavailable
from web.access import INSTANCE_PREFIX, problem_instance

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    # Empty, like the JSON Pointer of a whole document, for the body as a whole: a name such as "(body)"
    # reads as a property (schemathesis's error feedback took it for a required one).
    field: str = Field(
        description="Dotted path of the field, e.g. `recurrence.every`; empty: the whole body."
    )
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error answer (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What went wrong and what to change.")
    # Present only on the answers that need them: the schema says "absent", never "null".
    errors: list[FieldError] | SkipJsonSchema[None] = Field(
        None, description="422: each invalid field and what is wrong with it."
    )
    retry_after: int | SkipJsonSchema[None] = Field(
        None, ge=1, description="429, 503: seconds until a retry can succeed; also in the Retry-After header."
    )
    instance: str | SkipJsonSchema[None] = Field(
        None,
        description=(
            f"This request: `{INSTANCE_PREFIX}` and its id, the X-Request-ID of the answer. Quote it to the "
            "operators: every line they logged about the request carries the id."
        ),
    )


def problem_response(problem: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    """The answer of a problem, which names the request it answers (``instance``) when there is one."""
    instance = problem_instance()
    if instance is not None:
        problem = {**problem, "instance": instance}
    return Response(json.dumps(problem), status=status, content_type=PROBLEM_JSON, headers=headers)


def _validation_errors(error: Exception) -> list[dict[str, str]]:
    if isinstance(error, ValidationError):
        return [
            {"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in error.errors(include_url=False)
        ]
    return [{"field": "", "message": str(error)}]


# SQLSTATE classes and codes of a database that is down, restarting, overloaded or too slow: 08 connection
# exception, 53 insufficient resources (too many connections), 57 operator intervention (57014 is
# statement_timeout, 57P01 a shutdown), 55P03 lock_not_available (lock_timeout).
UNAVAILABLE_SQLSTATES = ("08", "53", "57", "55P03")


def dependency_unavailable(error: BaseException) -> Unavailable | None:
    """The 503 for an error of a dependency that is down or did not answer in time; None for any other."""
    if isinstance(error, RedisTimeoutError | RedisConnectionError):
        what = "Redis"
    elif isinstance(error, PoolTimeoutError):
        what = "The database"  # every pooled connection busy for the connect timeout
    elif isinstance(error, DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None) or ""
        if not (error.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)):
            return None
        what = "The database"
    elif isinstance(error, TimeoutError | ConnectionError | socket.gaierror):
        # asyncpg's connect and its command_timeout raise these unwrapped (SQLAlchemy passes them on).
        what = "A service the API needs"
    else:
        return None
    return Unavailable(f"{what} is unavailable or did not answer in time; retry shortly.")


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(TicklerError)
    async def tickler_error(error: TicklerError) -> Response:
        return problem_response(error.problem(), error.status, error.headers)

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid_request(error: RequestSchemaValidationError) -> Response:
        errors = _validation_errors(error.validation_error)
        detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
        problem = {
            "type": "about:blank",
            "title": "Unprocessable Content",
            "status": 422,
            "detail": f"The request is invalid. {detail}",
            "errors": errors,
        }
        return problem_response(problem, 422)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        detail = error.description or error.name
        problem = {"type": "about:blank", "title": error.name, "status": status, "detail": detail}
        headers = dict(error.get_headers())
        headers.pop("Content-Type", None)
        return problem_response(problem, status, headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        unavailable = dependency_unavailable(error)
        if unavailable is not None:
            # The driver's own error: SQLAlchemy's text would add the statement's parameters to the log.
            log.warning("answered 503: %r", getattr(error, "orig", None) or error)
            return problem_response(unavailable.problem(), unavailable.status, unavailable.headers)
        log.exception("unhandled error")
        problem = {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "Something went wrong on our side; it has been logged.",
        }
        return problem_response(problem, 500)
