"""Liveness and readiness probes of the web process, neither in the OpenAPI document.

``/healthz`` is cheap and query-free, so that a liveness probe adds no load on PostgreSQL and a
dependency that is down never gets a healthy process restarted. ``/readyz`` asks each dependency, within
a short timeout, so that a load balancer sends no one to a process that cannot serve them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from quart import Blueprint, Response
from quart_schema import hide
from sqlalchemy import text

from core.errors import Unavailable
from web.errors import problem_response
from web.resources import Resources, resources

log = logging.getLogger(__name__)

blueprint = Blueprint("health", __name__)

# Below the 1 s a probe commonly waits (Kubernetes' default), so that the probe gets this answer.
CHECK_TIMEOUT_SECONDS = 0.8


@blueprint.get("/healthz")
@hide
async def healthz() -> dict[str, object]:
    """No 503 for a blocked loop here, unlike the worker's: a blocked loop answers nothing at all, and by
    the time this runs the block is over. Its count tells a probe that blocks have happened."""
    res = resources()
    return {
        "status": "ok",
        "redis_subscribed": res.hub.subscribed.is_set(),
        "streams": res.hub.stream_count,
        "event_loop_blocks": res.watchdog.blocks,
    }


@blueprint.get("/readyz")
@hide
async def readyz() -> Response | dict[str, object]:
    """200 when PostgreSQL answers a query, the stream hub is subscribed to Redis and Redis answers, and
    Temporal answers, each within CHECK_TIMEOUT_SECONDS; else 503, naming what is down."""
    res = resources()
    checks: dict[str, Callable[[Resources], Awaitable[None]]] = {
        "postgresql": _postgresql,
        "redis": _redis,
        "temporal": _temporal,
    }
    outcomes = await asyncio.gather(*(_within_timeout(name, check, res) for name, check in checks.items()))
    down = {name: why for name, why in zip(checks, outcomes, strict=True) if why is not None}
    if not down:
        return {"status": "ready", "checks": dict.fromkeys(checks, "ok")}
    error = Unavailable("Not ready: " + "; ".join(f"{name}: {why}" for name, why in down.items()) + ".")
    return problem_response({**error.problem(), "down": list(down)}, error.status, error.headers)


async def _within_timeout(
    name: str, check: Callable[[Resources], Awaitable[None]], res: Resources
) -> str | None:
    """Why the dependency is down, or None. The reason says little: anyone may call this route."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check(res)
    except TimeoutError:
        log.warning("readiness: %s did not answer within %s s", name, CHECK_TIMEOUT_SECONDS)
        return f"no answer within {CHECK_TIMEOUT_SECONDS} s"
    except Exception as exc:
        log.warning("readiness: %s failed: %r", name, exc)
        return str(exc) if isinstance(exc, _Down) else "failed"
    return None


class _Down(Exception):
    """A check's own verdict, safe to show."""


async def _postgresql(res: Resources) -> None:
    async with res.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _redis(res: Resources) -> None:
    # The hub notices a lost subscription by itself; the PING finds a Redis that hangs sooner.
    if not res.hub.subscribed.is_set():
        raise _Down("the stream hub has no subscription")
    await res.redis.ping()


async def _temporal(res: Resources) -> None:
    timeout = timedelta(seconds=CHECK_TIMEOUT_SECONDS)
    if not await res.temporal.service_client.check_health(timeout=timeout):
        raise _Down("not serving")
