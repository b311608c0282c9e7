"""`tickler stats --org`: one organization's lateness percentiles, pending reminders and counts, from known
rows; nothing of another organization counts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.db import make_sessionmaker, tenant_transaction
from core.settings import Settings
from tests.helpers import command_env, new_org, notification_row, task_row
from tickler.ops.connections import maintenance_engine
from tickler.ops.stats import organization_stats


@pytest.fixture(scope="module")
async def maintenance(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = maintenance_engine(settings)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def seed(sessionmaker: async_sessionmaker[AsyncSession], org: str, now: datetime) -> None:
    """Ten reminders due in the last hour, 1 to 10 s late (three read), one due before the period; and
    one task of each state."""
    hour = timedelta(hours=1)
    long_ago = now - timedelta(days=2)
    tasks = {
        "upcoming": task_row(org=org, due_at=now + hour),
        "reminded": task_row(org=org, due_at=now - hour),
        "overdue": task_row(org=org, due_at=now - hour, updated_at=long_ago, created_at=long_ago),
        "early_offset_skipped": task_row(org=org, due_at=now - hour, reminder_offsets=[600]),
        "done": task_row(org=org, due_at=now - hour, status="done"),
        "cancelled": task_row(org=org, due_at=now + hour, status="cancelled"),
    }
    reminded = tasks["reminded"]
    due = reminded.due_at
    rows = [
        notification_row(
            reminded,
            key=f"late/{n}",
            due_at=due + timedelta(minutes=n),
            created_at=due + timedelta(minutes=n, seconds=n),
            read_at=now if n <= 3 else None,
            payload={"title": "Call Ana back", "offset_seconds": 0},
        )
        for n in range(1, 11)
    ]
    # The reminder of the reminded task's current due time, and one due before the period.
    rows.append(notification_row(reminded, key="current", due_at=due, created_at=due, read_at=now))
    rows[-1].payload = {"title": "Call Ana back", "offset_seconds": 0}
    rows.append(
        notification_row(
            reminded, key="before", due_at=now - timedelta(days=3), created_at=now - timedelta(days=3)
        )
    )
    async with tenant_transaction(sessionmaker, org) as session:
        session.add_all(tasks.values())
        await session.flush()
        session.add_all(rows)


async def test_one_organizations_figures_from_its_rows(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    maintenance: async_sessionmaker[AsyncSession],
    temporal: Client,
    tmp_path: Path,
) -> None:
    org, other = new_org(), new_org()
    now = datetime.now(UTC)
    await seed(sessionmaker, org, now)
    await seed(sessionmaker, other, now)
    since = now - timedelta(hours=2)

    stats = await organization_stats(maintenance, temporal, settings, org, since=since, until=now)

    late = stats.lateness
    # Ten reminders 1..10 s late, and the current one on time: eleven, percentiles by interpolation.
    assert (late.delivered, late.read) == (11, 4)
    assert late.p50 == pytest.approx(5.0)
    assert late.p90 == pytest.approx(9.0)
    assert late.p99 == pytest.approx(9.9)
    assert late.max == pytest.approx(10.0)
    tasks = stats.tasks
    assert (tasks.open, tasks.done, tasks.cancelled) == (4, 1, 1)
    assert tasks.upcoming == 1
    assert tasks.past_due == 3
    assert tasks.overdue_undelivered == 1, "the reminded task has its row; the early offset was skipped"
    assert stats.workflows.running == 0
    assert stats.delivery_failures is None
    assert f"OrganizationId='{org}'" in stats.workflows.queries["running"]

    env = command_env(settings)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "tickler", "stats", "--org", org, "--since", since.isoformat(), "--json"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    printed = json.loads(out)
    assert printed["lateness"]["delivered"] == 11
    assert printed["tasks"]["overdue_undelivered"] == 1
    assert "not recorded per organization" in printed["note"]
