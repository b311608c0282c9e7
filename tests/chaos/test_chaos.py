"""One short case of each scenario of the chaos suite (chaos/, `make chaos`), on one `tickler run
--replicas 2`, so that a regression fails CI: each fault at a small scale, with the same "must hold"."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chaos.report import Outcome, markdown
from chaos.scenarios import (
    Scale,
    postgres_locked,
    postgres_stopped,
    redis_stopped,
    rolling_restart,
    stalled_reader,
    temporal_killed_mid_burst,
    web_killed_under_streams,
    worker_killed_in_lead_window,
)
from chaos.stack import Stack
from tickler import devstack

# Each scenario in 13 to 40 s; the file, with the stack's start, in under 3 minutes (2026-11-30: 3.0 min).
SCALE = Scale(
    burst=60,
    burst_users=10,
    web_streams=30,
    redis_streams=10,
    redis_outage=5.0,
    temporal_outage=5.0,
    kill_into_burst=-0.1,
    kill_before_burst=1.0,
    postgres_outage=6.0,
    postgres_users=10,
    lock_hold=8.0,
    lock_users=10,
    stall_streams=10,
    stall_proxy_watch=1.0,
    roll_seconds=14.0,
    roll_users=10,
    deliver_within=60.0,
    short_graces=True,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Debian's HAProxy; skipped without it, except in CI, which installs it (.ci/run)."""
    try:
        devstack.haproxy_executable()
    except devstack.ProxyMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    stack = Stack.in_dir(tmp_path_factory.mktemp("chaos"))
    try:
        stack.start()
        yield stack
    except BaseException:
        print(stack.log_tail())
        raise
    finally:
        stack.stop()


async def _whole(stack: Stack) -> None:
    async with httpx.AsyncClient() as probe:
        await stack.whole(probe)


def _held(outcome: Outcome) -> None:
    print(markdown([outcome], {}))
    assert outcome.error is None
    assert outcome.lost == 0
    failed = [what for what, held in outcome.must_hold.items() if not held]
    assert not failed, failed


async def test_a_worker_killed_in_the_lead_window_loses_and_repeats_nothing(stack: Stack) -> None:
    """Since version 3 a small burst cannot be hit in its middle (the wheel writes it at once); a kill
    just before the instant takes the armed reminders of one wheel with it (`make chaos` also kills a
    worker 1 s into a large burst)."""
    await _whole(stack)
    _held(await worker_killed_in_lead_window(stack, SCALE))


async def test_a_killed_web_process_costs_its_streams_nothing(stack: Stack) -> None:
    await _whole(stack)
    outcome = await web_killed_under_streams(stack, SCALE)
    _held(outcome)
    assert outcome.dropped_streams > 0


async def test_streams_get_what_they_missed_while_redis_was_down_once(stack: Stack) -> None:
    await _whole(stack)
    _held(await redis_stopped(stack, SCALE))


async def test_a_temporal_server_killed_mid_burst_loses_and_repeats_nothing(stack: Stack) -> None:
    await _whole(stack)
    _held(await temporal_killed_mid_burst(stack, SCALE))


async def test_postgres_stopped_delays_deliveries_and_answers_503_meanwhile(stack: Stack) -> None:
    await _whole(stack)
    _held(await postgres_stopped(stack, SCALE))


async def test_a_locked_table_delays_deliveries_and_answers_503_without_hanging(stack: Stack) -> None:
    await _whole(stack)
    _held(await postgres_locked(stack, SCALE))


async def test_a_client_that_stops_reading_is_cut_off_and_delays_no_one(stack: Stack) -> None:
    await _whole(stack)
    _held(await stalled_reader(stack, SCALE))


async def test_a_rolling_restart_loses_nothing(stack: Stack) -> None:
    await _whole(stack)
    _held(await rolling_restart(stack, SCALE))


def test_the_stack_outlived_every_fault(stack: Stack) -> None:
    stack.check_alive()
    assert Path(stack.log_path).exists()
