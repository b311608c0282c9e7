"""Liveness: cheap and query-free, so that probes add no load on PostgreSQL."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import hide

from web.resources import resources

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
