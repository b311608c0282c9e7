"""`tickler run`: the whole development stack in one process tree, stopped cleanly on Ctrl-C or SIGTERM.

Each server whose address is not configured is started from the packages in the venv, its data kept
under TICKLER_DATA_DIR, so that a second run finds its tasks, and its timers, again. With `--replicas N`
it is the production topology on one machine (docs/scaling.md): N workers, N web processes on the N ports
after TICKLER_WEB_PORT, and HAProxy on TICKLER_WEB_PORT in front of them; a worker or web process that
exits is started again, as an orchestrator would.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from aiosmtpd.controller import Controller

from core.codec import DEV_KEY_FILE, EncryptionConfigError, configured_keys
from core.db import OrganizationKeyError, organization_keys
from core.settings import Settings
from tickler import devstack
from tickler.migrate import upgrade

log = logging.getLogger("tickler.run")

# A replica that exits sooner than this after its start is started again after a growing back-off.
_QUICK_EXIT = 10.0
_MAX_BACKOFF = 30.0
# PostgreSQL connections beside the pools (migrations, psql, the bench's reads).
_SPARE_CONNECTIONS = 10


class _Failed(Exception):
    """A process of the stack did not start, or exited: the stack stops, `tickler run` exits 1."""


def run_stack(settings: Settings, replicas: int = 1) -> int:
    """Start, supervise and stop the stack; the exit code: 0 once told to stop, 1 if a process failed.

    ``replicas`` of 2 or more: that many workers and web processes, behind HAProxy."""
    stop = _stop_on_signals()
    if replicas > 1:
        try:
            devstack.haproxy_executable()
        except devstack.ProxyMissing as missing:
            log.error("%s", missing)
            return 1
    web_address = (_probe_host(settings.web_host), settings.web_port)
    if _answers(*web_address):
        # Else the start-up would take that server for ours, only to find out after starting everything.
        log.error("%s:%d is in use: stop what listens there, or set TICKLER_WEB_PORT", *web_address)
        return 1
    if replicas > 1 and (busy := _replica_ports_in_use(settings.web_port, replicas)):
        log.error("%s; `--replicas %d` needs the %d ports after TICKLER_WEB_PORT", busy, replicas, replicas)
        return 1
    metrics = _metrics_ports(settings, replicas)
    if unusable := _metrics_ports_unusable(settings, replicas, metrics):
        log.error(
            "%s: set TICKLER_WEB_METRICS_PORT and TICKLER_WORKER_METRICS_PORT elsewhere (0: off)", unusable
        )
        return 1
    env = dict(os.environ)
    processes: list[devstack.ManagedProcess] = []
    mail: Controller | None = None
    try:
        _keep_encryption_key(settings, env)
        mail = _start_mail(settings, env)
        _start_servers(settings, env, processes, stop, replicas)
        if stop.is_set():
            return 0
        _migrate(settings, env)
        if stop.is_set():
            return 0
        if replicas > 1:
            return _run_replicas(settings, env, processes, replicas, stop, metrics)
        _start_worker_and_web(env, processes)
        if not _wait_for_web(web_address, processes[-1], stop):
            return 0
        _announce(settings, env, metrics=metrics)
        _supervise(processes, stop)
        return 0
    except _Failed as failed:
        log.error("%s; stopping the stack", failed)
        return 1
    finally:
        _stop(processes)
        if mail is not None:
            mail.stop()


def _start_mail(settings: Settings, env: dict[str, str]) -> Controller | None:
    """Unless TICKLER_SMTP_HOST is set, a local SMTP server for the email escalation, in this process:
    each message it takes becomes an .eml file in TICKLER_DATA_DIR/mail."""
    if "smtp_host" in settings.model_fields_set:
        return None
    port = settings.embedded_smtp_port
    if _answers("127.0.0.1", port):
        raise _Failed(
            f"127.0.0.1:{port} is in use: stop what listens there, or set TICKLER_EMBEDDED_SMTP_PORT"
        )
    mail = devstack.start_mail(_mail_dir(settings), port)
    env.update(
        {"TICKLER_SMTP_HOST": "127.0.0.1", "TICKLER_SMTP_PORT": str(port), "TICKLER_SMTP_SECURITY": "none"}
    )
    return mail


def _mail_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "mail"


def _stop_on_signals() -> threading.Event:
    """An event that SIGINT, SIGTERM and SIGHUP set."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only a flag: an exception raised from here could land anywhere, in a fork handler holding the
        # logging lock say, and hang the process. Start-up checks the flag between its steps.
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return stop


def _start_servers(
    settings: Settings,
    env: dict[str, str],
    processes: list[devstack.ManagedProcess],
    stop: threading.Event,
    replicas: int = 1,
) -> None:
    """Start each server whose address is not configured, and give its address to the children's env."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Each worker and web process may open its pool and as many again (docs/scaling.md): from three
    # replicas on, that passes PostgreSQL's default of 100 connections.
    max_connections = None
    if replicas > 1:
        max_connections = max(100, 2 * replicas * 2 * settings.database_pool_size + _SPARE_CONNECTIONS)
    servers: list[tuple[str, str, str, Callable[[], devstack.ManagedProcess]]] = [
        (
            "PostgreSQL",
            "database_url",
            "TICKLER_DATABASE_URL",
            lambda: devstack.start_postgres(data_dir, settings.embedded_postgres_port, max_connections),
        ),
        (
            "Redis",
            "redis_url",
            "TICKLER_REDIS_URL",
            lambda: devstack.start_redis(data_dir, settings.embedded_redis_port),
        ),
        (
            "Temporal dev server",
            "temporal_address",
            "TICKLER_TEMPORAL_ADDRESS",
            lambda: devstack.start_temporal(
                data_dir,
                settings.embedded_temporal_port,
                settings.temporal_ui_port,
                ui_codec_endpoint=_codec_endpoint(settings),
            ),
        ),
    ]
    for name, setting, env_name, start in servers:
        if setting in settings.model_fields_set or stop.is_set():
            continue
        log.info("starting %s", name)
        proc = start()
        processes.append(proc)
        env[env_name] = proc.address
        if setting == "database_url":
            # The owner migrates; the web and the worker log in as the app, maintenance as its own login.
            env["TICKLER_MIGRATION_DATABASE_URL"] = proc.address
            env["TICKLER_DATABASE_URL"] = devstack.login_url(proc.address, "tickler_login")
            env["TICKLER_MAINTENANCE_DATABASE_URL"] = devstack.login_url(proc.address, "tickler_maintainer")


def _codec_endpoint(settings: Settings) -> str:
    """Where the dev server's UI finds the codec endpoint: the web app (or the proxy before the web apps)."""
    return f"http://{_probe_host(settings.web_host)}:{settings.web_port}/codec"


def _keep_encryption_key(settings: Settings, env: dict[str, str]) -> None:
    """Check the payload encryption keys before anything starts; without configured ones, keep this
    stack's key in TICKLER_DATA_DIR (made on the first start, 0600) and name it to the worker and web."""
    try:
        keys = configured_keys(settings)
    except EncryptionConfigError as exc:
        raise _Failed(str(exc)) from None
    if keys is not None and settings.encryption_keys is None and settings.encryption_key_file is None:
        env["TICKLER_ENCRYPTION_KEY_FILE"] = str((settings.data_dir / DEV_KEY_FILE).resolve())


def _migrate(settings: Settings, env: dict[str, str]) -> None:
    try:
        keys = organization_keys(settings)
    except OrganizationKeyError as exc:
        raise _Failed(str(exc)) from None
    log.info("applying migrations")
    upgrade(env.get("TICKLER_MIGRATION_DATABASE_URL", settings.migration_url()), organization_keys=keys)


def _start_worker_and_web(env: dict[str, str], processes: list[devstack.ManagedProcess]) -> None:
    for name in ("worker", "web"):
        # As the servers do, they die with `tickler run`, even killed outright, rather than hold the web
        # port and poll servers that are gone.
        processes.append(devstack.spawn(name, [sys.executable, "-m", "tickler", name], env=env))


@dataclass
class _Replica:
    """A worker or web process of `--replicas`: started again when it exits, sooner if it had run a while."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: devstack.ManagedProcess
    started: float
    quick_exits: int = 0
    restart_at: float | None = None

    @classmethod
    def spawn(cls, kind: str, number: int, env: dict[str, str]) -> _Replica:
        name, argv = f"{kind}-{number}", [sys.executable, "-m", "tickler", kind]
        # As the servers do, they die with `tickler run`, even killed outright.
        process = devstack.spawn(name, argv, env=env)
        log.info("%s started (pid %d)", name, process.popen.pid)
        return cls(name, argv, env, process, time.monotonic())

    def tend(self, processes: list[devstack.ManagedProcess]) -> None:
        """Start the process again if it has exited and its back-off is over; it keeps its place in
        ``processes``, so the stack still stops in order."""
        code = self.process.popen.poll()
        if code is None:
            return
        now = time.monotonic()
        if self.restart_at is None:
            # One that dies as it starts (a setting it refuses, a server it cannot reach) is started less
            # and less often, up to every 30 s; one killed after a while at once.
            self.quick_exits = self.quick_exits + 1 if now - self.started < _QUICK_EXIT else 0
            delay = min(_MAX_BACKOFF, 2.0 ** (self.quick_exits - 1)) if self.quick_exits else 0.0
            self.restart_at = now + delay
            log.warning(
                "%s (pid %d) exited with %s; starting it again in %.0f s",
                self.name,
                self.process.popen.pid,
                code,
                delay,
            )
        if now < self.restart_at:
            return
        old = self.process
        self.process = devstack.spawn(self.name, self.argv, env=self.env)
        processes[processes.index(old)] = self.process
        self.started, self.restart_at = now, None
        log.info("%s started again (pid %d)", self.name, self.process.popen.pid)


MetricsPorts = dict[str, tuple[str, int]]
"""The metrics endpoint of each worker and web process, by process name: (its variable, its port)."""


def _metrics_ports(settings: Settings, replicas: int) -> MetricsPorts:
    """Where each process serves its metrics: the web process and the worker on their settings, or with
    ``--replicas N`` replica n of each on its setting + 2(n - 1), so that with the defaults the web
    processes take 9464, 9466, ... and the workers 9465, 9467, ...; nothing for a setting of 0."""
    ports: MetricsPorts = {}
    for kind, variable, base in (
        ("web", "TICKLER_WEB_METRICS_PORT", settings.web_metrics_port),
        ("worker", "TICKLER_WORKER_METRICS_PORT", settings.worker_metrics_port),
    ):
        if not base:
            continue
        if replicas == 1:
            ports[kind] = (variable, base)
        else:
            ports.update({f"{kind}-{n}": (variable, base + 2 * (n - 1)) for n in range(1, replicas + 1)})
    return ports


def _metrics_ports_unusable(settings: Settings, replicas: int, metrics: MetricsPorts) -> str:
    """Why the metrics ports cannot be used ("" if they can): two processes on one, or one in use."""
    api = {settings.web_port, *(settings.web_port + n for n in range(1, replicas + 1) if replicas > 1)}
    seen: dict[int, str] = {}
    for name, (variable, port) in metrics.items():
        if port > 65535:
            return f"{variable} leaves no port for {name}"
        if port in api or port in seen:
            return f"{name} would serve its metrics on port {port}, taken by {seen.get(port, 'the API')}"
        seen[port] = name
        if _answers(_probe_host(settings.metrics_host), port):
            return f"{settings.metrics_host}:{port} ({variable}, {name}) is in use"
    return ""


def _replica_ports_in_use(web_port: int, replicas: int) -> str:
    """Why the web processes' ports cannot be used ("" if they can)."""
    if web_port + replicas > 65535:
        return f"TICKLER_WEB_PORT {web_port} leaves no room for {replicas} more ports"
    for port in range(web_port + 1, web_port + replicas + 1):
        if _answers("127.0.0.1", port):
            return f"127.0.0.1:{port} is in use"
    return ""


def _run_replicas(
    settings: Settings,
    env: dict[str, str],
    processes: list[devstack.ManagedProcess],
    replicas: int,
    stop: threading.Event,
    metrics: MetricsPorts,
) -> int:
    """N workers, N web processes on the ports after TICKLER_WEB_PORT, then HAProxy on it; supervise."""
    started: list[_Replica] = []
    for number in range(1, replicas + 1):
        worker_env = dict(env)
        # Each worker its own health port, when it is on (0: off for all).
        if settings.worker_health_port:
            worker_env["TICKLER_WORKER_HEALTH_PORT"] = str(settings.worker_health_port + number - 1)
        # And its own metrics port (_metrics_ports).
        if f"worker-{number}" in metrics:
            variable, port = metrics[f"worker-{number}"]
            worker_env[variable] = str(port)
        started.append(_Replica.spawn("worker", number, worker_env))
        processes.append(started[-1].process)
    backends: list[devstack.Backend] = []
    for number in range(1, replicas + 1):
        # Behind the proxy only: the loopback, whatever TICKLER_WEB_HOST says (the proxy binds that).
        backends.append(devstack.Backend(f"web-{number}", settings.web_port + number))
        web_env = dict(env, TICKLER_WEB_HOST="127.0.0.1", TICKLER_WEB_PORT=str(backends[-1].port))
        if f"web-{number}" in metrics:
            variable, port = metrics[f"web-{number}"]
            web_env[variable] = str(port)
        started.append(_Replica.spawn("web", number, web_env))
        processes.append(started[-1].process)
    webs = [replica for replica in started if replica.name.startswith("web-")]
    for web, backend in zip(webs, backends, strict=True):
        if not _wait_for_web(("127.0.0.1", backend.port), web.process, stop):
            return 0
    log.info("starting HAProxy")
    data_dir = settings.data_dir.resolve()
    processes.append(
        devstack.start_proxy(
            data_dir,
            settings.web_host,
            settings.web_port,
            backends,
            heartbeat_seconds=settings.sse_heartbeat_seconds,
        )
    )
    web_list = ", ".join(f"{b.host}:{b.port}" for b in backends)
    _announce(
        settings,
        env,
        f"  Replicas   {replicas} workers; {replicas} web processes ({web_list}) behind HAProxy\n"
        f"             ({data_dir / 'haproxy.cfg'}, log: {data_dir / 'haproxy.log'})\n",
        metrics,
    )
    _supervise(processes, stop, started)
    return 0


def _wait_for_web(address: tuple[str, int], web: devstack.ManagedProcess, stop: threading.Event) -> bool:
    """True once the API answers, for whoever waits on this output; False if told to stop first."""
    deadline = time.monotonic() + devstack.STARTUP_TIMEOUT
    while not _answers(*address):
        if stop.wait(0.05):
            return False
        if web.popen.poll() is not None or time.monotonic() > deadline:
            raise _Failed("the web server did not start")
    return True


def _announce(
    settings: Settings, env: dict[str, str], topology: str = "", metrics: MetricsPorts | None = None
) -> None:
    web = f"http://{settings.web_host}:{settings.web_port}"
    temporal_ui = ""
    if "temporal_address" not in settings.model_fields_set:
        temporal_ui = f"   Web UI: http://127.0.0.1:{settings.temporal_ui_port}"
    host = _probe_host(settings.metrics_host)
    endpoints = "".join(
        f"  {'Metrics' if n == 0 else '':<11}{name:<9}http://{host}:{port}/metrics\n"
        for n, (name, (_, port)) in enumerate((metrics or {}).items())
    )
    mail = ""
    if env.get("TICKLER_SMTP_HOST") == "127.0.0.1" and "smtp_host" not in settings.model_fields_set:
        # Email escalation (PUT /v1/me/settings) sends here; nothing leaves the machine.
        port = env["TICKLER_SMTP_PORT"]
        mail = f"  Mail       smtp://127.0.0.1:{port}, each message an .eml in {_mail_dir(settings)}\n"
    codec = ""
    if settings.payload_encryption:
        # The Web UI decodes payloads for a browser with an operator's session (docs/deployment.md).
        codec = f"  Codec      {web}/codec   (payloads encrypted; sign in as an operator to read them)\n"
    print(
        "\nTickler is up:\n"
        f"  API        {web}/v1/tasks   (OpenAPI: {web}/openapi.json, docs: {web}/docs)\n"
        f"  Stream     {web}/v1/notifications/stream\n"
        f"  Temporal   {env.get('TICKLER_TEMPORAL_ADDRESS', settings.temporal_address)}{temporal_ui}\n"
        f"{codec}"
        f"{endpoints}"
        f"{topology}"
        f"{mail}"
        "  Token      .venv/bin/tickler token --user 7 --org 42\n"
        "  Operators  TICKLER_ENV=dev .venv/bin/tickler audit   (repair, purge, stats: same prefix)\n"
        "Ctrl-C (or SIGTERM) stops everything.\n",
        flush=True,
    )


def _supervise(
    processes: list[devstack.ManagedProcess], stop: threading.Event, replicas: Sequence[_Replica] = ()
) -> None:
    """Until told to stop; a replica that exits is started again, any other process that exits (a server,
    the proxy, the one worker or web process without `--replicas`) stops the whole stack."""
    restarted = {replica.name for replica in replicas}
    while not stop.wait(0.5):
        for replica in replicas:
            replica.tend(processes)
        dead = [p for p in processes if p.name not in restarted and p.popen.poll() is not None]
        if dead:
            raise _Failed(f"{dead[0].name} exited with {dead[0].popen.returncode}")


def _stop(processes: list[devstack.ManagedProcess]) -> None:
    """In the reverse order of their start: the web and the worker before the servers they use."""
    for proc in reversed(processes):
        log.info("stopping %s", proc.name)
        proc.stop()


def _probe_host(host: str) -> str:
    """Where to check a server that binds ``host``: a wildcard address is reached on the loopback."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
