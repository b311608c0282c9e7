"""Serve the app with Hypercorn; on SIGTERM end the streams first, so shutdown never waits on them."""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from core.gcwatch import collection_schedule
from core.settings import Settings
from web.app import create_app
from web.resources import EXTENSION_KEY, Resources

log = logging.getLogger(__name__)

# How often the young generations are collected, whatever CPython's counter says: with 10,000 streams
# each pass walks the ~400 waits renewed since the last one, every tenth what lived 2 s
# (core/gcwatch.py, YoungClock).
YOUNG_COLLECTION_SECONDS = 0.2


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.web_host}:{settings.web_port}"]
    # The app logs each request itself (web/access.py, logger `tickler.access`): with the request id, the
    # route and the caller, which Hypercorn's access log cannot know.
    config.accesslog = None
    # A logger, not a path: Hypercorn then adds no handler of its own, and its lines go through the one
    # handler of core/logs.py (JSON or text, like every other line) instead of being printed twice.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    config.backlog = settings.web_backlog
    return config


async def serve_until(app: Quart, config: Config, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then end every stream so that their clients reconnect elsewhere."""

    async def shutdown_trigger() -> None:
        await stop.wait()
        # Hypercorn waits for open connections (pgjones/hypercorn#308): end the streams ourselves.
        res: Resources | None = app.extensions.get(EXTENSION_KEY)
        if res is not None:
            res.hub.close_all()

    await serve(app, config, shutdown_trigger=shutdown_trigger)


async def serve_web(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    # The web process cannot know when a message comes, so it cannot schedule its full collections
    # between them as the worker does; it makes every pass short instead (core/gcwatch.py): full ones
    # walk only what is new (SurvivorFreezer) and come when the heap has grown, not when waits renewed
    # (GapCollector); young ones come on a clock, before the renewed waits pile up (YoungClock).
    async with collection_schedule(
        warn_after_seconds=settings.gc_pause_warning_ms / 1000,
        full_on_growth=True,
        young_every=YOUNG_COLLECTION_SECONDS,
        freeze_survivors_for=settings.web_gc_refresh_seconds,
    ) as frozen:
        log.info("%d start-up objects frozen out of garbage collection", frozen)
        await serve_until(app, hypercorn_config(settings), stop)
