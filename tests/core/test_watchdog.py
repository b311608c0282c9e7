"""A blocked event loop is seen from outside it: logged with its stack, counted, and failing /healthz.

Each test blocks the loop on purpose (the thing under test), until what it expects has been seen from
the watchdog's side, with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from core.temporal import EventLoopBlockMetrics, metrics_runtime
from core.watchdog import HealthServer, LoopWatchdog
from tests.helpers import wait_until
from tickler import devstack

THRESHOLD = 0.2


class Recorder:
    """A BlockRecorder that keeps what it is told."""

    def __init__(self) -> None:
        self.counted = 0
        self.lengths: list[float] = []

    def blocked(self) -> None:
        self.counted += 1

    def ended(self, seconds: float) -> None:
        self.lengths.append(seconds)


def block_the_loop_until(seen: Callable[[], object], within: float = 5.0) -> None:
    """Hold the event loop (its thread never yields) until ``seen`` is true; the stack must name this."""
    deadline = time.monotonic() + within
    while not seen():
        assert time.monotonic() < deadline, "the watchdog did not see the block"
        time.sleep(0.01)


def hold_the_loop(seconds: float) -> None:
    """A block of a known length: the thing under test, not a wait."""
    time.sleep(seconds)


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "event-loop watchdog"]


async def test_a_block_is_logged_with_its_stack_counted_and_unhealthy_while_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="core.watchdog")
    async with LoopWatchdog(THRESHOLD, recorder) as watchdog:
        assert watchdog.healthy
        assert watchdog.problem() is None
        block_the_loop_until(lambda: recorder.counted)
        # Still blocked here (nothing has yielded): the health check says so.
        assert not watchdog.healthy
        assert watchdog.blocked_for() >= THRESHOLD
        problem = watchdog.problem()
        assert problem is not None
        assert problem.startswith("event loop blocked for ")
        assert problem.endswith("(threshold 0.2 s)")

        await wait_until(lambda: recorder.lengths, what="the end of the block")
        assert watchdog.healthy
        assert watchdog.problem() is None
        assert recorder.counted == 1
        assert watchdog.blocks == 1
        [seconds] = recorder.lengths
        assert THRESHOLD <= seconds < 5  # measured from the beat that was due when the block began
        assert watchdog.blocked_seconds == seconds

    # This watchdog's two lines. Another one may log meanwhile in a full run (a session fixture's, whose
    # loop does not run while this test's does), so they are picked by what they say, not counted.
    messages = [r.getMessage() for r in caplog.records if r.name == "core.watchdog"]
    [stuck] = [m for m in messages if "in block_the_loop_until" in m]  # the stack names the blocker
    assert stuck.startswith("event loop blocked for ")
    assert "its thread is at:" in stuck
    assert "time.sleep(0.01)" in stuck
    # Seen by the watchdog's thread while it lasted, so without "could not run".
    assert f"event loop ran again after a block of {seconds:.2f} s" in messages


async def test_short_pauses_are_not_blocks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="core.watchdog")
    async with LoopWatchdog(THRESHOLD) as watchdog:
        hold_the_loop(THRESHOLD / 2)  # two beats late, yet short of the threshold
        assert watchdog.blocked_for() > 0
        assert watchdog.healthy
        await wait_until(lambda: watchdog.blocked_for() == 0, what="the late beat")
    assert watchdog.blocks == 0
    assert not caplog.records


async def test_the_thread_stops_on_exit_and_a_block_is_ended_there() -> None:
    recorder = Recorder()
    before = watchdog_threads()  # the session's web app, if it runs, has its own
    async with LoopWatchdog(THRESHOLD, recorder) as watchdog:
        assert len(watchdog_threads()) == len(before) + 1
        # Exit in the same step as the block: the late beat never runs, so the exit ends the block.
        block_the_loop_until(lambda: recorder.counted)
    assert watchdog_threads() == before
    assert len(recorder.lengths) == 1
    assert watchdog.healthy  # not watching any more: nothing to report
    assert watchdog.problem() is None


async def test_a_block_the_thread_could_not_watch_is_counted_when_it_ends(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a long C call that holds the GIL looks like: the thread gets no turn until the loop's does."""
    monkeypatch.setattr(LoopWatchdog, "_watch", lambda self: None)
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="core.watchdog")
    async with LoopWatchdog(THRESHOLD, recorder) as watchdog:
        hold_the_loop(THRESHOLD * 1.5)  # unseen by the (patched) thread
        await wait_until(lambda: recorder.lengths, what="the end of the block")
        assert recorder.counted == 1
        assert watchdog.blocks == 1
    [ran_again] = [r.getMessage() for r in caplog.records if r.name == "core.watchdog"]
    assert ran_again.endswith("(the watchdog's thread could not run while it lasted)")


async def test_health_answers_503_while_the_loop_is_blocked_and_200_after() -> None:
    async with (
        LoopWatchdog(THRESHOLD) as watchdog,
        HealthServer("127.0.0.1", 0, {"/healthz": watchdog.problem}) as server,
    ):
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/healthz")
            assert (response.status_code, response.text) == (200, "ok\n")
            assert (await client.get("/readyz")).status_code == 404

        answers: list[httpx.Response] = []

        def unhealthy() -> bool:
            # A synchronous client: the loop is blocked, and the server does not need it.
            answers.append(httpx.get(f"{url}/healthz"))
            return answers[-1].status_code == 503

        block_the_loop_until(unhealthy)
        assert answers[-1].text.startswith("event loop blocked for ")

        async with httpx.AsyncClient(base_url=url) as client:

            async def healthy() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await wait_until(healthy, what="200 once the loop runs again")
    assert not [t for t in threading.enumerate() if t.name == "health endpoint"]
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


async def test_a_failing_check_answers_503() -> None:
    def broken() -> str | None:
        raise RuntimeError("no answer")

    async with HealthServer("127.0.0.1", 0, {"/healthz": broken}) as server, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/healthz")
    assert response.status_code == 503
    assert "RuntimeError('no answer')" in response.text


async def test_the_worker_exports_blocks_on_the_temporal_runtime() -> None:
    port = devstack.free_port()
    runtime = metrics_runtime(f"127.0.0.1:{port}")
    async with LoopWatchdog(THRESHOLD, EventLoopBlockMetrics(runtime)) as watchdog:
        block_the_loop_until(lambda: watchdog.blocks)

        async def exported() -> str:
            """The exposition once it holds the block's end; empty until then."""
            try:
                async with httpx.AsyncClient() as client:
                    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:  # the runtime's exporter starts in the background
                return ""
            return text if "tickler_event_loop_block_count" in text else ""

        text = await wait_until(exported, what="the block's length on /metrics")
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("tickler_"))
    assert samples['tickler_event_loop_blocks{service_name="temporal-core-sdk"}'] == "1"
    assert samples['tickler_event_loop_block_count{service_name="temporal-core-sdk"}'] == "1"
    # In seconds, on the latency buckets: the block lasted the threshold (0.2 s) or a little more.
    assert samples['tickler_event_loop_block_bucket{service_name="temporal-core-sdk",le="0.1"}'] == "0"
    assert samples['tickler_event_loop_block_bucket{service_name="temporal-core-sdk",le="1"}'] == "1"
