"""Readiness: whether each dependency of a process answers, within a short timeout.

The web process (web/health.py, ``/readyz``) and the worker (its health endpoint) ask the same
questions of PostgreSQL, Redis and Temporal; each process adds its own (the web's stream hub).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from core.db import organization_signer

log = logging.getLogger(__name__)

# Below the 1 s a probe commonly waits (Kubernetes' default), so that the probe gets this answer.
CHECK_TIMEOUT_SECONDS = 0.8

Check = Callable[[], Awaitable[None]]

# An organization no tenant has: the readiness check enters it to prove the database accepts the signature.
PROBE = "-readiness-probe-"
_ENTER = text("SELECT tickler_enter(:organization, :signature)")
INSUFFICIENT_PRIVILEGE = "42501"


class Down(Exception):
    """A check's own verdict, safe to show to whoever asks (a readiness route needs no login)."""


async def check_all(checks: Mapping[str, Check]) -> dict[str, str]:
    """What is down, by name, with a reason that says little (the real error is logged); {} if nothing."""
    outcomes = await asyncio.gather(*(_within_timeout(name, check) for name, check in checks.items()))
    return {name: why for name, why in zip(checks, outcomes, strict=True) if why is not None}


async def _within_timeout(name: str, check: Check) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except TimeoutError:
        log.warning("readiness: %s did not answer within %s s", name, CHECK_TIMEOUT_SECONDS)
        return f"no answer within {CHECK_TIMEOUT_SECONDS} s"
    except Exception as exc:
        log.warning("readiness: %s failed: %r", name, exc)
        return str(exc) if isinstance(exc, Down) else "failed"
    return None


def postgresql(engine: AsyncEngine) -> Check:
    """The database answers, and accepts this process's organization signatures (core/db.py): a key that
    `tickler migrate` did not install would otherwise show every organization empty."""
    signer = organization_signer(engine)

    async def check() -> None:
        async with engine.connect() as connection:
            try:
                await connection.execute(_ENTER, {"organization": PROBE, "signature": signer.sign(PROBE)})
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
                    raise Down(
                        "the database refuses this process's TICKLER_ORGANIZATION_KEYS: run `tickler "
                        "migrate` with them"
                    ) from exc
                raise
            await connection.rollback()

    return check


def redis(client: Redis) -> Check:
    async def check() -> None:
        await client.ping()

    return check


def temporal(client: Client) -> Check:
    async def check() -> None:
        if not await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_SECONDS)):
            raise Down("not serving")

    return check
