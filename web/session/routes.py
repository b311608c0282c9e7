"""The browser's session: a POST with the CRM's bearer token sets an HttpOnly cookie holding it.

The cookie is SameSite=Strict (no cross-site request carries it) and expires with the token; a stream
opened with it ends when the token does.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, json
from quart_schema import security_scheme, validate_request, validate_response

from core.auth import OPERATOR_ROLE, Principal, mint_token
from core.errors import NotFound, Unauthorized
from web.auth import authenticated, bearer_token, principal
from web.problems import Header, problems, responds
from web.resources import resources
from web.schemas import Identifier

blueprint = Blueprint("session", __name__, url_prefix="/v1/session")

DEV_SESSION_SECONDS = 12 * 3600

SESSION_COOKIE = Header(
    "The session cookie: HttpOnly, SameSite=Strict, expiring with the token.", {"type": "string"}
)


class SessionOut(BaseModel):
    user_id: str
    organization_id: str
    expires_at: datetime


class DevSignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    organization_id: Identifier
    operator: bool = Field(
        False,
        description=(
            "Also an operator: the Temporal Web UI may then decode payloads through /codec with this "
            "session's cookie."
        ),
    )


def _signed_in(who: Principal, token: str) -> Response:
    settings = resources().settings
    body = SessionOut(user_id=who.user_id, organization_id=who.organization_id, expires_at=who.expires_at)
    response = Response(json.dumps(body.model_dump(mode="json")), status=200, content_type="application/json")
    response.set_cookie(
        settings.session_cookie_name,
        token,
        max_age=max(0, int((who.expires_at - datetime.now(UTC)).total_seconds())),
        httponly=True,
        secure=settings.session_cookie_secure,
        samesite="Strict",
        path="/",
    )
    return response


@blueprint.post("")
@problems(401, 429)
@responds(200, "Signed in.", model=SessionOut, headers={"Set-Cookie": SESSION_COOKIE})
async def sign_in() -> Response:
    """Exchange the CRM's bearer token for the session cookie (HttpOnly, SameSite=Strict)."""
    res = resources()
    token = bearer_token()
    if token is None:
        raise Unauthorized("Send the token from your CRM as `Authorization: Bearer <token>`.")
    who = await res.verifier.verify(token)
    await res.rate_limiter.check(who)
    return _signed_in(who, token)


@blueprint.post("/dev")
@security_scheme([])
@problems(400, 404, 413, 415, 422)
@responds(200, "Signed in.", model=SessionOut, headers={"Set-Cookie": SESSION_COOKIE})
@validate_request(DevSignIn)
async def dev_sign_in(data: DevSignIn) -> Response:
    """Development only (TICKLER_ENV=dev): sign in as any user of any organization."""
    settings = resources().settings
    if settings.env != "dev":
        raise NotFound("Development sign-in exists only with TICKLER_ENV=dev.")
    token = mint_token(
        settings,
        user_id=data.user_id,
        organization_id=data.organization_id,
        ttl_seconds=DEV_SESSION_SECONDS,
        roles=[OPERATOR_ROLE] if data.operator else [],
    )
    return _signed_in(await resources().verifier.verify(token), token)


@blueprint.get("")
@problems(401, 429)
@authenticated
@validate_response(SessionOut)
async def current() -> SessionOut:
    """Who you are signed in as, and until when."""
    who = principal()
    return SessionOut(user_id=who.user_id, organization_id=who.organization_id, expires_at=who.expires_at)


@blueprint.delete("")
@security_scheme([])
@responds(204, "Signed out: the cookie is cleared.", headers={"Set-Cookie": SESSION_COOKIE})
async def sign_out() -> Response:
    """Forget the session cookie."""
    settings = resources().settings
    response = Response(status=204)
    response.delete_cookie(
        settings.session_cookie_name,
        path="/",
        httponly=True,
        secure=settings.session_cookie_secure,
        samesite="Strict",
    )
    return response
