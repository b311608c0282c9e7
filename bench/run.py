"""`python -m bench`: start the embedded stack, run the scenarios on each system, write the report.

The compared scenarios (create, spread, bursts) run on every system in --systems, `--repeat` times,
alternating which system goes first; fan-out and idle run on Tickler alone. Systems:

  tickler            `python -m tickler worker` and `python -m tickler web`, as `make run` starts them
  tickler:KNOBS      the same web, and bench/worker.py with other worker options (a variant of
                     bench.worker.VARIANTS, or key=value,...), e.g. tickler:tuned
  baseline           BullMQ delayed jobs + a Node worker and SSE server (bench/baseline/)
  baseline:hz100     the same with Redis `hz 100` while it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import resource
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import uvloop

from bench import report as reporting
from bench import scenarios
from bench.stack import ROOT, App, Stack, terminate_on_sigterm
from bench.stats import median_of

COMPARED = ("create", "spread", "burst", "sustained")
TICKLER_ONLY = ("idle", "fanout")
SCENARIO_TIMEOUT = 1200.0


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(scenarios.SCALES), default="full")
    parser.add_argument(
        "--scenarios",
        default=",".join(COMPARED + TICKLER_ONLY),
        help="comma-separated subset of: create, spread, burst, sustained, idle, fanout",
    )
    parser.add_argument("--systems", default="tickler,baseline", help="comma-separated (see above)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of the compared scenarios")
    parser.add_argument("--history-limit", type=int, default=5000, help="workflow histories read per burst")
    parser.add_argument(
        "--temporal-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dynamic config for the Temporal dev server (a lever to try)",
    )
    parser.add_argument(
        "--fanout-streams",
        type=int,
        default=None,
        metavar="N",
        help="streams on the one web process in the fan-out scenario (default: the scale's)",
    )
    parser.add_argument(
        "--bursts",
        default=None,
        metavar="N,...",
        help="burst sizes, comma-separated (default: the scale's; full: 1000,5000,10000)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results/<time>)"
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 2 if args.scale == "small" else 1
    return args


async def start_system(stack: Stack, system: str) -> App:
    kind, _, variant = system.partition(":")
    if kind == "tickler":
        worker = [sys.executable, "-m", "bench.worker", "--knobs", variant] if variant else None
        return await asyncio.to_thread(stack.start_tickler, worker)
    if kind == "baseline":
        if variant == "hz100":
            await _redis_hz(stack, 100)
        app = await asyncio.to_thread(stack.start_baseline)
        app.system = "baseline"
        return app
    raise SystemExit(f"unknown system {system!r}")


async def _redis_hz(stack: Stack, hz: int) -> None:
    client = aioredis.from_url(stack.redis_url)
    try:
        await client.config_set("hz", hz)
    finally:
        await client.aclose()


async def stop_system(stack: Stack, app: App, system: str) -> None:
    await asyncio.to_thread(stack.stop_app, app)
    if system == "baseline:hz100":
        await _redis_hz(stack, 10)


async def guarded(
    what: str, call: Awaitable[dict[str, Any]], notes: list[str], ctx: scenarios.Context | None = None
) -> dict[str, Any] | None:
    log(f"  {what} ...")
    began = time.monotonic()
    offsets = _log_offsets(ctx.app) if ctx else {}
    sessions = await _postgres_sessions(ctx.stack) if ctx else 0
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            result = await call
    except Exception as exc:
        notes.append(f"{what} failed: {exc!r}")
        log(f"  {what} FAILED: {exc!r}")
        return None
    if ctx:
        # Each one is a backend forked, authenticated and ended: a pool too small churns them.
        result["postgres_connections_opened"] = await _postgres_sessions(ctx.stack) - sessions - 1
        if ctx.app.system.startswith("tickler"):
            result["gc_pauses"] = _gc_pauses(ctx.app, offsets)
    log(f"  {what} done in {time.monotonic() - began:.0f} s: {_headline(result)}")
    return result


# What core/gcwatch.py logs for a pause of TICKLER_GC_PAUSE_WARNING_MS or more (bench/stack.py sets 10).
GC_PAUSE = re.compile(
    r"garbage collection of generation (\d) stopped the process for ([\d.]+) ms(?: \(([\d.]+) ms of CPU)?"
)


async def _postgres_sessions(stack: Stack) -> int:
    """Sessions ever established to the database (pg_stat_database, PostgreSQL 14+), this one included."""
    pg = await asyncpg.connect(stack.superuser_dsn)
    try:
        return int(await pg.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = 'tickler'"))
    finally:
        await pg.close()


def _log_offsets(app: App) -> dict[str, int]:
    return {
        role: proc.log_path.stat().st_size
        for role, proc in app.processes.items()
        if proc.log_path and proc.log_path.exists()
    }


def _gc_pauses(app: App, offsets: dict[str, int]) -> dict[str, dict[str, float]]:
    """Each process's logged collection pauses while the scenario ran: count, longest, total (ms)."""
    found: dict[str, dict[str, float]] = {}
    for role, proc in app.processes.items():
        if not proc.log_path or not proc.log_path.exists():
            continue
        with proc.log_path.open("rb") as logged:
            logged.seek(offsets.get(role, 0))
            matches = GC_PAUSE.findall(logged.read().decode(errors="replace"))
        pauses = [(float(ms), float(cpu or ms)) for _, ms, cpu in matches]
        longest = max(pauses, default=(0.0, 0.0))
        found[role] = {
            "count": len(pauses),
            "max_ms": round(longest[0], 1),
            "max_cpu_ms": round(longest[1], 1),  # the longest one's own work; the rest waited for a core
            "total_ms": round(sum(wall for wall, _ in pauses), 1),
        }
    return found


def _headline(result: dict[str, Any]) -> str:
    parts = []
    lat = result.get("latency_ms")
    if isinstance(lat, dict) and lat.get("n"):
        parts.append(f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    for key in ("tasks_per_second", "last_arrival_s", "missing", "early", "postgres_statements_per_minute"):
        if key in result:
            parts.append(f"{key} {result[key]}")
    return "; ".join(parts)


async def warm_up(ctx: scenarios.Context, attempts: int = 3) -> None:
    """The end-to-end check before measuring; a slow first start (503s) gets two more tries."""
    for attempt in range(1, attempts + 1):
        try:
            await scenarios.warm_up(ctx)
            return
        except RuntimeError as exc:
            ctx.notes.append(f"{ctx.app.system} warm-up {attempt} failed: {str(exc)[:200]}")
            log(f"  warm-up {attempt} failed: {str(exc)[:200]}")
            if attempt == attempts:
                raise
            await asyncio.sleep(10.0)


async def run_all(stack: Stack, args: argparse.Namespace, report: dict[str, Any]) -> None:
    scale = scenarios.SCALES[args.scale]
    if args.fanout_streams:
        scale = dataclasses.replace(scale, fanout_streams=args.fanout_streams)
    if args.bursts:
        scale = dataclasses.replace(scale, bursts=tuple(int(n) for n in args.bursts.split(",")))
    chosen = set(args.scenarios.split(","))
    systems: list[str] = args.systems.split(",")
    runs: dict[str, dict[str, list[Any]]] = report["runs"]
    notes: list[str] = report["notes"]
    report["servers"] = await reporting.server_versions(stack)
    run_id = uuid.uuid4().hex[:6]
    quiet_after = 0.0

    for rep in range(args.repeat if chosen & set(COMPARED) else 0):
        order = systems if rep % 2 == 0 else systems[::-1]
        for system in order:
            log(f"run {rep + 1}/{args.repeat}: {system}")
            app = await start_system(stack, system)
            try:
                ctx = scenarios.Context(stack, app, scale, run_id, args.history_limit, notes=notes)
                await warm_up(ctx)
                found = runs.setdefault(system, {})
                if "create" in chosen:
                    await scenarios.settle(ctx)
                    result = await guarded(f"{system} create", scenarios.create(ctx), notes, ctx)
                    found.setdefault("create", []).append(result)
                if "spread" in chosen:
                    await scenarios.settle(ctx)
                    result = await guarded(f"{system} spread", scenarios.spread_latency(ctx), notes, ctx)
                    found.setdefault("spread", []).append(result)
                if "burst" in chosen:
                    for count in scale.bursts:
                        await scenarios.settle(ctx)
                        result = await guarded(
                            f"{system} burst {count}", scenarios.burst(ctx, count), notes, ctx
                        )
                        found.setdefault(f"burst{count}", []).append(result)
                if "sustained" in chosen:
                    await scenarios.settle(ctx)
                    result = await guarded(f"{system} sustained", scenarios.sustained(ctx), notes, ctx)
                    found.setdefault("sustained", []).append(result)
            finally:
                await stop_system(stack, app, system)
            if system.startswith("tickler"):
                # Its workflows stay on the Temporal server: their grace steps reach the next worker.
                quiet_after = max(quiet_after, ctx.quiet_after)
            report["medians"] = {
                s: {k: median_of(v) for k, v in by_key.items()} for s, by_key in runs.items()
            }

    only = [s for s in TICKLER_ONLY if s in chosen]
    if only:
        system = next((s for s in systems if s.startswith("tickler")), "tickler")
        log(f"{system}: {', '.join(only)}")
        app = await start_system(stack, system)
        try:
            ctx = scenarios.Context(stack, app, scale, run_id, args.history_limit, notes=notes)
            ctx.quiet_after = quiet_after
            await scenarios.settle(ctx)
            await warm_up(ctx)
            if "idle" in only:
                report["tickler_only"]["idle"] = await guarded("idle", scenarios.idle(ctx), notes, ctx)
            if "fanout" in only:
                await scenarios.settle(ctx)
                report["tickler_only"]["fanout"] = await guarded("fanout", scenarios.fanout(ctx), notes, ctx)
        finally:
            await stop_system(stack, app, system)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out or ROOT / "bench" / "results" / started
    # Thousands of streams need as many file descriptors, in the web process and the fan-out clients:
    # every process started from here inherits the limit.
    _, file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))
    data_dir = Path(tempfile.mkdtemp(prefix="tickler-bench-"))
    temporal_config = dict(item.split("=", 1) for item in args.temporal_config)
    stack = Stack(data_dir, out_dir / "logs", temporal_config)
    report: dict[str, Any] = {
        "started": started,
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "scale": args.scale,
        "scale_figures": scenarios.SCALES[args.scale].__dict__,
        "systems": args.systems.split(","),
        "repeat": args.repeat,
        "temporal_dynamic_config_extra": temporal_config,
        "file_limit": file_limit,
        "machine": reporting.machine(),
        "versions": reporting.versions(),
        "settings": {},
        "runs": {},
        "medians": {},
        "tickler_only": {},
        "notes": [],
    }
    began = time.monotonic()
    log(f"bench: {args.scale} scale, results in {out_dir}")
    code = 0
    with terminate_on_sigterm():
        try:
            log("starting PostgreSQL, Redis and the Temporal dev server")
            stack.start_servers()
            report["settings"] = stack.tickler_settings().model_dump(mode="json", exclude={"jwt_secret"})
            # uvloop, as the fan-out clients: a lighter client disturbs the measured processes less.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run_all(stack, args, report))
        except KeyboardInterrupt:
            report["interrupted"] = True
            code = 130
            log("interrupted: stopping everything")
        finally:
            with contextlib.suppress(KeyboardInterrupt):
                stack.stop_all()
                shutil.rmtree(data_dir, ignore_errors=True)
            report["seconds"] = time.monotonic() - began
            report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
            reporting.write(report, out_dir, log)
    return code
