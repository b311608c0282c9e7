"""Many SSE streams from several client processes, since one Python process holds only so many.

Each client process (multiprocessing, spawn) opens its share of the streams, reports how many opened,
then keeps them until told to report its arrivals or to stop. It dies with the bench process.

A client stamps an arrival when it reads it, so its own garbage collections would count as the
server's latency: once its streams are open it holds still (bench.clients.hold_still) and reports the
pauses it took, so that a tail can be told from one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.clients import Arrival, Collector, Stream, hold_still

OPEN_CONCURRENCY = 64
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Have the kernel end this process when the bench process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _child(
    url: str, org: str, users: list[str], conn: multiprocessing.connection.Connection, parent: int
) -> None:
    # The file limit is the bench process's, which bench.run raised.
    _die_with(parent)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_hold(url, org, users, conn))


async def _hold(url: str, org: str, users: list[str], conn: multiprocessing.connection.Connection) -> None:
    collector = Collector()
    stop = asyncio.Event()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    streams = [Stream(url, user, org) for user in users]
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()

    async def open_one(stream: Stream) -> None:
        async with gate:
            tasks.append(asyncio.create_task(stream.run(collector, stop)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.ready.wait(), 60.0)

    await asyncio.gather(*(open_one(s) for s in streams))
    ready = sum(1 for s in streams if s.ready.is_set())
    hold_still(collector)
    conn.send(("opened", ready, time.monotonic() - started, collector.errors[:10]))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "report":
            arrivals = [a for found in collector.arrivals.values() for a in found]
            open_now = sum(1 for s in streams if s.ready.is_set())
            errors = collector.errors[:10]
            conn.send(("arrivals", arrivals, collector.reconnects, open_now, errors, collector.pauses))
        elif command == "stop":
            break
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("stopped",))


@dataclass
class Fleet:
    """``len(users)`` streams spread over ``processes`` client processes."""

    url: str
    org: str
    users: Sequence[str]
    processes: int
    children: list[tuple[Any, multiprocessing.connection.Connection]] = field(default_factory=list)

    def start(self, timeout: float) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        shares = [list(self.users[n :: self.processes]) for n in range(self.processes)]
        for share in shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_child, args=(self.url, self.org, share, child, os.getpid()), daemon=True
            )
            proc.start()
            self.children.append((proc, parent))
        opened, errors, seconds = 0, [], 0.0
        deadline = time.monotonic() + timeout
        for proc, conn in self.children:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"fan-out client {proc.pid} did not open its streams in time")
            _, ready, took, errs = conn.recv()
            opened += ready
            seconds = max(seconds, took)
            errors += errs
        return {"opened": opened, "seconds": round(seconds, 1), "errors": errors[:10]}

    def report(self, timeout: float = 60.0) -> FleetReport:
        report = FleetReport()
        for _, conn in self.children:
            conn.send("report")
        for proc, conn in self.children:
            if not conn.poll(timeout):
                raise RuntimeError(f"fan-out client {proc.pid} did not report")
            _, found, again, still_open, errs, pauses = conn.recv()
            report.arrivals += found
            report.reconnects += again
            report.still_open += still_open
            report.errors += errs
            report.client_pauses += pauses
        return report

    def stop(self) -> None:
        for _, conn in self.children:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send("stop")
        for proc, conn in self.children:
            with contextlib.suppress(OSError, EOFError):
                if conn.poll(15.0):
                    conn.recv()
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
        self.children.clear()


@dataclass
class FleetReport:
    arrivals: list[Arrival] = field(default_factory=list)
    reconnects: int = 0
    still_open: int = 0
    errors: list[str] = field(default_factory=list)
    # Every client's collections of PAUSE_REPORTED_MS or more: (wall clock at the end, ms).
    client_pauses: list[tuple[float, float]] = field(default_factory=list)


def collector_of(arrivals: Sequence[Arrival]) -> Collector:
    collector = Collector()
    for arrival in arrivals:
        collector.add(arrival)
    return collector
