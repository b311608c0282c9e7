"""The stack the benchmark runs on: the embedded servers of `make run`, and the app processes on top.

PostgreSQL, Redis and the Temporal dev server come from tickler.devstack, in a temporary data dir on free
ports; the migrations are applied with tickler.migrate. Tickler's worker and web, and the baseline's Node
web and worker, run as subprocesses, one system at a time, and every process started here is stopped on
the way out (Ctrl-C included; the kernel also signals the children should this process die).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from core.db import organization_keys
from core.settings import Settings
from tickler import devstack
from tickler.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
BASELINE_DIR = Path(__file__).resolve().parent / "baseline"
# Long enough for every scenario: a stream ends when its token expires.
TOKEN_TTL_SECONDS = 6 * 3600
JWT_SECRET = "bench-secret-" + "x" * 32


@dataclass
class App:
    """One running system: its web address and its processes by role."""

    system: str
    url: str
    processes: dict[str, devstack.ManagedProcess]

    def pids(self) -> dict[str, int]:
        return {role: proc.popen.pid for role, proc in self.processes.items()}


@dataclass
class Stack:
    data_dir: Path
    log_dir: Path
    temporal_config: dict[str, str] = field(default_factory=dict)
    servers: dict[str, devstack.ManagedProcess] = field(default_factory=dict)
    apps: list[App] = field(default_factory=list)
    database_url: str = ""
    redis_url: str = ""
    temporal_address: str = ""

    # -- servers -----------------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.servers["postgres"] = devstack.start_postgres(self.data_dir, devstack.free_port())
        self.database_url = self.servers["postgres"].address
        self.servers["redis"] = devstack.start_redis(self.data_dir, devstack.free_port())
        self.redis_url = self.servers["redis"].address
        # A lever to try: extra dynamic config on the dev server.
        self.servers["temporal"] = devstack.start_temporal(
            self.data_dir, devstack.free_port(), None, self.temporal_config
        )
        self.temporal_address = self.servers["temporal"].address
        upgrade(self.database_url, organization_keys=organization_keys(self.tickler_settings()))

    @property
    def superuser_dsn(self) -> str:
        """asyncpg DSN of the embedded server's superuser (trust auth), for pg_stat_statements."""
        port = self.database_url.rsplit(":", 1)[1].split("/", 1)[0]
        return f"postgresql://postgres@127.0.0.1:{port}/tickler"

    @property
    def plain_database_url(self) -> str:
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://")

    # -- Tickler -----------------------------------------------------------------------------------------

    def tickler_env(self, web_port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKLER_")}
        env.update(
            {
                "TICKLER_ENV": "dev",
                "TICKLER_LOG_LEVEL": "WARNING",
                # Collections long enough to show in a p99 are logged; the report counts them.
                "TICKLER_GC_PAUSE_WARNING_MS": "10",
                "TICKLER_DATA_DIR": str(self.data_dir),
                # The logins of migrations/roles.sql: the app's, and the maintenance one's.
                "TICKLER_DATABASE_URL": devstack.login_url(self.database_url, "tickler_login"),
                "TICKLER_MAINTENANCE_DATABASE_URL": devstack.login_url(
                    self.database_url, "tickler_maintainer"
                ),
                "TICKLER_REDIS_URL": self.redis_url,
                "TICKLER_TEMPORAL_ADDRESS": self.temporal_address,
                "TICKLER_WEB_HOST": "127.0.0.1",
                "TICKLER_WEB_PORT": str(web_port),
                "TICKLER_JWT_SECRET": JWT_SECRET,
                # Not the default ports, which a `make run` on the same machine holds.
                "TICKLER_WEB_METRICS_PORT": "0",
                "TICKLER_WORKER_METRICS_PORT": "0",
                # No maintenance Schedule: an audit in the middle of a measurement would be measured too.
                "TICKLER_MAINTENANCE_INTERVAL_SECONDS": "0",
                "PYTHONPATH": str(ROOT),
            }
        )
        return env

    def tickler_settings(self) -> Settings:
        """The settings the Tickler processes run with (an .env file is ignored: the env wins)."""
        env = self.tickler_env(0)
        fields: dict[str, Any] = {
            k.removeprefix("TICKLER_").lower(): v for k, v in env.items() if k.startswith("TICKLER_")
        }
        fields.pop("web_port")
        # Keyword arguments win over the environment and .env, as the variables do in the children.
        return Settings(**fields)

    def start_tickler(self, worker: list[str] | None = None) -> App:
        """Tickler's worker (``python -m tickler worker``, or a bench variant) and web process."""
        port = devstack.free_port()
        env = self.tickler_env(port)
        worker_argv = worker or [sys.executable, "-m", "tickler", "worker"]
        processes = {
            "worker": self._spawn("tickler-worker", worker_argv, env),
            "web": self._spawn("tickler-web", [sys.executable, "-m", "tickler", "web"], env),
        }
        app = App("tickler", f"http://127.0.0.1:{port}", processes)
        self.apps.append(app)
        self._wait_healthy(app)
        return app

    # -- the baseline ------------------------------------------------------------------------------------

    def start_baseline(self, concurrency: int = 50) -> App:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the baseline needs node (20 or later) on PATH")
        if not (BASELINE_DIR / "node_modules" / "bullmq").is_dir():
            subprocess.run(
                ["npm", "ci", "--no-fund", "--no-audit", "--loglevel=error"],
                cwd=BASELINE_DIR,
                check=True,
                timeout=600,
            )
        port = devstack.free_port()
        env = dict(os.environ)
        env.update(
            {
                "BENCH_DATABASE_URL": self.plain_database_url,
                "BENCH_REDIS_URL": self.redis_url,
                "BENCH_PORT": str(port),
                "BENCH_JWT_SECRET": JWT_SECRET,
                "BENCH_ORGANIZATION_KEY": organization_keys(self.tickler_settings())[0].decode(),
                "BENCH_CHANNEL": "bench:baseline:notifications",
                "BENCH_QUEUE": f"bench-reminders-{uuid.uuid4().hex[:8]}",
                "BENCH_CONCURRENCY": str(concurrency),
            }
        )
        script = str(BASELINE_DIR / "server.js")
        processes = {
            "worker": self._spawn("baseline-worker", [node, script, "worker"], env),
            "web": self._spawn("baseline-web", [node, script, "web"], env),
        }
        app = App("baseline", f"http://127.0.0.1:{port}", processes)
        self.apps.append(app)
        self._wait_healthy(app)
        return app

    # -- processes ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> devstack.ManagedProcess:
        # They inherit the file limit that bench.run raised.
        return devstack.spawn(name, argv, log_path=self.log_dir / f"{name}.log", cwd=ROOT, env=env)

    def _wait_healthy(self, app: App, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for proc in app.processes.values():
                if proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}"
                    )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{app.url}/healthz", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app.system} web did not answer /healthz within {timeout} s")
            time.sleep(0.1)

    def stop_app(self, app: App) -> None:
        # Web first: it ends its streams; then the worker.
        for role in ("web", "worker"):
            app.processes[role].stop(timeout=15.0)
        with contextlib.suppress(ValueError):
            self.apps.remove(app)

    def stop_all(self) -> None:
        for app in list(self.apps):
            self.stop_app(app)
        for name in ("temporal", "redis", "postgres"):
            proc = self.servers.pop(name, None)
            if proc is not None:
                proc.stop()

    # -- measuring ---------------------------------------------------------------------------------------

    def server_pids(self) -> dict[str, int]:
        return {name: proc.popen.pid for name, proc in self.servers.items()}


def process_tree_cpu(pid: int, *, tree: bool) -> float:
    """CPU seconds (user + system) of a process, and of its children when ``tree``; 0 if it is gone.

    A tree counts its children that have exited too (the root's reaped-children times): without them a
    PostgreSQL backend that ended during a scenario took its whole lifetime's CPU out of the sum, and
    PostgreSQL's share came out negative."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)] if tree else [root]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    if tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            reaped = root.cpu_times()
            total += reaped.children_user + reaped.children_system
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


@dataclass
class CpuMeter:
    """CPU seconds per process between start() and stop(); PostgreSQL counts its backends too."""

    pids: dict[str, int]
    trees: frozenset[str] = frozenset({"postgres"})
    started: dict[str, float] = field(default_factory=dict)
    wall_started: float = 0.0

    def start(self) -> None:
        self.wall_started = time.monotonic()
        self.started = {n: process_tree_cpu(p, tree=n in self.trees) for n, p in self.pids.items()}

    def stop(self) -> dict[str, dict[str, float]]:
        wall = max(1e-9, time.monotonic() - self.wall_started)
        out: dict[str, dict[str, float]] = {}
        for name, pid in self.pids.items():
            used = process_tree_cpu(pid, tree=name in self.trees) - self.started.get(name, 0.0)
            out[name] = {"cpu_seconds": round(used, 3), "cpu_percent": round(100 * used / wall, 2)}
        out["_wall_seconds"] = {"cpu_seconds": round(wall, 3), "cpu_percent": 0.0}
        return out


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP behave as Ctrl-C does: the finally blocks stop every process started here."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # A shell starts background jobs with SIGINT ignored: make Ctrl-C (or kill -INT) work there too.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
