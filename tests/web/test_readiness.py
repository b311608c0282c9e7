"""/readyz on the real servers: 200 while PostgreSQL, Redis and Temporal answer; 503 naming what does not."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart
from temporalio.client import Client

from core.readiness import CHECK_TIMEOUT_SECONDS
from core.settings import Settings
from tests.helpers import serve_app, wait_until
from tickler import devstack
from web.resources import EXTENSION_KEY, Resources

# Longer than the readiness checks take when a dependency hangs, shorter than any client timeout of theirs.
ANSWER_WITHIN = CHECK_TIMEOUT_SECONDS + 2.0


async def ready(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=ANSWER_WITHIN) as client:
        return await client.get("/readyz")


def assert_down(response: httpx.Response, *names: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    problem: dict[str, Any] = response.json()
    assert problem["status"] == 503
    assert problem["down"] == list(names)
    for name in names:
        assert name in problem["detail"]
    return problem


async def test_ready_when_every_dependency_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"postgresql": "ok", "redis": "ok", "temporal": "ok"},
    }
    # Neither probe is part of the API's contract.
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/readyz" not in paths
    assert "/healthz" not in paths


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[devstack.ManagedProcess]:
    process = devstack.start_redis(tmp_path, devstack.free_port())
    yield process
    process.stop()


async def test_not_ready_while_redis_is_gone_and_ready_again_once_back(
    settings: Settings, own_redis: devstack.ManagedProcess, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"redis_url": own_redis.address})
    async with serve_app(own) as (url, app):
        assert (await ready(url)).status_code == 200
        own_redis.stop()
        hub = _resources(app).hub
        await wait_until(lambda: not hub.subscribed.is_set(), what="the hub to notice Redis is gone")
        problem = assert_down(await ready(url), "redis")
        assert "subscription" in problem["detail"]
        # Liveness asks no dependency: the process is alive, only not ready.
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200

        port = int(own_redis.address.rsplit(":", 1)[1].split("/")[0])
        restarted = devstack.start_redis(tmp_path, port)
        try:
            await wait_until(
                lambda: _status(url, 200), within=30, what="/readyz to answer 200 once Redis is back"
            )
        finally:
            restarted.stop()


async def test_not_ready_when_postgresql_does_not_answer(settings: Settings) -> None:
    """A server that accepts connections and never answers: the check gives up after its timeout."""
    connections: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    own = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://tickler@127.0.0.1:{port}/tickler"}
    )
    try:
        async with serve_app(own) as (url, _):
            problem = assert_down(await ready(url), "postgresql")
            assert "no answer within" in problem["detail"]
    finally:
        for writer in connections:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_not_ready_when_temporal_does_not_answer(settings: Settings) -> None:
    async with serve_app(settings) as (url, app):
        # A client of a frontend nobody serves; connected lazily, so that it fails at the first call.
        nowhere = await Client.connect(f"127.0.0.1:{devstack.free_port()}", lazy=True)
        app.extensions[EXTENSION_KEY] = dataclasses.replace(_resources(app), temporal=nowhere)
        assert_down(await ready(url), "temporal")


def _resources(app: Quart) -> Resources:
    res: Resources = app.extensions[EXTENSION_KEY]
    return res


async def _status(url: str, status: int) -> bool:
    return (await ready(url)).status_code == status
