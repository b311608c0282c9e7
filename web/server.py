"""Serve the app with Hypercorn; on SIGTERM end the streams first, so shutdown never waits on them."""

from __future__ import annotations

import asyncio
import logging
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from core.settings import Settings
from web.app import create_app
from web.resources import EXTENSION_KEY, Resources


async def serve_web(settings: Settings) -> None:
    app = create_app(settings)
    config = Config()
    config.bind = [f"{settings.web_host}:{settings.web_port}"]
    config.accesslog = None
    # Hypercorn would add its own handler to its error logger, so that every line printed twice.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        # Hypercorn waits for open connections (pgjones/hypercorn#308): end the streams ourselves.
        res: Resources | None = app.extensions.get(EXTENSION_KEY)
        if res is not None:
            res.hub.close_all()

    await serve(app, config, shutdown_trigger=shutdown_trigger)
