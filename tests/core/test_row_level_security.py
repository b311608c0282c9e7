"""Defence in depth: even a query that forgets its tenant filter sees only its organization's rows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import make_engine, make_sessionmaker, tenant_transaction
from core.models import Notification, Task
from core.settings import Settings
from tests.helpers import insert_notifications, new_org, task_row


@pytest.fixture
async def one_connection(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine with a single pooled connection, so every transaction reuses it."""
    engine = make_engine(settings.model_copy(update={"database_pool_size": 1}), application_name="rls-test")
    yield engine
    await engine.dispose()


async def test_the_app_role_is_neither_owner_nor_bypassrls(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker() as session:
        role = await session.scalar(text("SELECT current_user"))
        bypass = await session.scalar(
            text("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        )
        owners = (
            await session.scalars(
                text("SELECT tableowner FROM pg_tables WHERE tablename IN ('tasks', 'notifications')")
            )
        ).all()
        forced = (
            await session.scalars(
                text("SELECT relforcerowsecurity FROM pg_class WHERE relname IN ('tasks', 'notifications')")
            )
        ).all()
    assert role == "tickler_app"
    assert bypass is False
    assert role not in owners
    assert forced == [True, True]


async def test_without_the_tenant_filter_no_foreign_row_comes_back(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    mine, theirs = new_org(), new_org()
    await insert_notifications(sessionmaker, mine, "7", 2)
    await insert_notifications(sessionmaker, theirs, "7", 3)
    async with tenant_transaction(sessionmaker, mine) as session:
        # No WHERE on the organization: the policy filters.
        tasks = (await session.scalars(select(Task))).all()
        notifications = (await session.scalars(select(Notification))).all()
    assert {t.organization_id for t in tasks} == {mine}
    assert {n.organization_id for n in notifications} == {mine}
    assert len(notifications) == 2


async def test_a_transaction_that_names_no_organization_sees_nothing(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await insert_notifications(sessionmaker, new_org(), "7", 1)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Task)) == 0
        assert await session.scalar(select(func.count()).select_from(Notification)) == 0


async def test_the_setting_never_outlives_its_transaction(one_connection: AsyncEngine) -> None:
    sessionmaker = make_sessionmaker(one_connection)
    org = new_org()
    await insert_notifications(sessionmaker, org, "7", 1)
    async with tenant_transaction(sessionmaker, org) as session:
        assert await session.scalar(select(func.count()).select_from(Notification)) == 1
    # The same pooled connection, a new transaction: the organization is gone with the old one.
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Notification)) == 0


async def test_a_row_cannot_be_written_into_another_organization(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(DBAPIError, match="row-level security"):
        async with tenant_transaction(sessionmaker, new_org()) as session:
            session.add(task_row(org=new_org()))
