"""Least privilege: the app's login holds nothing but the right to take tickler_app, the owner migrates.

The logins are those of migrations/roles.sql, which the test servers run as production would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import make_engine
from core.settings import Settings
from tests.helpers import insert_notifications, new_org

OWNS = (
    "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = {role}) "
    "AND relname IN ('tasks', 'notifications')"
)
MIGRATED = "SELECT tableowner FROM pg_tables WHERE tablename IN ('tasks', 'notifications', 'alembic_version')"
PRIVILEGES = "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = :name"


@pytest.fixture
async def maintenance(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(
        settings.model_copy(update={"database_role": settings.maintenance_database_role}),
        application_name="logins-test",
        url=settings.maintenance_url(),
    )
    yield engine
    await engine.dispose()


async def refused(engine: AsyncEngine, *statements: str) -> str:
    """Run ``statements`` on a connection of their own; the error that ends them (none: fail)."""
    async with engine.connect() as connection:
        for statement in statements[:-1]:
            await connection.execute(text(statement))
        with pytest.raises(DBAPIError) as error:
            await connection.execute(text(statements[-1]))
        return str(error.value.orig)


async def test_no_login_of_the_runtime_is_owner_superuser_or_bypassrls(
    engine: AsyncEngine, maintenance: AsyncEngine, settings: Settings
) -> None:
    owner = make_url(settings.migration_url()).username
    for runtime in (engine, maintenance):
        async with runtime.connect() as connection:
            login = await connection.scalar(text("SELECT session_user"))
            assert login != owner
            flags = (await connection.execute(text(PRIVILEGES), {"name": login})).one()
            assert tuple(flags) == (False, False, False, False), login
            for role in ("current_user", "session_user"):
                assert await connection.scalar(text(OWNS.format(role=role))) == 0
            # Not even a member of the owner's role, so no SET ROLE can reach it.
            member = text("SELECT pg_has_role(session_user, :owner, 'MEMBER')")
            assert await connection.scalar(member, {"owner": owner}) is False


async def test_the_app_login_cannot_become_the_owner_or_leave_row_level_security(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    owner = make_url(settings.migration_url()).username
    theirs = new_org()
    await insert_notifications(sessionmaker, theirs, "7", 2)
    assert "permission denied" in await refused(engine, f'SET ROLE "{owner}"')
    assert "permission denied" in await refused(engine, f'SET SESSION AUTHORIZATION "{owner}"')
    # SET ROLE NONE goes back to the login itself (RESET ROLE, to the role taken at connect), which holds
    # no privilege on any table.
    assert "permission denied" in await refused(
        engine,
        "SET ROLE NONE",
        f"SELECT set_config('tickler.organization_id', '{theirs}', false)",
        "SELECT count(*) FROM notifications",
    )
    # Nor may it take the maintenance role, which reads every organization.
    assert "permission denied" in await refused(engine, f"SET ROLE {settings.maintenance_database_role}")


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE notifications NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON tasks",
        "CREATE POLICY everything ON tasks USING (true)",
        "DROP TABLE notifications",
        "CREATE TABLE loot (id int)",
        "CREATE FUNCTION loot() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "TRUNCATE notifications",
        "ALTER TABLE tasks ADD COLUMN loot text",
        "ALTER TABLE tasks OWNER TO CURRENT_USER",
    ],
)
async def test_the_app_login_cannot_change_the_schema(engine: AsyncEngine, statement: str) -> None:
    for prefix in ((), ("SET ROLE NONE",)):
        message = await refused(engine, *prefix, statement)
        assert "must be owner" in message or "permission denied" in message, message


async def test_the_owner_owns_what_the_migrations_made(engine: AsyncEngine, settings: Settings) -> None:
    """The migrations ran as the owner's login (tests/conftest.py, as `tickler migrate` does)."""
    async with engine.connect() as connection:
        owners = set((await connection.scalars(text(MIGRATED))).all())
    assert owners == {make_url(settings.migration_url()).username}
