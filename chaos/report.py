"""A scenario's figures, and the report of a run: report.md and report.json under chaos/results/<time>/."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Outcome:
    """What one scenario produced. Lateness: receipt on the stream minus due time."""

    name: str
    fault: str
    reminders: int
    streams: int
    delivered: int = 0
    lost: int = 0
    missing_rows: int = 0
    duplicate_rows: int = 0
    duplicate_events_per_connection: int = 0
    duplicate_events_per_client: int = 0
    max_lateness_s: float = 0.0
    p99_lateness_s: float = 0.0
    time_to_recover_s: float | None = None
    dropped_streams: int = 0
    reconnect_spread_s: float | None = None
    notes: list[str] = field(default_factory=list)
    must_hold: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(self.must_hold.values())


def write(outcomes: list[Outcome], meta: dict[str, object], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    scenarios = [asdict(o) | {"passed": o.passed} for o in outcomes]
    (directory / "report.json").write_text(json.dumps({"meta": meta, "scenarios": scenarios}, indent=2))
    (directory / "report.md").write_text(markdown(outcomes, meta))
    return directory


def markdown(outcomes: list[Outcome], meta: dict[str, object]) -> str:
    lines = ["# Chaos run", "", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    lines += [
        "| scenario | reminders | streams | delivered | lost | dup rows | dup events (conn / client) "
        "| max lateness | p99 lateness | time to recover | dropped streams | reconnect spread | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.name} | {o.reminders} | {o.streams} | {o.delivered} | {o.lost} | {o.duplicate_rows} "
            f"| {o.duplicate_events_per_connection} / {o.duplicate_events_per_client} "
            f"| {o.max_lateness_s:.2f} s | {o.p99_lateness_s:.2f} s | {_seconds(o.time_to_recover_s)} "
            f"| {o.dropped_streams} | {_seconds(o.reconnect_spread_s)} | {'yes' if o.passed else 'NO'} |"
        )
    for o in outcomes:
        lines += ["", f"## {o.name}", "", o.fault, ""]
        for what, held in o.must_hold.items():
            lines.append(f"- must hold, {what}: {'held' if held else 'FAILED'}")
        lines += [f"- {note}" for note in o.notes]
        if o.error:
            lines.append(f"- error: {o.error}")
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
