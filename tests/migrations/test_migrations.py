"""Migrations are reversible and match the ORM models, on a database of their own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Base
from core.settings import Settings
from tickler.migrate import downgrade, upgrade


@pytest.fixture
def scratch_url(settings: Settings) -> Iterator[str]:
    url = make_url(settings.migration_url())
    name = f"tickler_migrations_{uuid.uuid4().hex[:8]}"
    # Creating a database takes the superuser (trust auth on the test servers); the migration owner owns it.
    admin = url.set(drivername="postgresql", username="postgres", password=None).render_as_string(
        hide_password=False
    )

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}" OWNER "{url.username}"'))
    yield url.set(database=name).render_as_string(hide_password=False)
    asyncio.run(run(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _diff(url: str) -> list[Any]:
    async def compare() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:

                def diff(sync: Connection) -> list[Any]:
                    return list(compare_metadata(MigrationContext.configure(sync), Base.metadata))

                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    return asyncio.run(compare())


def test_upgrade_matches_the_models_and_downgrade_undoes_it(scratch_url: str) -> None:
    upgrade(scratch_url)
    assert _diff(scratch_url) == [], "the models and the migrations disagree: add a migration"
    downgrade(scratch_url, "base")
    upgrade(scratch_url)
    assert _diff(scratch_url) == []
