"""The web process's metrics: bounded labels (a route's template, never its path), an address of their
own (never the API's port, answered while the event loop is blocked), and what streams and the hub count."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from redis.asyncio import Redis

from core.metrics import WebMetrics
from core.pubsub import Channel
from core.settings import Settings
from core.watchdog import LoopWatchdog
from tests.helpers import bearer, new_org, open_stream, serve_app, wait_until
from tickler import devstack
from tickler.run import _metrics_ports, _metrics_ports_unusable
from web.app import METRICS_KEY, create_app
from web.stream.hub import StreamHub


def hold_the_loop(seconds: float) -> None:
    """A block of a known length: the thing under test, not a wait."""
    time.sleep(seconds)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


async def test_a_request_is_labelled_by_its_route_template_never_by_its_path() -> None:
    app = create_app(Settings(web_metrics_port=0))
    metrics: WebMetrics = app.extensions[METRICS_KEY]
    client = app.test_client()
    secret = uuid.uuid4().hex
    await client.get(f"/assets/{secret}.js")
    await client.get(f"/v1/{secret}/nowhere")
    await client.open(f"/v1/tasks/{uuid.uuid4()}", method=f"X{secret[:8].upper()}", json=None)

    registry = metrics.registry
    assert (
        sample(
            registry,
            "tickler_http_requests_total",
            method="GET",
            route="/assets/<path:filename>",
            status="404",
        )
        == 1
    )
    assert sample(registry, "tickler_http_requests_total", method="GET", route="unmatched", status="404") == 1
    # A made-up method is "other", whatever the client invents.
    assert (
        sample(registry, "tickler_http_requests_total", method="other", route="unmatched", status="405") == 1
    )
    assert (
        sample(registry, "tickler_http_request_duration_seconds_count", method="GET", route="unmatched") == 1
    )
    assert secret not in exposition(registry)
    assert secret[:8].upper() not in exposition(registry)


async def test_the_metrics_are_not_served_on_the_api_port() -> None:
    with pytest.raises(ValidationError, match="TICKLER_WEB_METRICS_PORT must differ from TICKLER_WEB_PORT"):
        Settings(web_port=9464, web_metrics_port=9464)
    assert Settings(web_port=9464, web_metrics_port=0).web_metrics_port == 0
    response = await create_app(Settings()).test_client().get("/metrics")
    assert response.status_code == 404


def test_make_run_defaults_and_each_replica_has_a_metrics_port_of_its_own() -> None:
    defaults = Settings()
    assert (defaults.metrics_host, defaults.web_metrics_port, defaults.worker_metrics_port) == (
        "127.0.0.1",
        9464,
        9465,
    )
    assert _metrics_ports(defaults, 1) == {
        "web": ("TICKLER_WEB_METRICS_PORT", 9464),
        "worker": ("TICKLER_WORKER_METRICS_PORT", 9465),
    }
    three = _metrics_ports(defaults, 3)
    assert {name: port for name, (_, port) in three.items()} == {
        "web-1": 9464,
        "web-2": 9466,
        "web-3": 9468,
        "worker-1": 9465,
        "worker-2": 9467,
        "worker-3": 9469,
    }
    assert _metrics_ports(Settings(web_metrics_port=0, worker_metrics_port=0), 2) == {}
    # Refused before anything starts: two processes on one port, or a metrics port among the API's.
    clash = Settings(web_metrics_port=9000, worker_metrics_port=9002)
    assert "taken by web-2" in _metrics_ports_unusable(clash, 2, _metrics_ports(clash, 2))
    api = Settings(web_port=8000, web_metrics_port=8001)
    assert "taken by the API" in _metrics_ports_unusable(api, 2, _metrics_ports(api, 2))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Settings(web_metrics_port=taken.getsockname()[1], worker_metrics_port=0)
        assert "is in use" in _metrics_ports_unusable(busy, 1, _metrics_ports(busy, 1))


def test_the_hub_counts_open_streams_and_the_ones_it_cuts_off() -> None:
    metrics = WebMetrics()
    # Nothing here talks to Redis: subscribing a stream and offering it events are in-process.
    hub = StreamHub(cast(Redis, None), Channel("channel", b"k" * 32), 2, metrics)
    registry = metrics.registry
    first, second = hub.subscribe("org", "7"), hub.subscribe("org", "8")
    assert sample(registry, "tickler_streams_open") == 2
    for _ in range(5):  # a stream that falls behind is cut off once, however much more comes
        first.offer(cast(Any, object()))
    assert first.overflowed
    assert sample(registry, "tickler_streams_cut_off_total", reason="overflow") == 1
    assert sample(registry, "tickler_streams_cut_off_total", reason="write_timeout") == 0
    hub.unsubscribe(first)
    hub.unsubscribe(first)  # twice: a stream's cleanup must not count it out twice
    assert sample(registry, "tickler_streams_open") == 1
    hub.unsubscribe(second)
    assert sample(registry, "tickler_streams_open") == 0


async def test_the_web_counts_the_blocks_of_its_event_loop() -> None:
    metrics = WebMetrics()
    async with LoopWatchdog(0.2, metrics) as watchdog:
        hold_the_loop(0.5)
        await wait_until(lambda: sample(metrics.registry, "tickler_event_loop_block_seconds_count"))
    assert watchdog.blocks == 1
    assert sample(metrics.registry, "tickler_event_loop_blocks_total") == 1
    assert sample(metrics.registry, "tickler_event_loop_block_seconds_bucket", le="0.25") == 0
    assert sample(metrics.registry, "tickler_event_loop_block_seconds_bucket", le="1.0") == 1


async def test_a_real_web_process_serves_bounded_metrics_on_their_own_port(settings: Settings) -> None:
    port = devstack.free_port()
    own = settings.model_copy(update={"web_metrics_port": port})
    org = new_org()
    headers = bearer(settings, "7", org)
    task_id = uuid.uuid4()
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    async def scrape(client: httpx.AsyncClient) -> str:
        response = await client.get(metrics_url)
        assert response.status_code == 200
        return response.text

    async with serve_app(own) as (url, _), httpx.AsyncClient(timeout=10.0) as client:
        assert (await client.get(f"{url}/v1/tasks/{task_id}", headers=headers)).status_code == 404
        assert (await client.get(f"{url}/metrics")).status_code == 404, "never on the API's port"
        assert (await client.get(f"{url}/readyz")).status_code == 200
        text = await scrape(client)
        line = 'tickler_http_requests_total{method="GET",route="/v1/tasks/<uuid:task_id>",status="404"} 1.0'
        assert line in text
        assert str(task_id) not in text
        assert org not in text
        assert "tickler_hub_subscribed 1.0" in text
        assert 'tickler_readiness{dependency="postgresql"} 1.0' in text

        async with (
            httpx.AsyncClient(base_url=url, timeout=10.0) as streaming,
            open_stream(streaming, headers) as stream,
        ):
            await stream.read_past_heartbeat()
            assert "tickler_streams_open 1.0" in await scrape(client)

        async def counted_out() -> bool:
            return "tickler_streams_open 0.0" in await scrape(client)

        await wait_until(counted_out, what="the closed stream to be counted out")

        # A thread of its own answers: the scrape succeeds while the event loop is blocked.
        answers: list[httpx.Response] = []
        scraper = threading.Thread(target=lambda: answers.append(httpx.get(metrics_url, timeout=5.0)))
        scraper.start()
        scraper.join(timeout=10.0)  # blocks this loop, the app's too, until the scrape is answered
        [answer] = answers
        assert answer.status_code == 200
        assert "tickler_http_requests_total" in answer.text

    with pytest.raises(httpx.ConnectError):
        await asyncio.to_thread(httpx.get, metrics_url, timeout=2.0)
