"""Bearer tokens: the CRM mints them, Tickler verifies them. `tickler token` mints one for development.

Verification uses exactly one algorithm family, chosen by the settings: RS256 with a public key (a PEM
file, or a JWKS file whose key the token's `kid` names), else HS256 with the shared secret. A token
signed another way is refused, so an RS256 public key can never be used as an HMAC secret.

Operators are whoever the same issuer gives the role `operator` in the token's `roles` claim; they may
use the codec endpoint (web/codec/), which decrypts any organization's payloads, and need no `org`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import jwt

from core.errors import Forbidden, Unauthorized
from core.settings import Settings

# The role, in a token's `roles` claim, of those who may decrypt payloads through the codec endpoint.
OPERATOR_ROLE = "operator"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user of one organization. Every query is scoped by both."""

    user_id: str
    organization_id: str
    expires_at: datetime


@dataclass(frozen=True)
class Operator:
    """Who calls the codec endpoint: the subject of a token with the operator role, of no organization."""

    subject: str
    expires_at: datetime


def mint_token(
    settings: Settings,
    *,
    user_id: str,
    organization_id: str | None,
    ttl_seconds: int,
    roles: Sequence[str] = (),
) -> str:
    """An HS256 token signed with TICKLER_JWT_SECRET, as the CRM would issue one (development, tests);
    without an organization it can only be an operator's."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    if organization_id is not None:
        claims["org"] = organization_id
    if roles:
        claims["roles"] = list(roles)
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def _jwks(self) -> jwt.PyJWKSet | None:
        path = self.settings.jwt_jwks_file
        return jwt.PyJWKSet.from_json(path.read_text()) if path is not None else None

    @cached_property
    def _public_key(self) -> str | None:
        path = self.settings.jwt_public_key_file
        return path.read_text() if path is not None else None

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if kid is None and len(keys) != 1:
                raise jwt.InvalidTokenError("the token has no `kid` naming one of the configured keys")
            if not keys:
                raise jwt.InvalidTokenError(f"no configured key has kid {kid!r}")
            return keys[0].key, ["RS256"]
        if self._public_key is not None:
            return self._public_key, ["RS256"]
        return self.settings.jwt_secret.get_secret_value(), ["HS256"]

    def verify(self, token: str) -> Principal:
        claims = self._claims(token)
        org = claims.get("org")
        if not isinstance(org, str | int) or isinstance(org, bool) or str(org) == "":
            raise Unauthorized("The bearer token has no `org` claim (the organization id).")
        return Principal(
            user_id=str(claims["sub"]),
            organization_id=str(org),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )

    def verify_operator(self, token: str) -> Operator:
        """An operator: a valid token (401 if not) whose `roles` claim holds ``operator`` (403 if not)."""
        claims = self._claims(token)
        roles = claims.get("roles")
        # A list of names, or one string of names separated by spaces, as an OAuth scope is.
        names = roles.split() if isinstance(roles, str) else roles if isinstance(roles, list) else []
        if OPERATOR_ROLE not in names:
            raise Forbidden(
                f"Only operators may use this: the token's `roles` claim must include `{OPERATOR_ROLE}`."
            )
        return Operator(
            subject=str(claims["sub"]), expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC)
        )

    def _claims(self, token: str) -> dict[str, Any]:
        settings = self.settings
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The bearer token has expired; get a new one.") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The bearer token is invalid: {exc}.") from exc
        return claims


def verify_token(settings: Settings, token: str) -> Principal:
    return TokenVerifier(settings).verify(token)
