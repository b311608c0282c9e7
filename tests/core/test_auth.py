"""Bearer tokens: minted and verified with HS256, and every way a token can be wrong is a 401."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from core.auth import OPERATOR_ROLE, Principal, TokenVerifier, mint_token, verify_token
from core.errors import Forbidden, Unauthorized
from core.settings import Settings

SECRET = "a-test-secret-of-at-least-32-bytes!!"
OTHER_SECRET = "another-secret-of-at-least-32-bytes!"


def make_settings(
    secret: str = SECRET, *, issuer: str | None = None, audience: str | None = None, **keys: Path
) -> Settings:
    # Everything auth reads is given here, so neither the environment nor .env can change the outcome.
    return Settings(
        jwt_secret=SecretStr(secret),
        jwt_issuer=issuer,
        jwt_audience=audience,
        jwt_public_key_file=keys.get("jwt_public_key_file"),
        jwt_jwks_file=keys.get("jwt_jwks_file"),
    )


def sign(claims: dict[str, object], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def valid_claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "7", "org": "42", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return claims


def refused(settings: Settings, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        verify_token(settings, token)
    error = caught.value
    assert error.status == 401
    assert error.detail
    assert SECRET not in error.detail
    return error


def who(principal: Principal) -> tuple[str, str]:
    return principal.user_id, principal.organization_id


def test_a_minted_token_verifies_to_its_principal() -> None:
    settings = make_settings()
    token = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=60)
    principal = verify_token(settings, token)
    assert who(principal) == ("7", "42")
    assert 55 <= (principal.expires_at - datetime.now(UTC)).total_seconds() <= 60


def test_a_numeric_org_claim_is_read_as_a_string() -> None:
    assert who(verify_token(make_settings(), sign(valid_claims(org=42)))) == ("7", "42")


def test_an_expired_token_says_it_expired() -> None:
    settings = make_settings()
    token = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=-5)
    assert "expired" in refused(settings, token).detail


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = mint_token(make_settings(OTHER_SECRET), user_id="7", organization_id="42", ttl_seconds=60)
    refused(make_settings(), token)


def test_an_unsigned_token_is_refused() -> None:
    token = jwt.encode(valid_claims(), "", algorithm="none")
    refused(make_settings(), token)


def test_a_token_of_another_hmac_algorithm_is_refused() -> None:
    # Long enough for HS512, so that only the algorithm is wrong.
    secret = "s" * 64
    refused(make_settings(secret), sign(valid_claims(), secret, algorithm="HS512"))


@pytest.mark.parametrize("claim", ["exp", "sub", "org"])
def test_a_token_without_a_required_claim_is_refused(claim: str) -> None:
    claims = valid_claims()
    del claims[claim]
    refused(make_settings(), sign(claims))


@pytest.mark.parametrize("org", ["", None, True, False, [], ["42"], {"id": "42"}, 4.2])
def test_a_token_with_a_bad_org_claim_is_refused(org: object) -> None:
    assert "org" in refused(make_settings(), sign(valid_claims(org=org))).detail


@pytest.mark.parametrize("sub", [7, None, ["7"]])
def test_a_token_with_a_bad_sub_claim_is_refused(sub: object) -> None:
    refused(make_settings(), sign(valid_claims(sub=sub)))


def test_a_token_not_valid_yet_is_refused() -> None:
    refused(make_settings(), sign(valid_claims(nbf=int(time.time()) + 600)))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
        "ñ.ñ.ñ",
    ],
)
def test_garbage_is_refused(token: str) -> None:
    refused(make_settings(), token)


def test_the_issuer_is_enforced_when_set() -> None:
    settings = make_settings(issuer="crm.example")
    good = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=60)
    assert jwt.decode(good, options={"verify_signature": False})["iss"] == "crm.example"
    assert who(verify_token(settings, good)) == ("7", "42")
    refused(settings, sign(valid_claims()))
    refused(settings, sign(valid_claims(iss="evil.example")))


def test_the_audience_is_enforced_when_set() -> None:
    settings = make_settings(audience="tickler")
    good = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=60)
    assert jwt.decode(good, options={"verify_signature": False})["aud"] == "tickler"
    assert who(verify_token(settings, good)) == ("7", "42")
    refused(settings, sign(valid_claims()))
    refused(settings, sign(valid_claims(aud="another-service")))
    both = sign(valid_claims(aud=["another-service", "tickler"]))
    assert who(verify_token(settings, both)) == ("7", "42")


def test_issuer_and_audience_together() -> None:
    settings = make_settings(issuer="crm.example", audience="tickler")
    good = mint_token(settings, user_id="7", organization_id="42", ttl_seconds=60)
    assert who(verify_token(settings, good)) == ("7", "42")
    refused(settings, sign(valid_claims(iss="crm.example")))
    refused(settings, sign(valid_claims(aud="tickler")))


# -- RS256: a PEM public key, or a JWKS picked by kid --------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)


def _pem(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def test_rs256_with_a_pem_public_key(tmp_path: Path, rsa_keys: tuple[Any, Any]) -> None:
    ours, theirs = rsa_keys
    key_file = tmp_path / "crm.pem"
    key_file.write_text(_pem(ours))
    settings = make_settings(jwt_public_key_file=key_file)
    assert who(verify_token(settings, jwt.encode(valid_claims(), ours, algorithm="RS256"))) == ("7", "42")
    refused(settings, jwt.encode(valid_claims(), theirs, algorithm="RS256"))
    # The public key used as an HMAC secret (algorithm confusion) and plain HS256 are refused.
    refused(settings, sign(valid_claims()))


def test_rs256_with_a_jwks_picks_the_key_by_kid(tmp_path: Path, rsa_keys: tuple[Any, Any]) -> None:
    ours, theirs = rsa_keys
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "RS256"}
            for key, kid in ((ours, "one"), (theirs, "two"))
        ]
    }
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    settings = make_settings(jwt_jwks_file=jwks_file)
    for key, kid in ((ours, "one"), (theirs, "two")):
        token = jwt.encode(valid_claims(), key, algorithm="RS256", headers={"kid": kid})
        assert who(verify_token(settings, token)) == ("7", "42")
    refused(settings, jwt.encode(valid_claims(), ours, algorithm="RS256", headers={"kid": "two"}))
    refused(settings, jwt.encode(valid_claims(), ours, algorithm="RS256", headers={"kid": "three"}))
    refused(settings, jwt.encode(valid_claims(), ours, algorithm="RS256"))  # no kid, two keys
    refused(settings, sign(valid_claims()))


# -- operators: the codec endpoint's callers ---------------------------------------------------------


def test_an_operator_token_needs_the_role_not_an_organization() -> None:
    settings = make_settings()
    verifier = TokenVerifier(settings)
    token = mint_token(settings, user_id="ops", organization_id=None, ttl_seconds=60, roles=[OPERATOR_ROLE])
    assert verifier.verify_operator_sync(token).subject == "ops"
    # Without an organization it opens none of the API's routes.
    with pytest.raises(Unauthorized, match="org"):
        verifier.verify_sync(token)
    # The role as an OAuth-style string of names, next to others.
    assert verifier.verify_operator_sync(sign(valid_claims(roles="reader operator"))).subject == "7"


@pytest.mark.parametrize("roles", [None, [], ["reader"], "operators", ["Operator"], {"operator": True}])
def test_a_token_without_the_operator_role_is_forbidden(roles: object) -> None:
    claims = valid_claims() if roles is None else valid_claims(roles=roles)
    with pytest.raises(Forbidden) as caught:
        TokenVerifier(make_settings()).verify_operator_sync(sign(claims))
    assert caught.value.status == 403
    assert "`roles`" in caught.value.detail


def test_an_operator_token_is_verified_like_any_other() -> None:
    verifier = TokenVerifier(make_settings())
    for token in (
        sign(valid_claims(roles=[OPERATOR_ROLE]), OTHER_SECRET),
        sign(valid_claims(roles=[OPERATOR_ROLE], exp=int(time.time()) - 5)),
        "not a token",
    ):
        with pytest.raises(Unauthorized):
            verifier.verify_operator_sync(token)
