"""One error model for every route: RFC 9457 ``application/problem+json``. A 500 reveals nothing."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from quart import Quart, Response, json
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from core.errors import TicklerError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(problem: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(problem), status=status, content_type=PROBLEM_JSON, headers=headers)


def _validation_errors(error: Exception) -> list[dict[str, str]]:
    if isinstance(error, ValidationError):
        return [
            {"field": ".".join(str(part) for part in e["loc"]) or "(body)", "message": e["msg"]}
            for e in error.errors(include_url=False)
        ]
    return [{"field": "(body)", "message": str(error)}]


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(TicklerError)
    async def tickler_error(error: TicklerError) -> Response:
        return problem_response(error.problem(), error.status, error.headers)

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid_request(error: RequestSchemaValidationError) -> Response:
        errors = _validation_errors(error.validation_error)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
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
