"""Summaries of samples: percentiles (nearest rank), and medians across repeated runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values``; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float], digits: int = 1) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def median_of(runs: Sequence[Any]) -> Any:
    """The median of numbers; for dicts, the median of each key (recursively); else the first value."""
    present = [r for r in runs if r is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool):
        return all(present) if all(isinstance(r, bool) for r in present) else first
    if isinstance(first, int | float):
        numbers = [float(r) for r in present if isinstance(r, int | float) and not math.isnan(float(r))]
        if not numbers:
            return math.nan
        value = statistics.median(numbers)
        return round(value, 3) if isinstance(value, float) else value
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(r, dict) and k in r for r in present)]
        return {k: median_of([r[k] for r in present]) for k in keys}
    return first
