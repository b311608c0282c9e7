"""One error model for every route: RFC 9457 ``application/problem+json``. A 500 reveals nothing."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from quart import Quart, Response, json
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from core.errors import TicklerError

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
        None, ge=1, description="429: seconds until a retry can succeed; also in the Retry-After header."
    )


def problem_response(problem: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(problem), status=status, content_type=PROBLEM_JSON, headers=headers)


def _validation_errors(error: Exception) -> list[dict[str, str]]:
    if isinstance(error, ValidationError):
        return [
            {"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in error.errors(include_url=False)
        ]
    return [{"field": "", "message": str(error)}]


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
        log.exception("unhandled error")
        problem = {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "Something went wrong on our side; it has been logged.",
        }
        return problem_response(problem, 500)
