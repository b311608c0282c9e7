"""A PostgreSQL or Redis that hangs costs a request its timeout, then a 503 with Retry-After: never a hang
or a 500. Each test serves an app of its own with short timeouts, on the session's real servers."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import make_engine
from core.settings import Settings
from tests.helpers import HEARTBEAT, bearer, insert_notifications, new_org, open_stream, serve_app

# Short, so that a test waits little; the client's timeout is well beyond them, so that a request
# that hangs fails the test instead of passing late.
SHORT = {
    "database_statement_timeout_ms": 500,
    "database_connect_timeout_seconds": 0.5,
    "redis_timeout_seconds": 0.5,
}
ANSWERS_WITHIN = 3.0
CLIENT_TIMEOUT = 8.0


@asynccontextmanager
async def app_client(settings: Settings, **update: object) -> AsyncIterator[httpx.AsyncClient]:
    quick = settings.model_copy(update=SHORT | update)
    async with serve_app(quick) as (url, _), httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as http:
        yield http


@asynccontextmanager
async def table_locked(settings: Settings, table: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``table`` from a connection of the owner until the block ends:
    every statement that reads it waits, as behind a long migration or a stuck transaction."""
    as_owner = settings.model_copy(update={"database_role": ""})
    owner = make_engine(as_owner, application_name="tickler-test-lock", url=settings.migration_url())
    try:
        async with owner.connect() as connection:
            await connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield
            await connection.rollback()
    finally:
        await owner.dispose()


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["retry_after"] == int(response.headers["Retry-After"])
    assert elapsed < ANSWERS_WITHIN, f"answered after {elapsed:.1f} s"


@pytest.mark.parametrize(("table", "route"), [("tasks", "/v1/tasks"), ("notifications", "/v1/notifications")])
async def test_an_api_call_while_postgresql_hangs_ends_in_time_with_503(
    settings: Settings, table: str, route: str
) -> None:
    headers = bearer(settings, "7", new_org())
    async with app_client(settings) as client:
        assert (await client.get(route, headers=headers)).status_code == 200
        async with table_locked(settings, table):
            started = time.monotonic()
            response = await client.get(route, headers=headers)
            assert_unavailable(response, time.monotonic() - started)
            assert "did not answer in time" in response.json()["detail"]
        # The connection that was cancelled serves the next request.
        assert (await client.get(route, headers=headers)).status_code == 200


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_a_database_that_never_answers_a_connect_ends_the_request_with_503(settings: Settings) -> None:
    with silent_server() as port:
        url = f"postgresql+asyncpg://tickler@127.0.0.1:{port}/tickler"
        async with app_client(settings, database_url=url) as client:
            started = time.monotonic()
            response = await client.get("/v1/tasks", headers=bearer(settings, "7", new_org()))
            assert_unavailable(response, time.monotonic() - started)


@asynccontextmanager
async def redis_writes_paused(redis: Redis) -> AsyncIterator[None]:
    """Redis stops answering write commands (PUBLISH and INCR included) until the block ends."""
    await redis.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        yield
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")


async def test_a_redis_that_hangs_costs_a_request_its_timeout(
    settings: Settings, redis: Redis, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    headers = bearer(settings, "7", org)
    [unread] = await insert_notifications(sessionmaker, org, "7", 1)
    async with app_client(settings) as client, redis_writes_paused(redis):
        # The rate limit's count times out and is skipped: Redis does not take the API down with it.
        started = time.monotonic()
        listed = await client.get("/v1/tasks", headers=headers)
        assert listed.status_code == 200, listed.text
        assert time.monotonic() - started < ANSWERS_WITHIN
        # Marking read stores it, then tells the user's other tabs through Redis: that times out.
        started = time.monotonic()
        response = await client.post(f"/v1/notifications/{unread}/read", headers=headers)
        assert_unavailable(response, time.monotonic() - started)
        assert "Redis" in response.json()["detail"]


async def test_an_idle_subscription_outlives_the_redis_timeout(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The hub's subscription waits for messages longer than a command may: it must not time out."""
    org = new_org()
    headers = bearer(settings, "7", org)
    [unread] = await insert_notifications(sessionmaker, org, "7", 1)
    async with (
        app_client(settings, redis_timeout_seconds=0.2) as client,
        open_stream(client, headers) as stream,
    ):
        # Two heartbeats (1 s each in the test settings): the subscription idled past its timeout.
        await stream.read_past_heartbeat()
        await stream.read_until(lambda line: line == HEARTBEAT)
        read = await client.post(f"/v1/notifications/{unread}/read", headers=headers)
        assert read.status_code == 200, read.text
        await stream.read_until(lambda line: line == "event: notification.read")
