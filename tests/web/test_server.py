"""Shutdown ends the open streams itself, so clients reconnect to another process at once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from core.settings import Settings
from tests.helpers import STREAM_DEADLINE, bearer, new_org, open_stream
from tickler import devstack
from web.app import create_app
from web.server import hypercorn_config, serve_until


async def test_shutdown_ends_open_streams_instead_of_waiting_for_them(settings: Settings) -> None:
    port = devstack.free_port()
    own = settings.model_copy(update={"web_host": "127.0.0.1", "web_port": port})
    config = hypercorn_config(own)
    # Far longer than the deadlines below: the shutdown must not be waiting for the streams to go.
    config.graceful_timeout = 120
    stop = asyncio.Event()
    server = asyncio.create_task(serve_until(create_app(own), config, stop))
    await asyncio.to_thread(devstack.wait_for_port, "127.0.0.1", port, 30.0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=STREAM_DEADLINE) as client:
        headers = bearer(own, "7", new_org())
        async with open_stream(client, headers) as first, open_stream(client, headers) as second:
            await first.read_past_heartbeat()
            await second.read_past_heartbeat()
            stop.set()
            for stream in (first, second):
                with pytest.raises(StopAsyncIteration):
                    await stream.read_until(lambda _: False)
    await asyncio.wait_for(server, STREAM_DEADLINE)


async def test_the_listening_socket_queues_what_the_backlog_setting_says(settings: Settings) -> None:
    """Hypercorn's own backlog of 100 reset streams opening at once (a reconnection storm); `ss` shows a
    listening socket's backlog as its Send-Q."""
    port = devstack.free_port()
    own = settings.model_copy(update={"web_host": "127.0.0.1", "web_port": port, "web_backlog": 1234})
    stop = asyncio.Event()
    server = asyncio.create_task(serve_until(create_app(own), hypercorn_config(own), stop))
    try:
        await asyncio.to_thread(devstack.wait_for_port, "127.0.0.1", port, 30.0)
        listing = await asyncio.create_subprocess_exec(
            "ss", "-ltnH", f"sport = :{port}", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await listing.communicate()
        [line] = out.decode().splitlines()
        state, _queued, backlog, *_ = line.split()
        assert (state, backlog) == ("LISTEN", "1234")
    finally:
        stop.set()
        await asyncio.wait_for(server, STREAM_DEADLINE)
