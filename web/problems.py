"""What each route can answer, in the OpenAPI document: its problems, and what quart-schema leaves out.

quart-schema documents a route's success model and its inputs. This adds, from one decorator per route,
the RFC 9457 problems it can answer (``web.errors.Problem``, as ``application/problem+json``) with their
headers; and, for every route, what a client needs to know to be accepted: that a declared body is
required, and the bounds of the ids in its path. Successes quart-schema cannot state (no body, a stream,
a hand-built Response) are declared with ``responds``::

    @blueprint.delete("/<uuid:task_id>")
    @problems(401, 404, 409, 429, 503)
    @responds(204, "Cancelled.")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from quart_schema import OpenAPIProvider
from werkzeug.routing import BaseConverter, IntegerConverter, Rule, UUIDConverter

from web.access import REQUEST_ID_HEADER, SANE_ID
from web.errors import PROBLEM_JSON, Problem

F = TypeVar("F", bound=Callable[..., Any])

RESPONSES_ATTRIBUTE = "_tickler_responses"
COMPONENT_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Header:
    description: str
    schema: dict[str, Any]
    required: bool = False

    def openapi(self) -> dict[str, Any]:
        return {"description": self.description, "required": self.required, "schema": self.schema}


@dataclass(frozen=True)
class Documented:
    """One response of a route, as ``problems`` and ``responds`` declare it."""

    description: str
    media_type: str | None = None
    model: type[BaseModel] | None = None
    schema: dict[str, Any] | None = None
    headers: dict[str, Header] = field(default_factory=dict)


WWW_AUTHENTICATE = Header("The scheme to authenticate with: `Bearer`.", {"type": "string"}, required=True)
RETRY_AFTER = Header("Seconds until a retry can succeed.", {"type": "integer", "minimum": 1}, required=True)
# On every answer (web/access.py); documented with the problems, whose `instance` it is.
REQUEST_ID = Header(
    "This request's id: the client's X-Request-ID when it is sane (1 to 128 of `A-Za-z0-9+/=._:-`), else "
    "a new one.",
    {"type": "string", "pattern": f"^{SANE_ID.pattern}$"},
    required=True,
)


def _problem(description: str, **headers: Header) -> Documented:
    headers = {REQUEST_ID_HEADER: REQUEST_ID, **headers}
    return Documented(description, media_type=PROBLEM_JSON, model=Problem, headers=headers)


# What each status means on this API. Where it comes from: 400, 413 and 415 from reading a JSON body
# (web/requests.py, MAX_CONTENT_LENGTH); 401 and 429 from `authenticated`; 404 from routing (an id of the
# wrong form) and the services; 422 from the request models and the checks behind them; 409 and 503 from
# the services.
PROBLEMS: dict[int, Documented] = {
    400: _problem("The body is not valid JSON."),
    401: _problem("No credentials, or invalid or expired ones.", **{"WWW-Authenticate": WWW_AUTHENTICATE}),
    403: _problem("Your token lacks the role this needs (e.g. `admin` for webhooks)."),
    404: _problem("Nothing with this id is yours (ids of other organizations included)."),
    409: _problem(
        "Clashes with the task's state: it is done or cancelled; on a create, the Idempotency-Key names a "
        "task that is closed or was made from another body."
    ),
    413: _problem("The body is larger than 64 KiB."),
    415: _problem("The body is missing or not sent with `Content-Type: application/json`."),
    422: _problem("Well-formed but invalid; `errors` names each invalid field where it can."),
    429: _problem("Too many requests; retry after `Retry-After` seconds.", **{"Retry-After": RETRY_AFTER}),
    503: _problem(
        "A dependency (PostgreSQL, Redis, Temporal, the worker or the rule runner) is down or did not answer "
        "in time; retry after `Retry-After` seconds.",
        **{"Retry-After": RETRY_AFTER},
    ),
}


def _declare(func: F, responses: dict[int, Documented]) -> F:
    # A new dict each time: functools.wraps shares the wrapped function's attribute values with the wrapper.
    setattr(func, RESPONSES_ATTRIBUTE, {**getattr(func, RESPONSES_ATTRIBUTE, {}), **responses})
    return func


def problems(*statuses: int) -> Callable[[F], F]:
    """Declare the problem statuses a route can answer (see PROBLEMS)."""
    unknown = set(statuses) - PROBLEMS.keys()
    if unknown:
        raise ValueError(f"no description of status {sorted(unknown)} in PROBLEMS")

    def decorator(func: F) -> F:
        return _declare(func, {status: PROBLEMS[status] for status in statuses})

    return decorator


def responds(
    status: int,
    description: str = "",
    *,
    model: type[BaseModel] | None = None,
    media_type: str | None = None,
    schema: dict[str, Any] | None = None,
    headers: dict[str, Header] | None = None,
) -> Callable[[F], F]:
    """Declare a success quart-schema cannot state, or headers of one it does (they are merged into it)."""
    documented = Documented(
        description,
        media_type=media_type or ("application/json" if model is not None else None),
        model=model,
        schema=schema,
        headers=headers or {},
    )

    def decorator(func: F) -> F:
        return _declare(func, {status: documented})

    return decorator


def _model_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=COMPONENT_REF, mode="serialization")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": COMPONENT_REF.format(model=model.__name__)}


def _response_object(documented: Documented, components: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": documented.description}
    schema = documented.schema
    if documented.model is not None:
        schema = _model_schema(documented.model, components)
    if documented.media_type is not None:
        response["content"] = {documented.media_type: {"schema": schema or {}}}
    if documented.headers:
        response["headers"] = {name: header.openapi() for name, header in documented.headers.items()}
    return response


class ContractOpenAPIProvider(OpenAPIProvider):
    """quart-schema's document, completed with what each route declares and what it refuses."""

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        declared: dict[int, Documented] = getattr(
            self._app.view_functions[rule.endpoint], RESPONSES_ATTRIBUTE, {}
        )
        added = {status: _response_object(documented, components) for status, documented in declared.items()}
        for path_item in paths.values():
            for operation in path_item.values():
                # Methods of one rule share their dicts (a shallow copy each): replace, never mutate.
                responses = dict(operation["responses"])
                for status, response in added.items():
                    if status in responses:
                        # Headers (and a description) for a response quart-schema documents.
                        responses[status] = {**responses[status], **{k: v for k, v in response.items() if v}}
                    else:
                        responses[status] = response
                operation["responses"] = dict(sorted(responses.items()))
                if "requestBody" in operation:
                    # Without a body the route answers 415 (web/requests.py): the body is not optional.
                    operation["requestBody"] = {**operation["requestBody"], "required": True}
        return paths, components

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        # What the route's converter matches; anything else is a 404 from routing.
        if isinstance(converter, UUIDConverter):
            parameter["schema"] = {"type": "string", "format": "uuid", "pattern": f"^{converter.regex}$"}
        elif isinstance(converter, IntegerConverter):
            schema: dict[str, Any] = {"type": "integer"}
            low = converter.min if converter.signed else max(converter.min or 0, 0)
            if low is not None:
                schema["minimum"] = low
            if converter.max is not None:
                schema["maximum"] = converter.max
            parameter["schema"] = schema
        return parameter
