"""What a web process holds for its lifetime: made at start in ``while_serving``, closed at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from core.auth import TokenVerifier
from core.metrics import WebMetrics
from core.recurrence import RuleRunner
from core.settings import Settings
from core.watchdog import LoopWatchdog
from web.limits import RateLimiter
from web.stream.hub import StreamHub

EXTENSION_KEY = "tickler"


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    temporal: Client
    hub: StreamHub
    verifier: TokenVerifier
    rate_limiter: RateLimiter
    rules: RuleRunner
    # Logs and counts blocks of this process's event loop (/healthz shows the count, metrics too).
    watchdog: LoopWatchdog
    # This app's Prometheus metrics (core/metrics.py), served on TICKLER_WEB_METRICS_PORT.
    metrics: WebMetrics


def resources() -> Resources:
    res: Resources = current_app.extensions[EXTENSION_KEY]
    return res
