"""core.db.fetch_direct: the instant's statement past SQLAlchemy, on the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import fetch_direct, make_engine
from core.settings import Settings


@pytest.fixture
async def autocommit(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, application_name="tickler-tests-direct")
    yield engine.execution_options(isolation_level="AUTOCOMMIT")
    await engine.dispose()


async def test_rows_read_as_sqlalchemy_rows_do_and_an_error_the_server_answered_keeps_the_connection(
    autocommit: AsyncEngine,
) -> None:
    async with autocommit.connect() as connection:
        rows = await fetch_direct(connection, """SELECT $1::integer AS n, '{"a": [1]}'::jsonb AS doc""", 7)
        assert (rows[0].n, rows[0].doc) == (7, {"a": [1]})  # jsonb decoded by SQLAlchemy's codec
        with pytest.raises(AttributeError):
            _ = rows[0].missing
        with pytest.raises(asyncpg.DivisionByZeroError):
            await fetch_direct(connection, "SELECT 1 / $1::integer AS n", 0)
        assert not connection.invalidated
        # Autocommit: no transaction was left open by the error, the next statement runs.
        assert (await fetch_direct(connection, "SELECT 2 AS n"))[0].n == 2


async def test_a_connection_lost_under_it_is_invalidated_so_the_pool_never_hands_it_out_again(
    autocommit: AsyncEngine,
) -> None:
    async with autocommit.connect() as connection:
        raw = await connection.get_raw_connection()
        lost = raw.driver_connection
        assert isinstance(lost, asyncpg.Connection)
        lost.terminate()  # as a network gone between the warm-up and the instant
        with pytest.raises(asyncpg.InterfaceError):
            await fetch_direct(connection, "SELECT 1 AS n")
        assert connection.invalidated
    async with autocommit.connect() as connection:
        raw = await connection.get_raw_connection()
        assert raw.driver_connection is not lost
        assert (await fetch_direct(connection, "SELECT 3 AS n"))[0].n == 3
