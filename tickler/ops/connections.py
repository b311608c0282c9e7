"""The clients of the operations commands: PostgreSQL as the maintenance role, and Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from core.temporal import connect


def maintenance_engine(settings: Settings) -> AsyncEngine:
    """An engine of the maintenance login (TICKLER_MAINTENANCE_DATABASE_URL) whose sessions run as
    TICKLER_MAINTENANCE_DATABASE_ROLE: every organization's rows to
    read, read notifications to delete, nothing else (migrations/versions/2026_11_30_maintenance_role.py).
    The app's own sessions never take this role."""
    # Up to twice this many connections (the pool's overflow): a repair in flight reads a row and its
    # notifications, TICKLER_AUDIT_CONCURRENCY of them at once, each for a moment.
    pool_size = max(2, min(settings.audit_concurrency, 20) // 2)
    own = settings.model_copy(
        update={"database_role": settings.maintenance_database_role, "database_pool_size": pool_size}
    )
    return make_engine(own, application_name="tickler-maintenance", url=settings.maintenance_url())


@dataclass(frozen=True)
class Connections:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    temporal: Client


@asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Connections]:
    engine = maintenance_engine(settings)
    try:
        temporal = await connect(settings)
        yield Connections(engine, make_sessionmaker(engine), temporal)
    finally:
        await engine.dispose()
