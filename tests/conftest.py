"""Session fixtures: the real servers, the migrated schema, a worker and the web app over real HTTP.

Each server is started on a free port from the venv's packages, unless its address is configured with
TICKLER_TEST_DATABASE_URL, TICKLER_TEST_REDIS_URL or TICKLER_TEST_TEMPORAL_ADDRESS.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.tasks import TaskActivities
from core.codec import EncryptionKey
from core.db import make_engine, make_sessionmaker, organization_keys
from core.pubsub import Channel, make_redis
from core.recurrence import RuleRunner
from core.settings import Settings
from core.temporal import connect
from tests.helpers import STREAM_DEADLINE, serve_app
from tickler import devstack
from tickler.migrate import upgrade
from tickler.worker import build_worker

# The suite's payload encryption key: fresh each session, so nothing can depend on its value.
TEST_ENCRYPTION_KEY = EncryptionKey.generate("test")


@dataclass
class Servers:
    database_url: str  # the migration owner's; the logins of migrations/roles.sql beside it
    redis_url: str
    temporal_address: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    started: list[devstack.ManagedProcess] = []

    def address(env_name: str, start: object) -> str:
        configured = os.environ.get(env_name)
        if configured:
            return configured
        assert callable(start)
        proc: devstack.ManagedProcess = start()
        started.append(proc)
        return proc.address

    try:
        yield Servers(
            database_url=address(
                "TICKLER_TEST_DATABASE_URL", lambda: devstack.start_postgres(data_dir, devstack.free_port())
            ),
            redis_url=address(
                "TICKLER_TEST_REDIS_URL", lambda: devstack.start_redis(data_dir, devstack.free_port())
            ),
            temporal_address=address(
                "TICKLER_TEST_TEMPORAL_ADDRESS",
                lambda: devstack.start_temporal(data_dir, devstack.free_port(), None),
            ),
        )
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    settings = Settings(
        # The logins of migrations/roles.sql: the app's, the owner's (migrations), the maintenance one's.
        database_url=devstack.login_url(servers.database_url, "tickler_login"),
        migration_database_url=servers.database_url,
        maintenance_database_url=devstack.login_url(servers.database_url, "tickler_maintainer"),
        redis_url=servers.redis_url,
        temporal_address=servers.temporal_address,
        # A queue and a channel of this run's own, should the servers be shared.
        temporal_task_queue=f"tickler-test-{uuid.uuid4().hex[:8]}",
        redis_channel=f"tickler-test-{uuid.uuid4().hex[:8]}",
        jwt_secret=SecretStr("test-secret-of-at-least-thirty-two-bytes"),
        # The suite is a development stack: its tests sign in on the development route.
        env="dev",
        sse_heartbeat_seconds=1.0,
        # No metrics endpoint on the fixed default ports: a test that wants one gives a free port.
        web_metrics_port=0,
        worker_metrics_port=0,
        # Production runs unsandboxed for speed; here the sandbox fails a non-deterministic call.
        worker_sandboxed=True,
        # Every client and worker of the suite encrypts payloads, as production does (core/codec.py).
        encryption_keys=SecretStr(TEST_ENCRYPTION_KEY.entry()),
        # Fresh each session, as the payload key is.
        channel_key=SecretStr(secrets.token_urlsafe(32)),
        organization_keys=SecretStr(secrets.token_urlsafe(32)),
    )
    # The suite builds its schema with the migrations, so they are tested too.
    upgrade(settings.migration_url(), organization_keys=organization_keys(settings))
    return settings


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, application_name="tickler-tests")
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def temporal(settings: Settings) -> Client:
    return await connect(settings)


@pytest.fixture(scope="session")
def rules() -> Iterator[RuleRunner]:
    """The children that run recurrence rules, as the worker and the web process each hold them."""
    runner = RuleRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
async def worker(
    temporal: Client,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
    rules: RuleRunner,
) -> AsyncIterator[Worker]:
    activities = TaskActivities(sessionmaker, redis, Channel.of(settings), rules=rules)
    async with build_worker(temporal, settings, activities) as worker:
        yield worker


@pytest.fixture(scope="session")
async def web_url(settings: Settings, worker: Worker) -> AsyncIterator[str]:
    """The web app served by Hypercorn on a free port: real HTTP, real streaming."""
    async with serve_app(settings) as (url, _):
        yield url


@pytest.fixture
async def client(web_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the session's web app; its timeout outlasts a few stream heartbeats."""
    async with httpx.AsyncClient(base_url=web_url, timeout=STREAM_DEADLINE) as client:
        yield client


# The fixtures that start servers: the session's stack (every fixture built on it depends on `servers`)
# and the workflow tests' time-skipping server (`env`, tests/workflows/conftest.py). item.fixturenames
# holds what a test uses through other fixtures too, so `make test-fast` (`-m "not stack"`) stays right
# without anyone remembering a marker. e2e tests start a `tickler run` of their own.
STACK_FIXTURES = frozenset({"servers", "env"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = getattr(item, "fixturenames", ())
        if STACK_FIXTURES.intersection(uses) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.stack)
