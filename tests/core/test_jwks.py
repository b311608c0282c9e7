"""RS256 keys from a JWKS URL: rotation by `kid`, a bounded refresh, and an outage that answers 503.

The CRM's JWKS endpoint is a small `http.server` in a thread whose key set and health the tests change.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from core.auth import TokenVerifier
from core.errors import Unauthorized, Unavailable
from core.settings import Settings
from tests.helpers import wait_until

ISSUER = "https://crm.example.com"
AUDIENCE = "tickler"


@dataclass
class Jwks:
    """What the endpoint serves: public keys by kid; `down` answers 503, `stall` answers too late."""

    keys: dict[str, Any] = field(default_factory=dict)
    down: bool = False
    stall: float = 0.0
    fetches: int = 0
    url: str = ""

    def body(self) -> bytes:
        entries = [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "RS256"}
            for kid, key in self.keys.items()
        ]
        return json.dumps({"keys": entries}).encode()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    state = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            if state.stall:
                time.sleep(state.stall)
            if state.down:
                self.send_error(503)
                return
            body = state.body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/.well-known/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def keys() -> list[Any]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(3)]


def verifier(url: str, *, cache: float = 300.0, cooldown: float = 0.0, timeout: float = 2.0) -> TokenVerifier:
    return TokenVerifier(
        Settings(
            jwt_secret=SecretStr("x" * 32),
            jwt_jwks_url=url,
            jwt_jwks_cache_seconds=cache,
            jwt_jwks_refresh_cooldown_seconds=cooldown,
            jwt_jwks_timeout_seconds=timeout,
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
        )
    )


def token(key: Any, kid: str, **claims: object) -> str:
    now = int(time.time())
    body: dict[str, object] = {
        "sub": "7",
        "org": "42",
        "iat": now,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


async def accepted(v: TokenVerifier, tok: str) -> bool:
    try:
        await v.verify(tok)
    except Unauthorized:
        return False
    return True


async def test_a_new_kid_is_fetched_and_a_removed_one_refused_after_the_cache_expires(
    jwks: Jwks, keys: list[Any]
) -> None:
    old, new, _ = keys
    jwks.keys = {"old": old}
    v = verifier(jwks.url, cache=0.5)
    assert (await v.verify(token(old, "old"))).user_id == "7"
    assert jwks.fetches == 1
    assert (await v.verify(token(old, "old"))).user_id == "7"
    assert jwks.fetches == 1, "a cached key needs no fetch"

    # The CRM rotates: the new kid is unknown to the cache, so it is fetched at once.
    jwks.keys = {"new": new, "old": old}
    assert (await v.verify(token(new, "new"))).user_id == "7"
    assert jwks.fetches == 2

    # The old key is withdrawn: still accepted from the cache, refused once the cache has expired.
    jwks.keys = {"new": new}
    assert await accepted(v, token(old, "old"))
    await wait_until(lambda: _refused(v, token(old, "old")), within=5, what="the removed kid refused")
    assert await accepted(v, token(new, "new"))


async def _refused(v: TokenVerifier, tok: str) -> bool:
    return not await accepted(v, tok)


async def test_unknown_kids_refetch_at_most_once_per_cooldown(jwks: Jwks, keys: list[Any]) -> None:
    known, _, forger = keys
    jwks.keys = {"known": known}
    v = verifier(jwks.url, cooldown=60)
    assert await accepted(v, token(known, "known"))
    for n in range(5):
        with pytest.raises(Unauthorized, match="kid"):
            await v.verify(token(forger, f"forged-{n}"))
    assert jwks.fetches == 1, "forged kids within the cooldown must not reach the CRM"
    # A token signed by a stranger under a known kid fails on its signature.
    with pytest.raises(Unauthorized, match=r"[Ss]ignature"):
        await v.verify(token(forger, "known"))


async def test_audience_and_issuer_are_checked(jwks: Jwks, keys: list[Any]) -> None:
    key = keys[0]
    jwks.keys = {"k": key}
    v = verifier(jwks.url)
    assert await accepted(v, token(key, "k"))
    assert not await accepted(v, token(key, "k", aud="someone-else"))
    assert not await accepted(v, token(key, "k", iss="https://evil.example.com"))


@pytest.mark.parametrize("outage", ["down", "stalled"])
async def test_an_endpoint_that_is_down_gives_503_for_unknown_kids_only(
    jwks: Jwks, keys: list[Any], outage: str
) -> None:
    cached, rotated, _ = keys
    jwks.keys = {"cached": cached}
    v = verifier(jwks.url, cache=0.2, timeout=0.5)
    assert await accepted(v, token(cached, "cached"))
    if outage == "down":
        jwks.down = True
    else:
        jwks.stall = 2.0
    jwks.keys = {"cached": cached, "rotated": rotated}
    with pytest.raises(Unavailable) as caught:
        await v.verify(token(rotated, "rotated"))
    assert caught.value.status == 503
    # Known keys keep working while the endpoint is unreachable, even once the cache has expired.
    assert await accepted(v, token(cached, "cached"))
    cache = v._jwks_client.jwk_set_cache if v._jwks_client else None
    assert cache is not None
    await wait_until(cache.is_expired, within=5, what="the JWKS cache to expire")
    assert await accepted(v, token(cached, "cached"))
    jwks.down, jwks.stall = False, 0.0
    assert await accepted(v, token(rotated, "rotated")), "back up: the rotated key is fetched"


async def test_the_event_loop_keeps_running_while_the_jwks_is_fetched(jwks: Jwks, keys: list[Any]) -> None:
    key = keys[0]
    jwks.keys = {"k": key}
    jwks.stall = 0.5
    v = verifier(jwks.url, timeout=3)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.02)

    ticker = asyncio.create_task(tick())
    try:
        assert await accepted(v, token(key, "k"))
    finally:
        ticker.cancel()
    assert ticks >= 10, f"the loop ran {ticks} times during a 0.5 s fetch: the fetch blocked it"
    jwks.stall = 0.0


def test_one_source_of_rs256_keys(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="one source"):
        Settings(jwt_jwks_url="https://crm.example.com/jwks", jwt_jwks_file=tmp_path / "jwks.json")


async def test_an_outage_is_not_hammered_by_unknown_kids(jwks: Jwks, keys: list[Any]) -> None:
    jwks.down = True
    v = verifier(jwks.url, cooldown=60)
    for n in range(5):
        with pytest.raises(Unavailable):
            await v.verify(token(keys[2], f"forged-{n}"))
    assert jwks.fetches == 1, "after a failed fetch, no other for the cooldown"
