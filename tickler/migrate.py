"""Apply the Alembic revisions, and install the organization keys; needs no alembic.ini, so it works from
an installed package too."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, insert, text
from sqlalchemy.ext.asyncio import create_async_engine

import migrations
from core.db import key_pads
from core.models import organization_keys_table as keys_table


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head", *, organization_keys: Sequence[bytes] = ()) -> None:
    """Migrate to ``revision``; then, given keys, make them exactly the ones the database accepts."""
    command.upgrade(alembic_config(database_url), revision)
    if organization_keys:
        asyncio.run(install_organization_keys(database_url, organization_keys))


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def install_organization_keys(database_url: str, keys: Sequence[bytes]) -> None:
    """Replace the database's organization keys with ``keys``, in one transaction: a signature under a key
    left out is refused from its commit on (docs/deployment.md, key rotation)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            if await connection.scalar(text("SELECT to_regclass(:t)"), {"t": keys_table.name}) is None:
                raise RuntimeError(f"no table {keys_table.name}: migrate to head first")
            await connection.execute(delete(keys_table))
            await connection.execute(
                insert(keys_table),
                [
                    dict(zip(("inner_pad", "outer_pad"), key_pads(k), strict=True))
                    for k in dict.fromkeys(keys)
                ],
            )
    finally:
        await engine.dispose()
