"""Bearer tokens: the CRM mints them, Tickler verifies them. `tickler token` mints one for development."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from core.errors import Unauthorized
from core.settings import Settings

ALGORITHMS = ["HS256"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user of one organization. Every query is scoped by both."""

    user_id: str
    organization_id: str


def mint_token(settings: Settings, *, user_id: str, organization_id: str, ttl_seconds: int) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "org": organization_id, "iat": now, "exp": now + ttl_seconds}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def verify_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=ALGORITHMS,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The bearer token has expired; get a new one.") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"The bearer token is invalid: {exc}.") from exc
    org = claims.get("org")
    if not isinstance(org, str | int) or isinstance(org, bool) or str(org) == "":
        raise Unauthorized("The bearer token has no `org` claim (the organization id).")
    return Principal(user_id=str(claims["sub"]), organization_id=str(org))
