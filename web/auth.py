"""Bearer authentication: every route but the health check needs a valid token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from quart import g, request

from core.auth import Principal, verify_token
from core.errors import Unauthorized
from web.resources import resources

P = ParamSpec("P")
R = TypeVar("R")


def authenticated(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Send the token from your CRM as `Authorization: Bearer <token>`.")
        g.principal = verify_token(resources().settings, token.strip())
        return await func(*args, **kwargs)

    return wrapper


def principal() -> Principal:
    current: Principal = g.principal
    return current
