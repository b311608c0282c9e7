"""The SQLAlchemy async engine and session factory, made once per process, and tenant transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from core.settings import Settings

# Built once: SQLAlchemy then skips building and hashing the statement on every transaction.
_SET_TENANT = select(func.set_config("tickler.organization_id", bindparam("organization_id"), True))


def make_engine(settings: Settings, *, application_name: str, url: str | None = None) -> AsyncEngine:
    """The process's engine. Every wait on PostgreSQL is bounded, so that a database that hangs (a lock
    held, a network gone) ends a request with an error the API answers 503 instead of holding it.
    ``url``: another login than TICKLER_DATABASE_URL's (the maintenance login)."""
    server_settings = {
        "application_name": application_name,  # shows in pg_stat_activity
        # The server cancels a statement that runs or waits for a lock too long (SQLSTATE 57014), and the
        # connection stays usable.
        "statement_timeout": str(settings.database_statement_timeout_ms),
    }
    if settings.database_role:
        # Every session runs as the app's role, which row-level security applies to. The login can RESET
        # ROLE, back to itself, which holds nothing (migrations/roles.sql): never to the owner.
        server_settings["role"] = settings.database_role
    return create_async_engine(
        url or settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=settings.database_connect_timeout_seconds,
        # An error's text leaves the statement's values out: they can be a task's title or notes, and
        # errors are logged (docs/decisions.md §22).
        hide_parameters=True,
        connect_args={
            "server_settings": server_settings,
            "timeout": settings.database_connect_timeout_seconds,
            # For a server that cannot even cancel (the network is gone): a second after its own timeout.
            "command_timeout": settings.database_statement_timeout_ms / 1000 + 1,
        },
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def tenant_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], organization_id: str
) -> AsyncIterator[AsyncSession]:
    """One transaction that sees and writes only ``organization_id``'s rows (row-level security).

    The setting is local to the transaction (SET LOCAL), so it never outlives it on a pooled connection.
    Commits when the block ends, rolls back if it raises.
    """
    async with sessionmaker.begin() as session:
        await session.execute(_SET_TENANT, {"organization_id": organization_id})
        yield session
