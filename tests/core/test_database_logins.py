"""Least privilege: the app's login holds nothing but the right to take tickler_app, the owner migrates.

The logins are those of migrations/roles.sql, which the test servers run as production would.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import readiness
from core.db import make_engine, organization_keys, organization_signer, tenant_transaction
from core.settings import Settings
from tests.helpers import insert_notifications, new_org
from tickler.migrate import install_organization_keys

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


# -- A forged organization setting (core/db.py, migrations/versions/2026_11_30_signed_organization.py) ------

COUNT_BOTH = "SELECT (SELECT count(*) FROM tasks) + (SELECT count(*) FROM notifications)"


async def _count_as(engine: AsyncEngine, *statements: tuple[str, dict[str, object]]) -> int:
    """Rows of both tables that one transaction of ``engine``'s login sees after ``statements``."""
    async with engine.connect() as connection:
        for statement, parameters in statements:
            await connection.execute(text(statement), parameters)
        count = await connection.scalar(text(COUNT_BOTH))
        await connection.rollback()
    return int(count or 0)


async def test_a_forged_organization_setting_shows_no_row_of_that_organization(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    mine, theirs = new_org(), new_org()
    await insert_notifications(sessionmaker, mine, "7", 1)
    await insert_notifications(sessionmaker, theirs, "7", 3)
    signer = organization_signer(engine)
    enter = "SELECT tickler_enter(:org, :sig)"
    setting = "SELECT set_config('tickler.organization_id', :org, true)"
    # Signed, the app's way: its own organization, task and notification rows.
    assert await _count_as(engine, (enter, {"org": theirs, "sig": signer.sign(theirs)})) == 4
    # The organization set by hand, unsigned; then over a genuine signature of another organization.
    assert await _count_as(engine, (setting, {"org": theirs})) == 0
    assert (
        await _count_as(engine, (enter, {"org": mine, "sig": signer.sign(mine)}), (setting, {"org": theirs}))
        == 0
    )
    # A signature under a key the database does not hold is refused at once.
    forged = hmac.new(secrets.token_bytes(32), theirs.encode(), hashlib.sha256).hexdigest()
    message = await refused(engine, f"SELECT tickler_enter('{theirs}', '{forged}')")
    assert "matches no key" in message
    assert (
        await _count_as(
            engine,
            ("SELECT set_config('tickler.organization_sig', :sig, true)", {"sig": forged}),
            (setting, {"org": theirs}),
        )
        == 0
    )


async def test_a_forged_organization_setting_cannot_write_or_deliver_into_that_organization(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    mine, theirs = new_org(), new_org()
    await insert_notifications(sessionmaker, theirs, "7", 1)
    async with tenant_transaction(sessionmaker, theirs) as session:
        task_id = await session.scalar(text("SELECT id FROM tasks"))
    signer = organization_signer(engine)
    insert = (
        "INSERT INTO notifications (organization_id, user_id, task_id, dedupe_key, payload, due_at) "
        f"VALUES ('{theirs}', '7', '{task_id}', 'forged', '{{}}', now())"
    )
    message = await refused(
        engine,
        f"SELECT tickler_enter('{mine}', '{signer.sign(mine)}')",
        f"SELECT set_config('tickler.organization_id', '{theirs}', true)",
        insert,
    )
    assert "row-level security" in message
    # The delivery function checks the signature it is given: a key problem is an error to retry,
    # never a task reported missing.
    deliver = (
        f"SELECT outcome FROM deliver_notification('{task_id}', '{theirs}', '{signer.sign(mine)}', "
        "'forged-delivery', 0, now())"
    )
    assert "matches no key" in await refused(engine, deliver)


async def test_the_app_login_cannot_read_the_organization_keys(engine: AsyncEngine) -> None:
    assert "permission denied" in await refused(engine, "SELECT * FROM tickler_organization_keys")
    assert "permission denied" in await refused(
        engine, "SET ROLE NONE", "SELECT * FROM tickler_organization_keys"
    )
    # Its function's text names the table, never a key (pg_proc is readable by all).
    async with engine.connect() as connection:
        source = await connection.scalar(
            text("SELECT prosrc FROM pg_proc WHERE proname = 'tickler_organization'")
        )
    assert "tickler_organization_keys" in source


async def test_the_policy_checks_the_signature_once_per_statement_not_per_row(
    engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The check is a scalar subquery: an InitPlan run once, whatever the number of rows scanned."""
    org = new_org()
    await insert_notifications(sessionmaker, org, "7", 40)
    async with tenant_transaction(sessionmaker, org) as session:
        plan = await session.scalar(
            text("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM notifications WHERE user_id = '7'")
        )
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    init_plans = [n for n in nodes if n.get("Parent Relationship") == "InitPlan"]
    assert init_plans, plan
    assert all(n["Actual Loops"] == 1 for n in init_plans), plan
    assert sum(n["Actual Rows"] for n in nodes if "Relation Name" in n) >= 40


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_migrate_installs_exactly_the_keys_it_is_given(engine: AsyncEngine, settings: Settings) -> None:
    """Rotation (docs/deployment.md): the new key beside the old, then the old one alone removed."""
    current = organization_keys(settings)
    new = secrets.token_urlsafe(32).encode()
    org = new_org()
    enter = text("SELECT tickler_enter(:org, :sig)")
    signature = hmac.new(new, org.encode(), hashlib.sha256).hexdigest()
    try:
        await install_organization_keys(settings.migration_url(), [new, *current])
        async with engine.connect() as connection:
            await connection.execute(enter, {"org": org, "sig": signature})
            await connection.rollback()
        await install_organization_keys(settings.migration_url(), current)
        assert "matches no key" in await refused(engine, f"SELECT tickler_enter('{org}', '{signature}')")
    finally:
        await install_organization_keys(settings.migration_url(), current)
    # The suite's key was accepted all along: the app's readiness check says so.
    await readiness.postgresql(engine)()


async def test_readiness_names_a_key_the_database_does_not_hold(settings: Settings) -> None:
    other = settings.model_copy(update={"organization_keys": SecretStr(secrets.token_urlsafe(32))})
    engine = make_engine(other, application_name="logins-test-other-key")
    try:
        with pytest.raises(readiness.Down, match="TICKLER_ORGANIZATION_KEYS"):
            await readiness.postgresql(engine)()
    finally:
        await engine.dispose()
