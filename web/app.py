"""The Quart app factory: routes, error handlers, and the clients a process holds while it serves."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

from quart import Quart
from quart_schema import Info, QuartSchema

from core.auth import TokenVerifier
from core.db import make_engine, make_sessionmaker
from core.pubsub import make_redis
from core.recurrence import RuleRunner
from core.settings import Settings, get_settings
from core.temporal import connect
from core.watchdog import LoopWatchdog
from web import health
from web.errors import register_error_handlers
from web.limits import RateLimiter
from web.notifications.routes import blueprint as notifications
from web.page.routes import blueprint as page
from web.problems import ContractOpenAPIProvider
from web.requests import JSONRequest
from web.resources import EXTENSION_KEY, Resources
from web.session.routes import blueprint as session
from web.stream.hub import StreamHub
from web.stream.routes import blueprint as stream
from web.tasks.routes import blueprint as tasks

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Quart:
    settings = settings or get_settings()
    # No app-level static route: it would shadow the page blueprint's assets.
    app = Quart(__name__, static_folder=None)
    app.request_class = JSONRequest
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    QuartSchema(
        app,
        info=Info(title="Tickler", version="1", description="Reminders for multi-tenant CRMs."),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
        security=[{"bearer": []}],
        openapi_provider_class=ContractOpenAPIProvider,
    )
    register_error_handlers(app)
    for blueprint in (health.blueprint, session, tasks, notifications, stream, page):
        app.register_blueprint(blueprint)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        engine = make_engine(settings, application_name="tickler-web")
        redis = make_redis(settings)
        hub = StreamHub(redis, settings.redis_channel, settings.sse_queue_size)
        rules = RuleRunner()
        watchdog = LoopWatchdog(settings.event_loop_block_seconds)
        watchdog.start()
        try:
            temporal = await connect(settings)
            await hub.start()
            app.extensions[EXTENSION_KEY] = Resources(
                settings=settings,
                engine=engine,
                sessionmaker=make_sessionmaker(engine),
                redis=redis,
                temporal=temporal,
                hub=hub,
                verifier=TokenVerifier(settings),
                rate_limiter=RateLimiter(redis, settings.rate_limit_per_minute),
                rules=rules,
                watchdog=watchdog,
            )
            yield
        finally:
            rules.close()
            await hub.stop()
            await redis.aclose()
            await engine.dispose()
            watchdog.stop()

    return app
