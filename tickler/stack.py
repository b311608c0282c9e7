"""`tickler run`: the whole development stack in one process tree, stopped cleanly on Ctrl-C or SIGTERM.

Each server whose address is not configured is started from the packages in the venv, its data kept
under TICKLER_DATA_DIR, so that a second run finds its tasks, and its timers, again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from core.settings import Settings
from tickler import devstack
from tickler.migrate import upgrade

log = logging.getLogger("tickler.run")


def _probe_host(host: str) -> str:
    """Where to check a server that binds ``host``: a wildcard address is reached on the loopback."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def run_stack(settings: Settings) -> int:
    configured = settings.model_fields_set
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    processes: list[devstack.ManagedProcess] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only a flag: an exception raised from here could land anywhere, in a fork handler holding the
        # logging lock say, and hang the process. Start-up checks the flag between its steps.
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    web_address = (_probe_host(settings.web_host), settings.web_port)
    if _answers(*web_address):
        # Else the start-up would take that server for ours, only to find out after starting everything.
        log.error("%s:%d is in use: stop what listens there, or set TICKLER_WEB_PORT", *web_address)
        return 1

    def start(name: str, starter: Callable[[], devstack.ManagedProcess], env_name: str) -> None:
        if stop.is_set():
            return
        log.info("starting %s", name)
        proc = starter()
        processes.append(proc)
        env[env_name] = proc.address

    try:
        if "database_url" not in configured:
            start(
                "PostgreSQL",
                lambda: devstack.start_postgres(data_dir, settings.embedded_postgres_port),
                "TICKLER_DATABASE_URL",
            )
        if "redis_url" not in configured:
            start(
                "Redis",
                lambda: devstack.start_redis(data_dir, settings.embedded_redis_port),
                "TICKLER_REDIS_URL",
            )
        if "temporal_address" not in configured:
            start(
                "Temporal dev server",
                lambda: devstack.start_temporal(
                    data_dir, settings.embedded_temporal_port, settings.temporal_ui_port
                ),
                "TICKLER_TEMPORAL_ADDRESS",
            )
        if stop.is_set():
            return 0
        log.info("applying migrations")
        upgrade(env.get("TICKLER_DATABASE_URL", settings.database_url))
        if stop.is_set():
            return 0
        for name in ("worker", "web"):
            # As the servers do, they die with `tickler run`, even killed outright, rather than hold the
            # web port and poll servers that are gone.
            processes.append(devstack.spawn(name, [sys.executable, "-m", "tickler", name], env=env))
        # "Tickler is up" only once the API answers, for whoever waits on this output.
        web_process = processes[-1].popen
        deadline = time.monotonic() + devstack.STARTUP_TIMEOUT
        while not _answers(*web_address):
            if stop.wait(0.05):
                return 0
            if web_process.poll() is not None or time.monotonic() > deadline:
                log.error("the web server did not start; stopping the stack")
                return 1
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
