"""`tickler run --replicas 2`: two workers and two web processes behind HAProxy, the production topology on
one machine. A web process killed under a stream costs its client nothing: it reconnects through the
proxy, which has taken the dead one out, and replays what it missed with Last-Event-ID, once.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from tests.helpers import accepts, bearer, open_stream, wait_until
from tickler import devstack
from tickler.devstack import run_process
from tickler.devstack.process import log_tail
from tickler.devstack.proxy import Backend, check_config, render_config

SECRET = "test-secret-of-at-least-thirty-two-bytes"
REPLICAS = 2
# The first start runs initdb, starts the Temporal dev server and applies the migrations.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
NOTIFICATION_TIMEOUT = 20.0
# Health checks every second, out after three failures: a few seconds, with room for a loaded machine.
PROXY_NOTICES_WITHIN = 15.0
DUE_IN = timedelta(seconds=2)


@pytest.fixture(scope="module")
def haproxy() -> str:
    """Debian's HAProxy; skipped without it, except in CI, which installs it (.ci/run)."""
    try:
        return devstack.haproxy_executable()
    except devstack.ProxyMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))


@dataclass
class Topology:
    """One `tickler run --replicas 2`: its environment, its ports and its files."""

    data_dir: Path
    log_path: Path
    port: int
    env: dict[str, str]
    launched: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def web_ports(self) -> list[int]:
        return [self.port + n for n in range(1, REPLICAS + 1)]

    @property
    def proxy_log(self) -> str:
        path = self.data_dir / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> subprocess.Popen[bytes]:
        proc = run_process.launch(
            ["run", "--replicas", str(REPLICAS)], self.env, self.data_dir, self.log_path
        )
        self.launched.append(proc)
        return proc

    def web_pid(self, port: int) -> int:
        [proc] = self.launched
        pid = run_process.web_pid(proc, port)
        assert pid is not None, f"no web process on port {port}"
        return pid


@pytest.fixture
def topology(tmp_path: Path, haproxy: str) -> Iterator[Topology]:
    data_dir = tmp_path / "data"
    env = run_process.clean_environ()
    # `tickler run` looks for haproxy on PATH: the one found here, wherever it is.
    env["PATH"] = os.pathsep.join([str(Path(haproxy).parent), env.get("PATH", "")])
    port = run_process.free_ports(REPLICAS + 1)
    # Web process n serves its metrics on the first + 2(n - 1), worker n on the port above.
    metrics = run_process.free_ports(2 * REPLICAS)
    env.update(
        PYTHONUNBUFFERED="1",
        TICKLER_DATA_DIR=str(data_dir),
        TICKLER_WEB_PORT=str(port),
        TICKLER_WEB_METRICS_PORT=str(metrics),
        TICKLER_WORKER_METRICS_PORT=str(metrics + 1),
        TICKLER_TEMPORAL_UI_PORT=str(devstack.free_port()),
        TICKLER_EMBEDDED_POSTGRES_PORT=str(devstack.free_port()),
        TICKLER_EMBEDDED_REDIS_PORT=str(devstack.free_port()),
        TICKLER_EMBEDDED_SMTP_PORT=str(devstack.free_port()),
        TICKLER_EMBEDDED_TEMPORAL_PORT=str(devstack.free_port()),
        TICKLER_JWT_SECRET=SECRET,
        TICKLER_LOG_LEVEL="INFO",
        # Idle streams send a heartbeat soon, which marks the end of a replay.
        TICKLER_SSE_HEARTBEAT_SECONDS="0.5",
    )
    topology = Topology(data_dir=data_dir, log_path=tmp_path / "tickler-run.log", port=port, env=env)
    yield topology
    # A failed test must not leave a stack behind; the kernel takes the children along.
    for proc in topology.launched:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _exports(client: httpx.AsyncClient, port: int, name: str) -> bool:
    try:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0)
    except httpx.TransportError:
        return False
    return name in response.text


async def _healthz(client: httpx.AsyncClient, url: str) -> dict[str, object] | None:
    try:
        response = await client.get(url, timeout=2.0)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.mark.e2e
async def test_a_killed_web_process_loses_its_stream_nothing(topology: Topology) -> None:
    settings = Settings(jwt_secret=SecretStr(SECRET), jwt_issuer=None, jwt_audience=None)
    headers = bearer(settings, "7", f"org-{uuid.uuid4().hex[:12]}")
    began = time.monotonic()
    proc = topology.start()
    try:
        async with httpx.AsyncClient(base_url=topology.proxy, timeout=10.0) as client:

            async def up() -> bool:
                assert proc.poll() is None, f"`tickler run` exited with {proc.returncode}"
                return "Tickler is up" in topology.log_path.read_text(errors="replace")

            await wait_until(up, within=START_TIMEOUT, interval=0.1, what="`tickler run --replicas 2`")
            started = time.monotonic() - began
            assert await _healthz(client, "/healthz") is not None

            # Each replica its own metrics endpoint: the web processes', then the workers' one above.
            first = int(topology.env["TICKLER_WEB_METRICS_PORT"])
            for n in range(REPLICAS):
                for metrics_port, exported in (
                    (first + 2 * n, "tickler_streams_open"),
                    (first + 2 * n + 1, "tickler_reminders_delivered"),
                ):
                    probe = functools.partial(_exports, client, metrics_port, exported)
                    await wait_until(probe, what=f"{exported} on port {metrics_port}")

            async def create(title: str) -> str:
                due = datetime.now(UTC) + DUE_IN
                response = await client.post(
                    "/v1/tasks", json={"title": title, "due_at": due.isoformat()}, headers=headers
                )
                assert response.status_code == 201, response.text
                return str(response.json()["id"])

            # Through the proxy, live: the first reminder arrives on the open stream.
            async with open_stream(client, headers) as stream:
                await stream.read_past_heartbeat()
                first_task = await create("Call Ana")
                await stream.read_until(
                    lambda _: any(e.json()["task_id"] == first_task for e in stream.notifications),
                    within=NOTIFICATION_TIMEOUT,
                )
                [first_id] = stream.notification_ids

                # Which web process holds the stream: the one whose /healthz counts it.
                async def holder() -> int:
                    counts = {
                        p: await _healthz(client, f"http://127.0.0.1:{p}/healthz") for p in topology.web_ports
                    }
                    held = [p for p, health in counts.items() if health and health["streams"] == 1]
                    return held[0] if len(held) == 1 else 0

                port = await wait_until(holder, what="the web process holding the stream")
                name = f"web-{topology.web_ports.index(port) + 1}"
                killed = topology.web_pid(port)
                # `tickler run` held meanwhile: it would start the killed process again within seconds,
                # which could beat the proxy's checks to it, and this is about the checks.
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    os.kill(killed, signal.SIGKILL)
                    killed_at = time.monotonic()
                    # HAProxy ends the client's response when its server's connection dies.
                    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, StopAsyncIteration)):
                        await stream.read_until(lambda _: False, within=NOTIFICATION_TIMEOUT)

                    # The API answers through the proxy meanwhile: a request sent to the dead process is
                    # sent to the other one, and the active check takes the dead one out.
                    second_task = await create("Call Bea")
                    await wait_until(
                        lambda: f"Server web/{name} is DOWN" in topology.proxy_log,
                        within=PROXY_NOTICES_WITHIN,
                        what=f"HAProxy to take {name} out",
                    )
                    taken_out = time.monotonic() - killed_at
                finally:
                    os.kill(proc.pid, signal.SIGCONT)

            # The second reminder fires while no stream is open: the reconnection must replay it, which it
            # can only do if Last-Event-ID reaches the web process through the proxy.
            async def fired() -> bool:
                inbox = await client.get("/v1/notifications", headers=headers)
                assert inbox.status_code == 200, inbox.text
                return any(n["task_id"] == second_task for n in inbox.json()["items"])

            await wait_until(fired, within=NOTIFICATION_TIMEOUT, what="the second reminder to fire")
            async with open_stream(client, {**headers, "Last-Event-ID": str(first_id)}) as stream:
                await stream.read_until(
                    lambda _: any(e.json()["task_id"] == second_task for e in stream.notifications),
                    within=NOTIFICATION_TIMEOUT,
                )
                # Before the first heartbeat is the replay: the second reminder once, not the first.
                await stream.read_past_heartbeat()
                await stream.read_past_heartbeat()
                assert [e.json()["task_id"] for e in stream.notifications] == [second_task]
                [second_id] = stream.notification_ids
                assert second_id > first_id

            inbox = await client.get("/v1/notifications", headers=headers)
            assert sorted(n["id"] for n in inbox.json()["items"]) == [first_id, second_id]

            # `tickler run` starts the killed process again, and the proxy's check lets it back in.
            await wait_until(
                lambda: f"Server web/{name} is UP" in topology.proxy_log,
                within=PROXY_NOTICES_WITHIN,
                what=f"HAProxy to let {name} back in",
            )
            assert topology.web_pid(port) != killed
            assert re.search(rf"{name} \(pid {killed}\) exited with -9", topology.log_path.read_text())
            back_in = time.monotonic() - killed_at

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT) == 0
        for port in [topology.port, *topology.web_ports]:
            assert not accepts(port), f"port {port} still accepts after `tickler run` exited"
    except BaseException:
        print(log_tail(topology.log_path, 6000), log_tail(topology.data_dir / "haproxy.log", 3000))
        raise
    print(
        f"tickler run --replicas 2: up in {started:.1f} s; killed {name} out of the proxy in "
        f"{taken_out:.1f} s, back in {back_in:.1f} s"
    )


def test_without_haproxy_it_says_how_to_install_it(tmp_path: Path) -> None:
    env = run_process.clean_environ()
    empty = tmp_path / "bin"
    empty.mkdir()
    env.update(
        PATH=str(empty),
        TICKLER_DATA_DIR=str(tmp_path / "data"),
        TICKLER_WEB_PORT=str(run_process.free_ports(3)),
    )
    result = subprocess.run(
        [sys.executable, "-m", "tickler", "run", "--replicas", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "apt-get install haproxy" in result.stderr
    # Refused before anything started.
    assert not (tmp_path / "data").exists()


def test_the_proxy_config_is_valid_and_made_for_streams(haproxy: str, tmp_path: Path) -> None:
    config = render_config(
        "127.0.0.1", 8000, [Backend("web-1", 8001), Backend("web-2", 8002)], heartbeat_seconds=15
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check_config(haproxy, path)
    lines = {line.strip() for line in config.splitlines()}
    # Idle timeouts well above the heartbeat; events sent as they come; the health check.
    assert {"timeout client 60000ms", "timeout server 60000ms", "option http-no-delay"} <= lines
    assert {"option httpchk", "http-check expect status 200", "balance leastconn"} <= lines
    assert {"server web-1 127.0.0.1:8001", "server web-2 127.0.0.1:8002"} <= lines
    # Nothing strips or buffers: no header deleted but the client's own X-Forwarded-For, no compression.
    assert [line for line in lines if "del-header" in line] == ["http-request del-header X-Forwarded-For"]
    assert not [line for line in lines if line.startswith(("compression", "option http-buffer-request"))]
    long_heartbeat = render_config("127.0.0.1", 8000, [Backend("web-1", 8001)], heartbeat_seconds=30)
    assert "timeout server 120000ms" in long_heartbeat
