"""Liveness and readiness probes of the web process, neither in the OpenAPI document.

``/healthz`` is cheap and query-free, so that a liveness probe adds no load on PostgreSQL and a
dependency that is down never gets a healthy process restarted. ``/readyz`` asks each dependency, within
a short timeout: for an orchestrator's readiness gate and for operators. The proxy in front of the web
processes checks ``/healthz`` (decisions §20): every process shares the same dependencies, so an outage
of one would take them all out of rotation at once and cut every open stream.
"""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import hide

from core import readiness
from core.errors import Unavailable
from web.errors import problem_response
from web.resources import Resources, resources

blueprint = Blueprint("health", __name__)


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
    Temporal answers, each within core.readiness.CHECK_TIMEOUT_SECONDS; else 503, naming what is down."""
    res = resources()
    checks = {
        "postgresql": readiness.postgresql(res.engine),
        "redis": _hub_and_redis(res),
        "temporal": readiness.temporal(res.temporal),
    }
    down = await readiness.check_all(checks)
    for name in checks:
        res.metrics.readiness.labels(name).set(name not in down)
    if not down:
        return {"status": "ready", "checks": dict.fromkeys(checks, "ok")}
    error = Unavailable("Not ready: " + "; ".join(f"{name}: {why}" for name, why in down.items()) + ".")
    return problem_response({**error.problem(), "down": list(down)}, error.status, error.headers)


def _hub_and_redis(res: Resources) -> readiness.Check:
    ping = readiness.redis(res.redis)

    async def check() -> None:
        # The hub notices a lost subscription by itself; the PING finds a Redis that hangs sooner.
        if not res.hub.subscribed.is_set():
            raise readiness.Down("the stream hub has no subscription")
        await ping()

    return check
