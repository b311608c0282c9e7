"""`tickler run --replicas 2` as a subprocess in a data dir of its own, on free ports, and the handles a
fault needs: the pid of each process by role, the database, tokens for the clients.

The suite starts PostgreSQL, Redis and the Temporal server itself and gives `tickler run` their addresses,
as a deployment gives its processes the addresses of servers they do not own: so a scenario can stop one
for as long as it likes and start it again on its data, while `tickler run` goes on supervising its workers
and web processes (it would stop the stack if a server it started exited)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
from pydantic import SecretStr

from core.auth import mint_token
from core.db import OrganizationSigner
from core.settings import Settings
from tickler import devstack
from tickler.devstack import run_process
from tickler.devstack.process import die_with_parent, log_tail
from tickler.devstack.run_process import LogFollower

REPLICAS = 2
SECRET = "chaos-secret-of-at-least-thirty-two-bytes"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
# Long enough for the longest scenario: a stream ends when its token expires.
TOKEN_TTL_SECONDS = 3600
# Idle streams send a heartbeat this often; the proxy's idle timeouts follow it.
HEARTBEAT_SECONDS = 2.0
# A stream whose client takes no write for this long is cut off (default 30 s): lower, so that the stalled
# reader's scenario is short, yet far above what a live client under the suite's load takes.
WRITE_TIMEOUT_SECONDS = 10.0


# The servers the suite owns, in the order they start (and the reverse of the order they stop).
SERVERS = ("postgres", "redis", "temporal")


class StackFailed(RuntimeError):
    """`tickler run` did not come up, or exited under a scenario."""


@dataclass
class Stack:
    """One running `tickler run --replicas 2`: its ports, its process, its log."""

    data_dir: Path
    port: int
    postgres_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    servers: dict[str, devstack.ManagedProcess] = field(default_factory=dict)
    settings: Settings = field(
        default_factory=lambda: Settings(jwt_secret=SecretStr(SECRET), jwt_issuer=None, jwt_audience=None)
    )
    # HAProxy's log, read as it grows, and its last word on each web process (UP until it says DOWN).
    _proxy_log: LogFollower | None = field(default=None, init=False, repr=False)
    _web_up: dict[int, bool] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def in_dir(cls, root: Path) -> Stack:
        """A stack whose data and log live under ``root``, on free 127.0.0.1 ports."""
        haproxy = devstack.haproxy_executable()
        data_dir = root / "data"
        env = run_process.clean_environ()
        env["PATH"] = os.pathsep.join([str(Path(haproxy).parent), env.get("PATH", "")])
        port = run_process.free_ports(REPLICAS + 1)
        # `tickler run` gives the workers this port and the next (their /healthz and /readyz).
        worker_health = run_process.free_ports(REPLICAS)
        postgres_port = devstack.free_port()
        env.update(
            PYTHONUNBUFFERED="1",
            TICKLER_DATA_DIR=str(data_dir),
            TICKLER_WEB_HOST="127.0.0.1",
            TICKLER_WEB_PORT=str(port),
            TICKLER_TEMPORAL_UI_PORT=str(devstack.free_port()),
            TICKLER_EMBEDDED_POSTGRES_PORT=str(postgres_port),
            TICKLER_EMBEDDED_REDIS_PORT=str(devstack.free_port()),
            TICKLER_EMBEDDED_SMTP_PORT=str(devstack.free_port()),
            TICKLER_EMBEDDED_TEMPORAL_PORT=str(devstack.free_port()),
            # The logins of migrations/roles.sql: the owner migrates; the app, maintenance take their roles.
            TICKLER_MIGRATION_DATABASE_URL=f"postgresql+asyncpg://tickler@127.0.0.1:{postgres_port}/tickler",
            TICKLER_DATABASE_URL=f"postgresql+asyncpg://tickler_login@127.0.0.1:{postgres_port}/tickler",
            TICKLER_MAINTENANCE_DATABASE_URL=(
                f"postgresql+asyncpg://tickler_maintainer@127.0.0.1:{postgres_port}/tickler"
            ),
            TICKLER_WORKER_HEALTH_PORT=str(worker_health),
            # No metrics endpoints: their default ports are fixed, and the suite reads none.
            TICKLER_WEB_METRICS_PORT="0",
            TICKLER_WORKER_METRICS_PORT="0",
            # No maintenance Schedule: its audit would be one more load on the faults' figures.
            TICKLER_MAINTENANCE_INTERVAL_SECONDS="0",
            TICKLER_JWT_SECRET=SECRET,
            # Its own, so that the suite can sign its reads of the notifications (notification_counts).
            TICKLER_ORGANIZATION_KEYS=secrets.token_urlsafe(32),
            TICKLER_LOG_LEVEL="INFO",
            TICKLER_SSE_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
            TICKLER_SSE_WRITE_TIMEOUT_SECONDS=str(WRITE_TIMEOUT_SECONDS),
            # The suite's clients create reminders by the thousand from one user's budget.
            TICKLER_RATE_LIMIT_PER_MINUTE="0",
        )
        return cls(data_dir=data_dir, port=port, postgres_port=postgres_port, env=env)

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def write_timeout(self) -> float:
        return float(self.env["TICKLER_SSE_WRITE_TIMEOUT_SECONDS"])

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.env['TICKLER_EMBEDDED_REDIS_PORT']}/0"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.env['TICKLER_EMBEDDED_TEMPORAL_PORT']}"

    @property
    def web_ports(self) -> list[int]:
        return [self.port + n for n in range(1, REPLICAS + 1)]

    @property
    def worker_health_ports(self) -> list[int]:
        base = int(self.env["TICKLER_WORKER_HEALTH_PORT"])
        return [base + n for n in range(REPLICAS)]

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "tickler-run.log"

    @property
    def signer(self) -> OrganizationSigner:
        keys = SecretStr(self.env["TICKLER_ORGANIZATION_KEYS"])
        return OrganizationSigner(self.settings.model_copy(update={"organization_keys": keys}))

    @property
    def database_dsn(self) -> str:
        # The owner's login of the embedded PostgreSQL (migrations/roles.sql), as asyncpg spells it.
        return f"postgresql://tickler@127.0.0.1:{self.postgres_port}/tickler"

    def start_server(self, name: str) -> float:
        """Start the server ``name`` of SERVERS on its port and its data (again, after a fault); the
        seconds until it answered."""
        began = time.monotonic()
        ports = {k: int(self.env[f"TICKLER_EMBEDDED_{k.upper()}_PORT"]) for k in SERVERS}
        if name == "postgres":
            # As `tickler run --replicas 2` sizes it: each process's pool and its overflow, and spares.
            pool = self.settings.database_pool_size
            connections = max(100, 2 * REPLICAS * 2 * pool + 10)
            server = devstack.start_postgres(self.data_dir, ports[name], connections)
        elif name == "redis":
            server = devstack.start_redis(self.data_dir, ports[name])
        else:
            server = devstack.start_temporal(self.data_dir, ports[name], None)
        self.servers[name] = server
        return time.monotonic() - began

    def kill_server(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the server ``name`` (SIGKILL: killed outright; its stop signal: a clean stop)
        and wait until it has exited; PostgreSQL's backends go with its postmaster."""
        server = self.servers.pop(name)
        if sig == server.stop_signal:
            server.stop(STOP_TIMEOUT)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.popen.pid, sig)
        server.popen.wait(STOP_TIMEOUT)

    def server_pid(self, name: str) -> int:
        return self.servers[name].popen.pid

    def start(self) -> float:
        """Start the servers, then `tickler run --replicas 2` on them, and wait until it says it is up;
        the seconds it took."""
        began = time.monotonic()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        for name in SERVERS:
            self.start_server(name)
        self.env["TICKLER_REDIS_URL"] = self.redis_url
        self.env["TICKLER_TEMPORAL_ADDRESS"] = self.temporal_address
        # From the end: a log that says "up" from an earlier run must not count.
        log = LogFollower(self.log_path, from_end=True)
        self.proc = run_process.launch(
            ["run", "--replicas", str(REPLICAS)],
            self.env,
            self.data_dir,
            self.log_path,
            # A suite killed outright takes the stack along (its servers too, when started from the main
            # thread; those a scenario restarted, Stack.stop stops).
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        deadline = began + START_TIMEOUT
        while not any("Tickler is up" in line for line in log.new_lines()):
            self.check_alive()
            if time.monotonic() > deadline:
                raise StackFailed(f"`tickler run` not up within {START_TIMEOUT} s{self.log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - began

    def stop(self) -> None:
        try:
            self._stop_run()
        finally:
            # Started from any thread, they need stopping: no death signal covers them all.
            for name in reversed(SERVERS):
                if name in self.servers:
                    self.servers.pop(name).stop(STOP_TIMEOUT)

    def _stop_run(self) -> None:
        if self.proc is not None:
            # After SIGKILL the kernel takes the children along (they die with their parent).
            run_process.stop(self.proc, STOP_TIMEOUT)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise StackFailed(f"`tickler run` exited with {code}{self.log_tail()}")

    def log_from_now(self) -> LogFollower:
        """`tickler run`'s log (its children's output) from here on: the lines a scenario caused, read
        without the whole log before them."""
        return LogFollower(self.log_path, from_end=True)

    def log_tail(self) -> str:
        return log_tail(self.log_path, 4000) + log_tail(self.data_dir / "haproxy.log", 2000)

    def pids(self, role: str) -> list[int]:
        """The pids of `tickler run`'s children of ``role``: "worker" or "web"."""
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.Error):
                if child.cmdline()[1:4] == ["-m", "tickler", role]:
                    found.append(child.pid)
        return sorted(found)

    def web_pid(self, port: int) -> int:
        assert self.proc is not None
        pid = run_process.web_pid(self.proc, port)
        if pid is None:
            raise StackFailed(f"no web process on port {port}")
        return pid

    def _proxy_says_up(self) -> bool:
        """Whether the proxy's last word on each web process is UP (or it never took one out)."""
        if self._proxy_log is None:
            self._proxy_log = LogFollower(self.data_dir / "haproxy.log")
        for line in self._proxy_log.new_lines():
            for n in range(1, REPLICAS + 1):
                if f"web/web-{n} is UP" in line:
                    self._web_up[n] = True
                elif f"web/web-{n} is DOWN" in line:
                    self._web_up[n] = False
        return all(self._web_up.values())

    async def whole(self, client: httpx.AsyncClient, within: float = 60.0) -> float:
        """Wait until both workers run and both web processes answer /healthz through the proxy's
        check; the seconds it took. Each scenario starts from a whole stack."""
        began = time.monotonic()
        deadline = began + within
        while True:
            self.check_alive()
            healthy = [await _healthz(client, f"http://127.0.0.1:{p}/healthz") for p in self.web_ports]
            up = self._proxy_says_up()
            if len(self.pids("worker")) == REPLICAS and all(h is not None for h in healthy) and up:
                return time.monotonic() - began
            if time.monotonic() > deadline:
                raise StackFailed(f"the stack not whole again within {within} s{self.log_tail()}")
            await asyncio.sleep(0.25)

    def headers(self, org: str, user: str) -> dict[str, str]:
        token = mint_token(self.settings, user_id=user, organization_id=org, ttl_seconds=TOKEN_TTL_SECONDS)
        return {"Authorization": f"Bearer {token}"}

    async def notification_counts(self, org: str, task_ids: list[str]) -> dict[str, int]:
        """Rows per task in ``org``'s notifications (row-level security: the org is set first)."""
        conn = await asyncpg.connect(self.database_dsn, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("SELECT tickler_enter($1, $2)", org, self.signer.sign(org))
                rows = await conn.fetch(
                    "SELECT task_id::text AS task_id, count(*) AS n FROM notifications "
                    "WHERE task_id::text = ANY($1::text[]) GROUP BY task_id",
                    task_ids,
                    timeout=30,
                )
        finally:
            await conn.close()
        return {row["task_id"]: int(row["n"]) for row in rows}


async def _healthz(client: httpx.AsyncClient, url: str) -> dict[str, object] | None:
    try:
        response = await client.get(url, timeout=2.0)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


def count_lines(lines: list[str], *texts: str) -> int:
    """How many of ``lines`` hold each of ``texts``."""
    return sum(1 for line in lines if all(text in line for text in texts))


async def stream_counts(client: httpx.AsyncClient, stack: Stack) -> dict[int, int]:
    """Open streams per web port, as each web process's /healthz counts them."""
    counts = {}
    for port in stack.web_ports:
        health = await _healthz(client, f"http://127.0.0.1:{port}/healthz")
        counts[port] = int(str(health["streams"])) if health else 0
    return counts
