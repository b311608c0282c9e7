"""The embedded servers answer at their address, keep their data across a restart and never outlive us."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from tickler.devstack import (
    ManagedProcess,
    free_port,
    start_postgres,
    start_redis,
    start_temporal,
    wait_for_port,
)

# These start servers of their own, not through the session's fixtures: mark them for the slow tier.
pytestmark = pytest.mark.stack

DEADLINE = 10.0


@pytest.fixture
def stopped_at_exit() -> Iterator[list[ManagedProcess]]:
    """Servers a test starts, stopped even when it fails half-way."""
    processes: list[ManagedProcess] = []
    yield processes
    for process in reversed(processes):
        process.stop()


def _wait_for(condition: str, check: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    # An orphan is reaped by whatever init the container has, if any: a zombie counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_postgres_serves_tickler_and_keeps_data(
    tmp_path: Path, stopped_at_exit: list[ManagedProcess]
) -> None:
    port = free_port()
    postgres = start_postgres(tmp_path, port)
    stopped_at_exit.append(postgres)
    assert postgres.address == f"postgresql+asyncpg://tickler@127.0.0.1:{port}/tickler"
    dsn = postgres.address.replace("+asyncpg", "")

    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        identity = await connection.fetchval("SELECT current_user || '@' || current_database()")
        assert identity == "tickler@tickler"
        await connection.execute("CREATE TABLE survivor (note text)")
        await connection.execute("INSERT INTO survivor VALUES ('écrit avant')")
        extensions = {row["extname"] for row in await connection.fetch("SELECT extname FROM pg_extension")}
    finally:
        await connection.close()
    assert "pg_stat_statements" in extensions

    with pytest.raises(RuntimeError, match="already runs"):
        start_postgres(tmp_path, free_port())

    postgres.stop()
    assert postgres.popen.returncode == 0
    postgres.stop()

    # Same port and data dir, as the next `tickler run` would.
    restarted = start_postgres(tmp_path, port)
    stopped_at_exit.append(restarted)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT upper(note) FROM survivor") == "ÉCRIT AVANT"
    finally:
        await connection.close()


def test_redis_serves_and_keeps_data(tmp_path: Path, stopped_at_exit: list[ManagedProcess]) -> None:
    port = free_port()
    server = start_redis(tmp_path, port)
    stopped_at_exit.append(server)
    assert server.address == f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(server.address) as client:
        client.set("tickler:test", "kept")
        assert client.get("tickler:test") == b"kept"
    server.stop()
    assert server.popen.returncode == 0

    restarted = start_redis(tmp_path, port)
    stopped_at_exit.append(restarted)
    with redis.Redis.from_url(restarted.address) as client:
        assert client.get("tickler:test") == b"kept"


async def test_temporal_registers_search_attributes_and_keeps_workflows(
    tmp_path: Path, stopped_at_exit: list[ManagedProcess]
) -> None:
    port, ui_port = free_port(), free_port()
    temporal = start_temporal(tmp_path, port, ui_port)
    stopped_at_exit.append(temporal)
    assert temporal.address == f"127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", ui_port), timeout=DEADLINE):
        pass

    client = await Client.connect(temporal.address)
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    assert response.custom_attributes["TaskStatus"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    assert response.custom_attributes["DueAt"] == IndexedValueType.INDEXED_VALUE_TYPE_DATETIME
    handle = await client.start_workflow("SomeType", id="x", task_queue="nobody")
    temporal.stop()
    assert temporal.popen.returncode == 0

    restarted = start_temporal(tmp_path, port, None)
    stopped_at_exit.append(restarted)
    client = await Client.connect(restarted.address)
    description = await client.get_workflow_handle("x", run_id=handle.result_run_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert description.workflow_type == "SomeType"


def test_wait_for_port_reports_the_log_of_a_dead_process(tmp_path: Path) -> None:
    log_path = tmp_path / "dead.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-c", "print('cannot bind: boom'); raise SystemExit(3)"], stdout=log
        )
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*cannot bind: boom"):
        wait_for_port("127.0.0.1", free_port(), DEADLINE, popen, log_path)

    with pytest.raises(RuntimeError, match="not ready before the deadline"):
        wait_for_port("127.0.0.1", free_port(), 0.2)


def test_a_taken_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="already in use"):
            start_redis(tmp_path, taken.getsockname()[1])


def test_stop_kills_a_process_that_ignores_the_signal(tmp_path: Path) -> None:
    log_path = tmp_path / "stubborn.log"
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"
    )
    with log_path.open("wb") as log:
        popen = subprocess.Popen([sys.executable, "-c", script], stdout=log, start_new_session=True)
    process = ManagedProcess("stubborn", popen, "", log_path)
    try:
        _wait_for("the signal handler", lambda: b"ready" in log_path.read_bytes())
        process.stop(timeout=0.2)
    finally:
        popen.kill()
        popen.wait()
    assert popen.returncode == -signal.SIGKILL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    # Postgres is the one started under another user (when root): the setting must survive that switch.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from tickler.devstack import free_port, start_postgres, start_redis
        data_dir = Path({str(tmp_path)!r})
        servers = [start_redis(data_dir, free_port()), start_postgres(data_dir, free_port())]
        print(*(server.popen.pid for server in servers), flush=True)
        sys.stdin.read()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids.extend(int(pid) for pid in parent.stdout.readline().split())
        assert len(pids) == 2, "the parent failed to start its servers"
        assert all(_alive(pid) for pid in pids)
        parent.kill()
        parent.wait()
        # Reaped by init once they exit, so "gone" means os.kill fails.
        _wait_for("the orphaned servers to exit", lambda: not any(_alive(pid) for pid in pids))
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert parent.stdin is not None
        assert parent.stdout is not None
        parent.stdin.close()
        parent.stdout.close()
