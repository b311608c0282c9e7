"""Bearer tokens: the CRM mints them, Tickler verifies them. `tickler token` mints one for development.

Verification uses exactly one algorithm family, chosen by the settings: RS256 with a public key (a PEM
file, a JWKS file, or a JWKS URL, whose key the token's `kid` names), else HS256 with the shared secret.
A token signed another way is refused, so an RS256 public key can never be used as an HMAC secret.

A JWKS URL is fetched by pyjwt's ``PyJWKClient`` (synchronous, so in a thread with a timeout): the set is
cached for TICKLER_JWT_JWKS_CACHE_SECONDS, an unknown `kid` refetches it at most once per cooldown, and
while the endpoint is down the last set fetched still verifies the keys it holds; a token whose key is not
in it answers 503 (we cannot tell), not 401.

Operators are whoever the same issuer gives the role `operator` in the token's `roles` claim; they may
use the codec endpoint (web/codec/), which decrypts any organization's payloads, and need no `org`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import jwt

from core.errors import Forbidden, Unauthorized, Unavailable
from core.settings import Settings

log = logging.getLogger(__name__)

# The role, in a token's `roles` claim, of those who may decrypt payloads through the codec endpoint.
OPERATOR_ROLE = "operator"
# The role of an organization's admins: they manage its webhooks (issue 18).
ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user of one organization. Every query is scoped by both."""

    user_id: str
    organization_id: str
    expires_at: datetime
    # The token's `roles` claim: `admin` manages the organization's webhooks.
    roles: frozenset[str] = frozenset()


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
    """Checks tokens. ``verify``/``verify_operator`` are for the event loop (a JWKS URL is fetched in a
    thread); ``verify_sync``/``verify_operator_sync`` serve keys that need no network (CLI, tests)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks_client: jwt.PyJWKClient | None = None
        # One fetch in flight at a time, and none for a cooldown after one failed: forged `kid`s during
        # an outage must not fill the thread pool with requests waiting on a dead endpoint.
        self._fetch_lock = asyncio.Lock()
        self._fetch_failed_at = -math.inf
        # When a `kid` missing from the cached set last sent us to the endpoint: pyjwt refetches at most
        # once per cooldown, so until it ends another unknown `kid` is refused here, with no thread.
        self._refetched_at = -math.inf
        if settings.jwt_jwks_url is not None:
            self._jwks_client = jwt.PyJWKClient(
                settings.jwt_jwks_url,
                lifespan=settings.jwt_jwks_cache_seconds,
                cooldown_duration=settings.jwt_jwks_refresh_cooldown_seconds,
                timeout=settings.jwt_jwks_timeout_seconds,
            )

    @cached_property
    def _jwks(self) -> jwt.PyJWKSet | None:
        path = self.settings.jwt_jwks_file
        return jwt.PyJWKSet.from_json(path.read_text()) if path is not None else None

    @cached_property
    def _public_key(self) -> str | None:
        path = self.settings.jwt_public_key_file
        return path.read_text() if path is not None else None

    async def _remote_key(self, client: jwt.PyJWKClient, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The bearer token is invalid: {exc}.") from exc
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("The bearer token is invalid: it has no `kid` naming one of the CRM's keys.")
        cache = client.jwk_set_cache
        fresh = cache.get() if cache is not None else None
        settings = self.settings
        if fresh is not None:
            if (key := _with_kid(fresh, kid)) is not None:
                return key  # the common case: no thread, no network
            if time.monotonic() - self._refetched_at < settings.jwt_jwks_refresh_cooldown_seconds:
                raise Unauthorized(f"The bearer token is invalid: no key of the CRM has kid {kid!r}.")
        try:
            async with self._fetch_lock:
                if time.monotonic() - self._fetch_failed_at < settings.jwt_jwks_refresh_cooldown_seconds:
                    raise TimeoutError("the JWKS endpoint failed moments ago")
                try:
                    if fresh is not None:
                        self._refetched_at = time.monotonic()
                    fetch = asyncio.to_thread(client.get_signing_key, kid)
                    return (await asyncio.wait_for(fetch, settings.jwt_jwks_timeout_seconds)).key
                except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, TimeoutError):
                    self._fetch_failed_at = time.monotonic()
                    raise
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError, TimeoutError) as exc:
            # Stale-if-error: the CRM being down must not sign everybody out.
            stale = cache.jwk_set_with_timestamp if cache is not None else None
            if stale is not None and (key := _with_kid(stale.get_jwk_set(), kid)) is not None:
                return key
            log.warning("JWKS endpoint unavailable: %s", exc or type(exc).__name__)
            raise Unavailable(
                "The keys of the token's issuer cannot be fetched right now; try again shortly."
            ) from exc
        except jwt.PyJWKClientError as exc:
            raise Unauthorized(f"The bearer token is invalid: no key of the CRM has kid {kid!r}.") from exc

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks_client is not None:
            raise RuntimeError("TICKLER_JWT_JWKS_URL is set: verify tokens with the async verify()")
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

    async def verify(self, token: str) -> Principal:
        return _principal(await self._claims_async(token))

    async def verify_operator(self, token: str) -> Operator:
        """An operator: a valid token (401 if not) whose `roles` claim holds ``operator`` (403 if not)."""
        return _operator(await self._claims_async(token))

    def verify_sync(self, token: str) -> Principal:
        return _principal(self._claims(token))

    def verify_operator_sync(self, token: str) -> Operator:
        return _operator(self._claims(token))

    async def _claims_async(self, token: str) -> dict[str, Any]:
        if self._jwks_client is None:
            return self._claims(token)
        return self._decode(token, await self._remote_key(self._jwks_client, token), ["RS256"])

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            key, algorithms = self._key(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The bearer token is invalid: {exc}.") from exc
        return self._decode(token, key, algorithms)

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        settings = self.settings
        try:
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


def _with_kid(keys: jwt.PyJWKSet, kid: str) -> Any:
    return next((k.key for k in keys.keys if k.key_id == kid), None)


def _principal(claims: dict[str, Any]) -> Principal:
    org = claims.get("org")
    if not isinstance(org, str | int) or isinstance(org, bool) or str(org) == "":
        raise Unauthorized("The bearer token has no `org` claim (the organization id).")
    return Principal(
        user_id=str(claims["sub"]),
        organization_id=str(org),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        roles=frozenset(_roles(claims)),
    )


def _roles(claims: dict[str, Any]) -> list[str]:
    roles = claims.get("roles")
    # A list of names, or one string of names separated by spaces, as an OAuth scope is.
    names = roles.split() if isinstance(roles, str) else roles if isinstance(roles, list) else []
    return [name for name in names if isinstance(name, str)]


def _operator(claims: dict[str, Any]) -> Operator:
    if OPERATOR_ROLE not in _roles(claims):
        raise Forbidden(
            f"Only operators may use this: the token's `roles` claim must include `{OPERATOR_ROLE}`."
        )
    return Operator(subject=str(claims["sub"]), expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC))


def verify_token(settings: Settings, token: str) -> Principal:
    """Verify with a key that needs no network (HS256 secret, PEM or JWKS file): CLI and tests."""
    return TokenVerifier(settings).verify_sync(token)
