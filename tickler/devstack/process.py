"""Child processes of the development stack: started in a session of their own, dying with their parent,
waited for until they answer, stopped in order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

STARTUP_TIMEOUT = 60.0

_POLL_INTERVAL = 0.05
_LOG_TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1


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

    def wait_until(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        """Return once ``check`` is true; raise RuntimeError, with the log's tail, if the process exits
        first or the deadline (time.monotonic) passes. An exception of ``check`` counts as not yet."""
        _poll_until(what, check, deadline, self.popen, self.log_path)


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
        with socket.create_connection((host, port), timeout=max(0.1, min(1.0, remaining(deadline)))):
            return True

    _poll_until(f"{host}:{port}", accepts, deadline, proc, log_path)


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
) -> ManagedProcess:
    """Start a child in a session of its own that dies with this process; its output goes to
    ``log_path`` (else to ours)."""
    log = None if log_path is None else open_log(log_path, argv)
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
            preexec_fn=die_with_parent(stop_signal),
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


# What the server recipes of this package share; not part of its public face.


def start_server(
    name: str,
    argv: list[str],
    port: int,
    address: str,
    log_path: Path,
    stop_signal: signal.Signals,
    ready: Callable[[ManagedProcess, float], None] | None = None,
    *,
    user: pwd.struct_passwd | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Spawn a server; return it once 127.0.0.1:``port`` accepts connections and ``ready(process,
    deadline)`` has returned, or stop it and raise RuntimeError."""
    process = spawn(name, argv, address, log_path, stop_signal, user=user, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        wait_for_port("127.0.0.1", port, remaining(deadline), process.popen, log_path)
        if ready is not None:
            ready(process, deadline)
    except BaseException:
        process.stop()
        raise
    return process


def open_log(log_path: Path, argv: list[str]) -> BinaryIO:
    """``log_path`` opened for appending, with a line that says when and what starts writing to it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
    log.flush()
    return log


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def log_tail(log_path: Path | None, size: int = _LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a log, to end an error message with; empty if there is none."""
    if log_path is None:
        return ""
    try:
        with log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - size))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return f"\n--- end of {log_path} ---\n{text}"


def ensure_port_free(port: int) -> None:
    # Without this check the readiness probe could talk to whatever server already holds the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: connections in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port 127.0.0.1:{port} is already in use") from exc


def _poll_until(
    what: str,
    check: Callable[[], bool],
    deadline: float,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path | None,
) -> None:
    last_error = ""
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}{log_tail(log_path)}")
        try:
            if check():
                return
        except Exception as exc:
            last_error = f"; last error: {exc!r}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what}: not ready before the deadline{last_error}{log_tail(log_path)}")
        time.sleep(_POLL_INTERVAL)
