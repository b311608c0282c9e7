"""The web process's Prometheus metrics: one registry per app, served from a thread of its own.

The worker's metrics go through the Temporal SDK's exporter instead (core/temporal.py), which carries the
SDK's own; docs/decisions.md §21 says why two exporters. Labels are bounded by construction: a route is
its URL rule's template, never the path; a method outside the standard ones is "other"; no label ever
holds an organization or user id.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from core.watchdog import stop_serving

log = logging.getLogger(__name__)

# Seconds: a request answers in milliseconds; one that takes seconds waited on a dependency's timeout.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BLOCK_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Why a stream was ended by the server before its client left: its queue overflowed (it fell behind the
# hub), or a write waited TICKLER_SSE_WRITE_TIMEOUT_SECONDS (its client stopped reading).
CUT_OFF_REASONS = ("overflow", "write_timeout")
# Why the stream hub dropped a message of the Redis channel: no valid signature, or not an event.
DROP_REASONS = ("signature", "malformed")
# Where an event sent on a stream came from: carried whole by the hub, or read from PostgreSQL.
EVENT_SOURCES = ("live", "replay")


class WebMetrics:
    """Every metric of one web app, in a registry of its own (two apps in one process do not collide).

    Also the web's ``core.watchdog.BlockRecorder``: ``blocked`` / ``ended`` count its event loop's blocks.
    """

    def __init__(self) -> None:
        # Process-wide: no ``*_created`` series beside each counter and histogram, which Prometheus's text
        # format does not need and which would double the series of this process.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "tickler_http_requests",
            "HTTP requests answered, by method, route template (or 'unmatched') and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "tickler_http_request_duration_seconds",
            "Time to answer a request (for the stream: until its response starts), by method and route",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.streams_open = Gauge(
            "tickler_streams_open", "Notification streams open in this process", registry=registry
        )
        self.stream_events_sent = Counter(
            "tickler_stream_events_sent",
            "Events sent on streams: carried whole from the hub (live) or read from PostgreSQL (replay)",
            ["source"],
            registry=registry,
        )
        self.streams_cut_off = Counter(
            "tickler_streams_cut_off",
            "Streams the server ended because their client fell behind (overflow) or stopped reading "
            "(write_timeout)",
            ["reason"],
            registry=registry,
        )
        self.hub_subscribed = Gauge(
            "tickler_hub_subscribed",
            "1 while the stream hub's Redis subscription is up, else 0",
            registry=registry,
        )
        self.hub_resubscriptions = Counter(
            "tickler_hub_resubscriptions",
            "Times the stream hub subscribed again after losing its Redis subscription",
            registry=registry,
        )
        self.messages_dropped = Counter(
            "tickler_hub_messages_dropped",
            "Messages on the Redis channel the stream hub dropped: no valid signature (signature) or not "
            "an event (malformed)",
            ["reason"],
            registry=registry,
        )
        self.loop_blocks = Counter(
            "tickler_event_loop_blocks",
            "Blocks of the web process's event loop past TICKLER_EVENT_LOOP_BLOCK_SECONDS",
            registry=registry,
        )
        self.loop_block_seconds = Histogram(
            "tickler_event_loop_block_seconds",
            "How long each block of the web process's event loop lasted",
            buckets=BLOCK_BUCKETS,
            registry=registry,
        )
        self.readiness = Gauge(
            "tickler_readiness",
            "1 if the dependency answered the last /readyz check, 0 if not (absent before the first)",
            ["dependency"],
            registry=registry,
        )
        # Every series an alert or the dashboard reads exists from the start, at 0: a counter that appears
        # with its first increment hides that increment from rate() and increase().
        for reason in CUT_OFF_REASONS:
            self.streams_cut_off.labels(reason)
        for source in EVENT_SOURCES:
            self.stream_events_sent.labels(source)
        for reason in DROP_REASONS:
            self.messages_dropped.labels(reason)

    # -- requests ----------------------------------------------------------------------------------------

    def request_done(self, method: str, route: str | None, status: int, seconds: float | None) -> None:
        """Count one answered request; ``route`` is the matched URL rule's template, None if none matched."""
        method = method if method in METHODS else "other"
        route = route or UNMATCHED
        self.requests.labels(method, route, str(status)).inc()
        if seconds is not None:
            self.request_seconds.labels(method, route).observe(seconds)

    # -- core.watchdog.BlockRecorder ---------------------------------------------------------------------

    def blocked(self) -> None:
        self.loop_blocks.inc()

    def ended(self, seconds: float) -> None:
        self.loop_block_seconds.observe(seconds)


class MetricsServer:
    """``GET /metrics`` of ``registry`` on ``host:port``, answered by prometheus_client's threaded HTTP
    server: a scrape is answered even while the event loop is blocked, and never on the API's port.
    A context manager (or ``start`` / ``close``); ``port`` 0 picks a free one and ``port`` tells which."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        self.port = self._server.server_address[1]
        log.info("metrics at %s", self.url)

    def close(self) -> None:
        """Stop serving; waits up to half a second for the server's thread to notice."""
        if self._server is not None and self._thread is not None:
            stop_serving(self._server, self._thread)
            self._server = self._thread = None
