"""`tickler run`: the whole development stack in one process tree, stopped cleanly on Ctrl-C or SIGTERM.

Each server whose address is not configured is started from the packages in the venv, its data kept
under TICKLER_DATA_DIR, so that a second run finds its tasks, and its timers, again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from urllib.parse import urlsplit

from core.settings import Settings
from tickler import devstack
from tickler.migrate import upgrade

log = logging.getLogger("tickler.run")


def _port(url: str, default: int) -> int:
    return urlsplit(url if "://" in url else f"//{url}").port or default


def _spawn(name: str, env: dict[str, str]) -> devstack.ManagedProcess:
    popen = subprocess.Popen([sys.executable, "-m", "tickler", name], env=env, start_new_session=True)
    return devstack.ManagedProcess(name=name, popen=popen, address="", log_path=None)


def run_stack(settings: Settings) -> int:
    configured = settings.model_fields_set
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    processes: list[devstack.ManagedProcess] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def start(name: str, starter: Callable[[], devstack.ManagedProcess], env_name: str) -> None:
        log.info("starting %s", name)
        proc = starter()
        processes.append(proc)
        env[env_name] = proc.address

    try:
        if "database_url" not in configured:
            port = _port(settings.database_url, 55432)
            start("PostgreSQL", lambda: devstack.start_postgres(data_dir, port), "TICKLER_DATABASE_URL")
        if "redis_url" not in configured:
            port = _port(settings.redis_url, 56379)
            start("Redis", lambda: devstack.start_redis(data_dir, port), "TICKLER_REDIS_URL")
        if "temporal_address" not in configured:
            port = _port(settings.temporal_address, 7233)
            start(
                "Temporal dev server",
                lambda: devstack.start_temporal(data_dir, port, settings.temporal_ui_port),
                "TICKLER_TEMPORAL_ADDRESS",
            )
        log.info("applying migrations")
        upgrade(env.get("TICKLER_DATABASE_URL", settings.database_url))
        for name in ("worker", "web"):
            processes.append(_spawn(name, env))
        web = f"http://{settings.web_host}:{settings.web_port}"
        print(
            "\nTickler is up:\n"
            f"  API        {web}/v1/tasks   (OpenAPI: {web}/openapi.json, docs: {web}/docs)\n"
            f"  Stream     {web}/v1/notifications/stream\n"
            f"  Temporal   {env.get('TICKLER_TEMPORAL_ADDRESS', settings.temporal_address)}"
            + (
                f"   Web UI: http://127.0.0.1:{settings.temporal_ui_port}"
                if "temporal_address" not in configured
                else ""
            )
            + "\n  Token      .venv/bin/tickler token --user 7 --org 42\n"
            "Ctrl-C (or SIGTERM) stops everything.\n",
            flush=True,
        )
        while not stop.wait(0.5):
            dead = [p for p in processes if p.popen.poll() is not None]
            if dead:
                log.error("%s exited with %s; stopping the stack", dead[0].name, dead[0].popen.returncode)
                return 1
        return 0
    finally:
        for proc in reversed(processes):
            log.info("stopping %s", proc.name)
            proc.stop()
