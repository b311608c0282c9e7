"""A stuck event loop is seen: where it is stuck, how often, and by a health check that does not need it.

Everything in a worker or web process waits on one event loop; code that blocks it (a rule that never
ends, a synchronous call, a long collection) holds up every reminder in hand and every stream, and from
inside the loop nothing can notice. Two pieces, each outside the loop:

- ``LoopWatchdog``: the loop beats a cheap callback every ``beat_seconds``; a thread of its own wakes as
  often and checks the beat is not late. Past ``threshold_seconds`` it logs the loop thread's stack
  (where the block is) and counts the block; when the loop beats again it logs how long it lasted.
- ``HealthServer``: ``GET /healthz`` (or any path given a check) answered from threads of its own, so a
  blocked loop shows as 503 instead of as a probe that times out for an unknown reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseServer
from types import TracebackType
from typing import Protocol, Self

log = logging.getLogger(__name__)


class BlockRecorder(Protocol):
    """Where a process counts its blocks (the worker: its Temporal runtime's meter). Called from the
    watchdog's thread or the loop's."""

    def blocked(self) -> None:
        """A block has passed the threshold: counted while it lasts, so that one that never ends counts."""

    def ended(self, seconds: float) -> None:
        """The loop ran again after a block of ``seconds``."""


class LoopWatchdog:
    """Watches the running loop it is started in; an async context manager (or ``start`` / ``stop``
    on the loop).

    ``blocks`` counts the blocks seen since the start, ``blocked_seconds`` adds up those that ended.
    A block is measured by how late the heartbeat runs, so it reads up to one beat short.
    """

    def __init__(
        self,
        threshold_seconds: float,
        record: BlockRecorder | None = None,
        *,
        beat_seconds: float | None = None,
    ) -> None:
        if threshold_seconds <= 0:
            raise ValueError("threshold_seconds must be positive")
        self.threshold_seconds = threshold_seconds
        # A few beats per threshold: a block is seen at most about a beat after it passes the threshold.
        self.beat_seconds = beat_seconds or min(0.25, threshold_seconds / 4)
        self.record = record
        self.blocks = 0
        self.blocked_seconds = 0.0
        self._due = math.inf  # when the next beat should run (monotonic); infinite while not watching
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._beat_handle: asyncio.TimerHandle | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The due time of the beat whose block has been counted, so that each block counts once whether
        # the thread sees it first or the late beat does. The lock makes that look-then-count one step.
        self._counted_due = math.nan
        self._lock = threading.Lock()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching the running loop; call it from that loop."""
        if self._thread is not None:
            raise RuntimeError("this watchdog is already watching a loop")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping.clear()
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="event-loop watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the beat and the thread; call it from the watched loop."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        # The loop runs (this is it) but may not have reached the late beat yet: end its block here.
        late = time.monotonic() - self._due
        if late >= self.threshold_seconds:
            self._block_ended(self._due, late)
        self._due = math.inf

    def blocked_for(self) -> float:
        """Seconds the loop has been late for its heartbeat: about how long it has been blocked, 0 while
        it runs."""
        return max(0.0, time.monotonic() - self._due)

    @property
    def healthy(self) -> bool:
        return self.blocked_for() < self.threshold_seconds

    def problem(self) -> str | None:
        """Why the process is unhealthy, or None: the check of ``HealthServer``."""
        blocked = self.blocked_for()
        if blocked < self.threshold_seconds:
            return None
        return f"event loop blocked for {blocked:.1f} s (threshold {self.threshold_seconds:g} s)"

    def _beat(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        late = now - self._due
        if late >= self.threshold_seconds:
            self._block_ended(self._due, late)
        self._due = now + self.beat_seconds
        self._beat_handle = self._loop.call_later(self.beat_seconds, self._beat)

    def _watch(self) -> None:
        while not self._stopping.wait(self.beat_seconds):
            with self._lock:
                due = self._due  # the loop's thread replaces it on every beat
                late = time.monotonic() - due
                if late < self.threshold_seconds or due == self._counted_due:
                    continue
                self._counted_due = due
                self.blocks += 1
            log.warning(
                "event loop blocked for %.2f s (threshold %g s); its thread is at:\n%s",
                late,
                self.threshold_seconds,
                self._loop_stack(),
            )
            if self.record is not None:
                self.record.blocked()

    def _block_ended(self, due: float, seconds: float) -> None:
        with self._lock:
            seen = due == self._counted_due
            self._counted_due = due
            if not seen:
                self.blocks += 1
        self.blocked_seconds += seconds
        # Unseen: the loop's thread held the GIL throughout (a long C call), so no stack could be taken.
        log.warning(
            "event loop ran again after a block of %.2f s%s",
            seconds,
            "" if seen else " (the watchdog's thread could not run while it lasted)",
        )
        if self.record is not None:
            if not seen:
                self.record.blocked()
            self.record.ended(seconds)

    def _loop_stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "(the loop's thread has ended)"
        return "".join(traceback.format_stack(frame)).rstrip()


Check = Callable[[], str | None]
"""A health check: the reason the process is unhealthy, or None when it is healthy."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checks: Mapping[str, Check]) -> None:
        super().__init__(address, _Handler)
        self.checks = checks


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        check = self.server.checks.get(self.path.partition("?")[0])
        if check is None:
            self._answer(404, "not found")
            return
        try:
            problem = check()
        except Exception as error:
            log.exception("health check of %s failed", self.path)
            problem = f"the check failed: {error!r}"
        if problem is None:
            self._answer(200, "ok")
        else:
            self._answer(503, problem)

    def _answer(self, status: int, text: str) -> None:
        body = f"{text}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Not a line per probe: a probe every few seconds would drown the log."""


class HealthServer:
    """Answers GET on each path of ``checks`` with 200 ``ok``, or 503 and the check's reason, from
    threads of its own; an async context manager (or ``start`` / ``close``).

    ``port`` 0 picks a free one; ``port`` tells which after the start.
    """

    POLL_SECONDS = 0.1  # how soon ``close`` is noticed; an idle wake-up is a select() call

    def __init__(self, host: str, port: int, checks: Mapping[str, Check]) -> None:
        self.host = host
        self.port = port
        self.checks = dict(checks)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Off the loop: closing waits for the server's thread to notice, up to POLL_SECONDS.
        await asyncio.to_thread(self.close)

    def start(self) -> None:
        self._server = _Server((self.host, self.port), self.checks)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.POLL_SECONDS},
            name="health endpoint",
            daemon=True,
        )
        self._thread.start()
        log.info("health checks at http://%s:%d (%s)", self.host, self.port, ", ".join(self.checks))

    def close(self) -> None:
        if self._server is not None and self._thread is not None:
            stop_serving(self._server, self._thread)
            self._server = self._thread = None


def stop_serving(server: BaseServer, thread: threading.Thread) -> None:
    """Stop a server that ``thread`` runs with ``serve_forever`` (the health endpoint's, the web's
    metrics endpoint's) and wait for the thread to end."""
    server.shutdown()
    server.server_close()
    thread.join()
