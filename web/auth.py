"""Authentication of every route but the health check: a bearer token, or the browser's session cookie.

An EventSource cannot send headers, and a token in a URL leaks into logs: browsers use the cookie that
``POST /v1/session`` sets from a bearer token. A token in the query string is refused outright.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from quart import g, request

from core.auth import Principal
from core.errors import Unauthorized
from web.resources import resources

P = ParamSpec("P")
R = TypeVar("R")

QUERY_TOKEN_NAMES = ("access_token", "token", "jwt", "authorization")


def bearer_token() -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send the token from your CRM as `Authorization: Bearer <token>`.")
    return token.strip()


def credentials() -> str:
    """The caller's token: the bearer token, else the session cookie's; 401 if neither."""
    if any(name in request.args for name in QUERY_TOKEN_NAMES):
        raise Unauthorized(
            "Tokens in URLs leak into logs and are refused: send `Authorization: Bearer <token>`, or sign "
            "the browser in with POST /v1/session."
        )
    token = bearer_token() or request.cookies.get(resources().settings.session_cookie_name)
    if not token:
        raise Unauthorized(
            "Send the token from your CRM as `Authorization: Bearer <token>` (browsers: POST /v1/session)."
        )
    return token


def authenticated(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        res = resources()
        g.principal = res.verifier.verify(credentials())
        await res.rate_limiter.check(g.principal)
        return await func(*args, **kwargs)

    return wrapper


def principal() -> Principal:
    current: Principal = g.principal
    return current
