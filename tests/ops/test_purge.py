"""`tickler purge`: read notifications past the retention go, in batches; unread and recent ones stay."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import tenant_transaction
from core.models import Notification, WebhookDelivery, WebhookEndpoint
from core.settings import Settings
from tests.helpers import command_env, new_org, notification_row, task_row
from tickler.ops.connections import maintenance_engine
from tickler.ops.purge import purge, purge_read_notifications

OLD = timedelta(days=100)


@pytest.fixture(scope="module")
async def maintenance(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = maintenance_engine(settings)
    yield engine
    await engine.dispose()


async def seed(
    sessionmaker: async_sessionmaker[AsyncSession],
    org: str,
    *,
    old_read: int,
    old_unread: int,
    recent_read: int,
) -> dict[str, list[int]]:
    """Notifications of one task: ids by kind. Inserted newest first, so that ids do not follow age."""
    now = datetime.now(UTC)
    task = task_row(org=org)
    kinds: dict[str, list[tuple[datetime, datetime | None]]] = {
        "recent_read": [(now - timedelta(days=1), now)] * recent_read,
        "old_unread": [(now - OLD, None)] * old_unread,
        "old_read": [(now - OLD, now - OLD + timedelta(hours=1))] * old_read,
    }
    async with tenant_transaction(sessionmaker, org) as session:
        session.add(task)
        await session.flush()
        rows = {
            kind: [
                notification_row(task, key=f"{kind}/{n}", created_at=created, read_at=read)
                for n, (created, read) in enumerate(times)
            ]
            for kind, times in kinds.items()
        }
        session.add_all([row for batch in rows.values() for row in batch])
    return {kind: [row.id for row in batch] for kind, batch in rows.items()}


async def remaining(sessionmaker: async_sessionmaker[AsyncSession], org: str, ids: list[int]) -> int:
    async with tenant_transaction(sessionmaker, org) as session:
        return len((await session.scalars(select(Notification.id).where(Notification.id.in_(ids)))).all())


async def test_purge_deletes_old_read_notifications_only(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    org = new_org()
    ids = await seed(sessionmaker, org, old_read=2_300, old_unread=5, recent_read=5)

    env = command_env(settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tickler", "purge", "--older-than", "90"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    printed = re.search(
        r"deleted (\d+) read notifications created before \S+ \((\d+) batches .* and (\d+) webhook delivery",
        out.decode(),
    )
    assert printed, out.decode()
    # Other tests' rows are younger than 90 days: what went is at least this test's.
    assert int(printed.group(1)) >= 2_300
    assert int(printed.group(2)) >= 3, "a thousand rows per statement"

    assert await remaining(sessionmaker, org, ids["old_read"]) == 0
    assert await remaining(sessionmaker, org, ids["old_unread"]) == 5
    assert await remaining(sessionmaker, org, ids["recent_read"]) == 5


async def test_each_batch_is_its_own_statement_and_stays_within_its_size(
    maintenance: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org = new_org()
    ids = await seed(sessionmaker, org, old_read=250, old_unread=3, recent_read=3)
    progress: list[int] = []

    def record(done: dict[str, int]) -> None:
        progress.append(done["deleted"])

    summary = await purge_read_notifications(maintenance, timedelta(days=90), batch=100, progress=record)
    steps = [after - before for before, after in zip([0, *progress], progress, strict=False)]
    assert summary.deleted == progress[-1] >= 250
    assert summary.batches == len(progress) >= 3
    assert max(steps) <= 100
    assert await remaining(sessionmaker, org, ids["old_read"]) == 0
    assert await remaining(sessionmaker, org, ids["old_unread"] + ids["recent_read"]) == 6
    # A second purge finds nothing more.
    assert (await purge_read_notifications(maintenance, timedelta(days=90), batch=100)).deleted == 0


async def test_the_maintenance_role_cannot_delete_an_unread_notification(
    maintenance: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """The purge's rule is the database's too: the role's only delete policy is for read rows."""
    org = new_org()
    ids = await seed(sessionmaker, org, old_read=0, old_unread=1, recent_read=0)
    async with maintenance.begin() as connection:
        deleted = await connection.execute(
            text("DELETE FROM notifications WHERE id = :id"), {"id": ids["old_unread"][0]}
        )
    assert deleted.rowcount == 0
    assert await remaining(sessionmaker, org, ids["old_unread"]) == 1


async def seed_attempts(
    sessionmaker: async_sessionmaker[AsyncSession], org: str, *, old: int, recent: int
) -> dict[str, list[int]]:
    """Delivery attempts at one endpoint of ``org``: ids by age, the recent ones inserted first."""
    now = datetime.now(UTC)
    async with tenant_transaction(sessionmaker, org) as session:
        endpoint = WebhookEndpoint(
            id=uuid.uuid4(),
            organization_id=org,
            url="https://hooks.example.com/",
            events=["task.changed"],
            secret="whsec_" + "A" * 32,
        )
        session.add(endpoint)
        await session.flush()
        rows = {
            kind: [
                WebhookDelivery(
                    organization_id=org,
                    endpoint_id=endpoint.id,
                    event_id=f"evt_{kind}_{n}",
                    event_type="task.changed",
                    attempt=1,
                    attempted_at=at,
                    status_code=200,
                )
                for n in range(count)
            ]
            for kind, count, at in (("recent", recent, now - timedelta(days=1)), ("old", old, now - OLD))
        }
        session.add_all([row for batch in rows.values() for row in batch])
    return {kind: [row.id for row in batch] for kind, batch in rows.items()}


async def test_webhook_delivery_attempts_past_the_retention_go_too(
    maintenance: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    org, other = new_org(), new_org()
    ids = await seed_attempts(sessionmaker, org, old=230, recent=4)
    others = await seed_attempts(sessionmaker, other, old=3, recent=2)

    summary = await purge(maintenance, timedelta(days=90), batch=100)
    assert summary.webhook_attempts_deleted >= 233, "every organization's, a hundred per statement"

    async def left(organization: str, wanted: list[int]) -> int:
        async with tenant_transaction(sessionmaker, organization) as session:
            found = await session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.id.in_(wanted)))
            return len(found.all())

    assert await left(org, ids["old"]) == 0
    assert await left(org, ids["recent"]) == 4
    assert await left(other, others["old"]) == 0
    assert await left(other, others["recent"]) == 2
    assert (await purge(maintenance, timedelta(days=90), batch=100)).webhook_attempts_deleted == 0
