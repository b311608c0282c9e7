"""Liveness: cheap and query-free, so that probes add no load on PostgreSQL."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import hide

from web.resources import resources

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@hide
async def healthz() -> dict[str, object]:
    hub = resources().hub
    return {"status": "ok", "redis_subscribed": hub.subscribed.is_set(), "streams": hub.stream_count}
