"""`tickler run` as a child of a harness (the chaos suite, the end-to-end tests): its environment, its
consecutive ports, its start into a log file, its stop, its web children, and that log read as it grows."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from tickler.devstack.process import free_port


def clean_environ() -> dict[str, str]:
    """This process's environment without its TICKLER_* variables: each would count as configured, or
    move a port."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TICKLER_")}


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (`tickler run --replicas N` counts up from its web
    port and its workers' health port)."""
    for _ in range(100):
        first = free_port()
        if first + count <= 65536 and all(_bindable(p) for p in range(first + 1, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def launch(
    args: list[str],
    env: Mapping[str, str],
    data_dir: Path,
    log_path: Path,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m tickler <args>` in a session of its own, its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tickler", *args],
            env=dict(env),
            # Not the project root: a developer's .env there must not leak in.
            cwd=data_dir.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s (its children die with it); safe to call twice."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def web_pid(proc: subprocess.Popen[bytes], port: int) -> int | None:
    """The pid of ``proc``'s web child on ``port``, found by the environment `tickler run` gave it."""
    for child in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "web" in child.cmdline() and child.environ().get("TICKLER_WEB_PORT") == str(port):
                return child.pid
    return None


class LogFollower:
    """A growing log read a whole line at a time from where the last read stopped: polling it costs what
    was written since, not the whole file again."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]
