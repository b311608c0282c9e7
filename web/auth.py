"""Authentication of every route but the health check: a bearer token, or the browser's session cookie.

An EventSource cannot send headers, and a token in a URL leaks into logs: browsers use the cookie that
``POST /v1/session`` sets from a bearer token. A token in the query string is refused outright.

A cookie rides along with any request the browser makes, so a state-changing request (POST, PATCH, PUT,
DELETE) authenticated by the cookie alone must come from this site's own pages: its `Sec-Fetch-Site`
(else its `Origin`) says so, or it is refused 403. SameSite=Strict already keeps the cookie off
cross-site requests in today's browsers; this is the server's own check, which does not rest on that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from quart import g, request

from core.auth import Principal
from core.errors import Forbidden, Unauthorized
from web.resources import resources

P = ParamSpec("P")
R = TypeVar("R")

QUERY_TOKEN_NAMES = ("access_token", "token", "jwt", "authorization")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# `none`: the user typed the address or used a bookmark; no page of any site asked for it.
FIRST_PARTY_FETCHES = frozenset({"same-origin", "none"})


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


def _refuse_cross_site() -> None:
    """403 unless this cookie-authenticated change comes from a page of this site (a CSRF attempt)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site.lower() in FIRST_PARTY_FETCHES:
            return
        raise Forbidden(
            f"A change authenticated by the session cookie must come from this site's own pages, and this "
            f"request is {fetch_site} (Sec-Fetch-Site): call from the Tickler page, or send "
            "`Authorization: Bearer <token>`."
        )
    origin = request.headers.get("Origin")
    # Browsers send Origin with every POST, PATCH, PUT and DELETE; a client that sends neither header is
    # no browser (curl, a script holding the cookie), which no other site can drive.
    if origin is None:
        return
    # The host only: behind a TLS proxy the app may see http while the page was https.
    if origin != "null" and urlsplit(origin).netloc.lower() == request.host.lower():
        return
    raise Forbidden(
        f"A change authenticated by the session cookie must come from this site's own pages, and this "
        f"request's Origin is {origin!r}: call from the Tickler page, or send "
        "`Authorization: Bearer <token>`."
    )


def authenticated(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        res = resources()
        g.principal = await res.verifier.verify(credentials())
        if request.method not in SAFE_METHODS and bearer_token() is None:
            _refuse_cross_site()
        await res.rate_limiter.check(g.principal)
        return await func(*args, **kwargs)

    return wrapper


def principal() -> Principal:
    current: Principal = g.principal
    return current
