"""The Quart app factory: routes, error handlers, and the clients a process holds while it serves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

from quart import Quart, Response, request
from quart_schema import Info, QuartSchema

from core.auth import TokenVerifier
from core.db import make_engine, make_sessionmaker
from core.metrics import MetricsServer, WebMetrics
from core.pubsub import Channel, make_redis
from core.recurrence import RuleRunner
from core.settings import Settings, get_settings
from core.temporal import connect
from core.watchdog import LoopWatchdog
from web import access, health
from web.codec.routes import blueprint as codec
from web.errors import register_error_handlers
from web.limits import RateLimiter
from web.me.routes import blueprint as me
from web.notifications.routes import blueprint as notifications
from web.page.routes import blueprint as page
from web.problems import ContractOpenAPIProvider
from web.requests import JSONRequest
from web.resources import EXTENSION_KEY, Resources
from web.session.routes import blueprint as session
from web.stream.hub import StreamHub
from web.stream.routes import blueprint as stream
from web.tasks.routes import blueprint as tasks
from web.webhooks.routes import blueprint as webhooks

log = logging.getLogger(__name__)

# The app's WebMetrics, for the whole life of the app (its registry outlives a restart of serving).
METRICS_KEY = "tickler.metrics"


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
    for blueprint in (health.blueprint, session, tasks, notifications, me, webhooks, stream, page, codec):
        app.register_blueprint(blueprint)
    metrics = app.extensions[METRICS_KEY] = WebMetrics()
    _count_requests(app, metrics)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        engine = make_engine(settings, application_name="tickler-web")
        redis = make_redis(settings)
        hub = StreamHub(
            redis,
            Channel.of(settings),
            settings.sse_queue_size,
            metrics,
            heartbeat_seconds=settings.sse_heartbeat_seconds,
        )
        rules = RuleRunner()
        watchdog = LoopWatchdog(settings.event_loop_block_seconds, metrics)
        watchdog.start()
        # On an address of its own, from a thread of its own: a scrape is answered while the loop is blocked.
        metrics_server = None
        if settings.web_metrics_port:
            metrics_server = MetricsServer(settings.metrics_host, settings.web_metrics_port, metrics.registry)
        try:
            if metrics_server is not None:
                metrics_server.start()
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
                metrics=metrics,
            )
            yield
        finally:
            rules.close()
            await hub.stop()
            await redis.aclose()
            await engine.dispose()
            watchdog.stop()
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.close)

    # Last, so that it wraps every other middleware: each request's id and access line (web/access.py).
    access.install(app)
    return app


def _count_requests(app: Quart, metrics: WebMetrics) -> None:
    """Every answered request, errors included, in ``tickler_http_requests_total`` and its time in
    ``tickler_http_request_duration_seconds``, labelled by the matched URL rule's template (never the
    path, which holds ids)."""

    @app.after_request
    async def count(response: Response) -> Response:
        # Timed from the request's arrival, as its access line is (web/access.py).
        record = access.current_record()
        rule = request.url_rule
        seconds = None if record is None else time.perf_counter() - record.started
        metrics.request_done(request.method, rule.rule if rule else None, response.status_code, seconds)
        return response
