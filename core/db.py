"""The SQLAlchemy async engine and session factory, made once per process, and tenant transactions.

A tenant transaction names its organization to PostgreSQL with a signature (HMAC-SHA256 under
TICKLER_ORGANIZATION_KEYS), and row-level security shows a row only to a transaction whose signature
matches one of the keys `tickler migrate` installed, in a table only the schema's owner reads
(migrations/versions/2026_11_30_signed_organization.py; docs/decisions.md §26). SQL run by the app's
login, which can set any setting, thus cannot name an organization the app did not sign.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.settings import DEV_ENV, Settings, dev_secret

# Built once: SQLAlchemy then skips building and hashing the statement on every transaction.
# tickler_enter() sets the organization and its signature, local to the transaction, and raises if the
# database does not accept the signature (a key `tickler migrate` did not install).
_SET_TENANT = select(func.tickler_enter(bindparam("organization_id"), bindparam("signature")))

# What `tickler run` (TICKLER_ENV=dev) keeps in TICKLER_DATA_DIR when TICKLER_ORGANIZATION_KEYS is unset.
DEV_ORGANIZATION_KEY_FILE = "organization.key"
MIN_KEY_LENGTH = 32
# The engine's execution option that carries its signer (make_engine), read by tenant_transaction().
_SIGNER = "tickler_organization_signer"
# SHA-256's block: an HMAC key is hashed if longer, else padded to it (RFC 2104).
_BLOCK = 64


class OrganizationKeyError(Exception):
    """No usable organization key is configured."""


def organization_keys(settings: Settings) -> list[bytes]:
    """TICKLER_ORGANIZATION_KEYS, newest first; unset, a development stack's generated key (one file in
    TICKLER_DATA_DIR, shared by `tickler run`'s migration, workers and web processes)."""
    if settings.organization_keys is not None:
        keys = [k.strip().encode() for k in settings.organization_keys.get_secret_value().split(",")]
        keys = [k for k in keys if k]
        if not keys:
            raise OrganizationKeyError("TICKLER_ORGANIZATION_KEYS holds no key")
        if short := [i + 1 for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]:
            raise OrganizationKeyError(
                f"TICKLER_ORGANIZATION_KEYS: key {short[0]} is shorter than {MIN_KEY_LENGTH} characters"
            )
        return keys
    if settings.env == DEV_ENV:
        return [dev_secret(settings.data_dir / DEV_ORGANIZATION_KEY_FILE)]
    raise OrganizationKeyError(
        "TICKLER_ORGANIZATION_KEYS is not set: the web and the worker sign the organization of each "
        "transaction with it, and PostgreSQL's row-level security checks the signature. Give `tickler "
        "migrate`, the worker and every web process the same random value of 32 characters or more "
        "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`); docs/deployment.md."
    )


def key_pads(key: bytes) -> tuple[bytes, bytes]:
    """The HMAC-SHA256 inner and outer padded keys of ``key`` (RFC 2104), as the database keeps them:
    with these, SQL computes the HMAC from PostgreSQL's built-in sha256() (no pgcrypto)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


class OrganizationSigner:
    """Signs organization ids with the newest key; the keys are read when first needed, so that a
    process that never names an organization (maintenance) needs none."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._key: bytes | None = None

    def sign(self, organization_id: str) -> str:
        if self._key is None:
            self._key = organization_keys(self._settings)[0]
        return organization_signature(self._key, organization_id)


@lru_cache(maxsize=65_536)
def organization_signature(key: bytes, organization_id: str) -> str:
    """The hex HMAC-SHA256 of ``organization_id`` under ``key``, as tickler_organization() computes it."""
    return hmac.new(key, organization_id.encode(), hashlib.sha256).hexdigest()


def organization_signer(engine: AsyncEngine) -> OrganizationSigner:
    """The signer of an engine made by :func:`make_engine`."""
    signer = engine.get_execution_options().get(_SIGNER)
    if not isinstance(signer, OrganizationSigner):
        raise RuntimeError("an engine not made by core.db.make_engine names no organization")
    return signer


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
        execution_options={_SIGNER: OrganizationSigner(settings)},
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


class Row(asyncpg.Record):
    """An asyncpg record whose columns read as attributes too, as SQLAlchemy's rows do. A column named
    like one of Record's methods (get, items, keys, values) reads as the method: index it."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


async def fetch_direct(connection: AsyncConnection, sql: str, *args: Any) -> list[Row]:
    """``sql`` (asyncpg's ``$n`` placeholders) on the asyncpg connection under ``connection``, past
    SQLAlchemy's adapter and result processing: ~0.3 ms less per statement (docs/decisions.md §38), for
    the one statement on the instant's path. ``connection`` must be in autocommit: nothing here begins
    or ends a transaction. The connection's codecs are SQLAlchemy's (jsonb comes back decoded), and its
    timeouts stand (the server's statement_timeout, asyncpg's command_timeout). An error that may have
    left the connection unusable (anything but an error the server answered) invalidates it, so that the
    pool does not hand it out again; SQLAlchemy would have done so had it run the statement."""
    raw = await connection.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection
    try:
        return await driver.fetch(sql, *args, record_class=Row)
    except BaseException as exc:
        if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, asyncpg.PostgresConnectionError):
            await connection.invalidate()
        raise


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
    signer = organization_signer(sessionmaker.kw["bind"])
    parameters = {"organization_id": organization_id, "signature": signer.sign(organization_id)}
    async with sessionmaker.begin() as session:
        await session.execute(_SET_TENANT, parameters)
        yield session
