"""`python -m chaos`: start `tickler run --replicas 2` in a temporary data dir, run the scenarios in order
on it, write the report, and exit 1 if any "must hold" failed."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import httpx

from chaos import report
from chaos.report import Outcome
from chaos.scenarios import SCALES, SCENARIOS, Scale
from chaos.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--burst", type=int, help="reminders in the worker-kill burst")
    parser.add_argument("--web-streams", type=int, help="streams open when a web process is killed")
    parser.add_argument("--redis-streams", type=int, help="streams open while Redis is stopped")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="run only these")
    parser.add_argument("--out", type=Path, help="report directory (default chaos/results/<time>/)")
    args = parser.parse_args(argv)
    scale = dataclasses.replace(
        SCALES[args.scale],
        **{
            name: value
            for name, value in (
                ("burst", args.burst),
                ("web_streams", args.web_streams),
                ("redis_streams", args.redis_streams),
            )
            if value is not None
        },
    )
    names = args.only or list(SCENARIOS)
    # SIGTERM (a CI runner's timeout, `kill`) unwinds like Ctrl-C, so that the servers, which the
    # scenarios restart from threads and no death signal covers, are stopped by Stack.stop.
    signal.signal(signal.SIGTERM, _interrupt)
    out = args.out or report.RESULTS_DIR / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="tickler-chaos-") as root:
        stack = Stack.in_dir(Path(root))
        began = time.monotonic()
        try:
            up = stack.start()
            print(f"tickler run --replicas 2 up in {up:.1f} s", flush=True)
            outcomes = asyncio.run(run_scenarios(stack, scale, names))
        finally:
            stack.stop()
        meta = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "topology": "tickler run --replicas 2 (2 workers, 2 web, HAProxy), 127.0.0.1",
            "scale": dataclasses.asdict(scale),
            "duration_s": round(time.monotonic() - began, 1),
        }
        directory = report.write(outcomes, meta, out)
        # Copied before the data dir goes: a full run's log, not read into memory.
        if stack.log_path.exists():
            shutil.copyfile(stack.log_path, directory / "tickler-run.log")
    print(report.markdown(outcomes, meta))
    print(f"report: {directory}")
    return 0 if all(o.passed for o in outcomes) else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def run_scenarios(stack: Stack, scale: Scale, names: list[str]) -> list[Outcome]:
    outcomes = []
    for name in names:
        async with httpx.AsyncClient() as probe:
            await stack.whole(probe)
        print(f"-- {name}", flush=True)
        try:
            outcome = await SCENARIOS[name](stack, scale)
        except Exception as exc:  # the report says which scenario broke, and the others still run
            traceback.print_exc(file=sys.stderr)
            error = f"{type(exc).__name__}: {exc}"
            outcome = Outcome(name=name, fault="", reminders=0, streams=0, error=error)
        print(report.markdown([outcome], {}), flush=True)
        outcomes.append(outcome)
    return outcomes
