"""A bench-only Tickler worker with other tuning knobs, to measure levers without touching the product.

    python -m bench.worker --knobs wf_pollers=20,act_pollers=20,ratio=1,sandbox=0,cache=10000,uvloop=1

It is the product's worker process (tickler.worker.run_worker) with other options: only what the knobs
name differs. Knobs: wf_pollers, act_pollers (maximum pollers), ratio (nonsticky_to_sticky_poll_ratio),
sandbox (0 = UnsandboxedWorkflowRunner, 2 = the sandbox passing every module through), cache
(max_cached_workflows), wf_slots, act_slots, la_slots (max concurrent workflow tasks, activities, local
activities), eager (0 disables eager activity execution), uvloop, freeze (0: leave the start-up heap in
garbage collection, which the product freezes), gapgc (0: CPython's full collections instead of the
product's, between deliveries), gc0 / gc1 / gc2 (gc.set_threshold; gc2 only counts with gapgc=0), pool
(database connections kept per process), warm (0: the wheel's deliveries not made ready ahead).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging

from core.settings import get_settings
from tickler.worker import Sandbox, WorkerOptions, run_worker

log = logging.getLogger("bench.worker")

SANDBOX: dict[float, Sandbox] = {0: "off", 1: "on", 2: "pass-through"}

PRODUCT = "wf_pollers=20,act_pollers=5,ratio=1,sandbox=0,cache=10000,uvloop=1"

# Named sets of knobs, as the report refers to them. A knob left out takes the SDK's default, not the
# product's (tickler/worker.py): "sdk" is the worker before the product tuned it.
VARIANTS = {
    "sdk": "",
    "pollers": "wf_pollers=20,act_pollers=20,ratio=1",
    "unsandboxed": "sandbox=0",
    "cache": "cache=20000",
    "tuned": "wf_pollers=20,act_pollers=20,ratio=1,sandbox=0,cache=20000",
    "sandboxed": "wf_pollers=20,act_pollers=20,ratio=1,cache=20000",
    "passthrough": "wf_pollers=20,act_pollers=20,ratio=1,sandbox=2,cache=20000",
    # The product's defaults (tickler/worker.py, core/settings.py), and with one knob changed.
    "product": PRODUCT,
    "nofreeze": PRODUCT + ",freeze=0",
    "cpythongc": PRODUCT + ",gapgc=0",
    "cold": PRODUCT + ",warm=0",
    # A smaller cache: shorter full garbage collections in the worker, more replays.
    "cache1000": PRODUCT.replace("cache=10000", "cache=1000"),
    "cache2000": PRODUCT.replace("cache=10000", "cache=2000"),
    "pool30": PRODUCT + ",pool=30",
    "tuned-uvloop": "wf_pollers=20,act_pollers=20,ratio=1,sandbox=0,cache=20000,uvloop=1",
}


def parse_knobs(text: str) -> dict[str, float]:
    text = VARIANTS.get(text, text)
    knobs: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        knobs[key.strip()] = float(value)
    return knobs


def worker_options(knobs: dict[str, float]) -> WorkerOptions:
    def whole(knob: str) -> int | None:
        return int(knobs[knob]) if knob in knobs else None

    return WorkerOptions(
        workflow_pollers=whole("wf_pollers"),
        activity_pollers=whole("act_pollers"),
        sticky_poll_ratio=knobs.get("ratio"),
        cached_workflows=whole("cache"),
        sandbox=SANDBOX.get(knobs.get("sandbox", 1), "on"),
        workflow_task_slots=whole("wf_slots"),
        activity_slots=whole("act_slots"),
        local_activity_slots=whole("la_slots"),
        eager_activities=bool(knobs.get("eager", 1)),
        gc_between_deliveries=bool(knobs.get("gapgc", 1)),
        freeze_startup_heap=bool(knobs.get("freeze", 1)),
        warm_deliveries=bool(knobs.get("warm", 1)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--knobs", default="", help="a variant name or key=value,... (see the docstring)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    # The worker's start-up line says how much it froze.
    logging.getLogger("tickler.worker").setLevel(logging.INFO)
    knobs = parse_knobs(args.knobs)
    settings = get_settings()
    if "pool" in knobs:
        settings = settings.model_copy(update={"database_pool_size": int(knobs["pool"])})
    if any(f"gc{g}" in knobs for g in range(3)):
        now = gc.get_threshold()
        gc.set_threshold(*(int(knobs.get(f"gc{g}", now[g])) for g in range(3)))
    log.warning("bench worker with %s", knobs)
    if knobs.get("uvloop"):
        import uvloop

        uvloop.install()
    asyncio.run(run_worker(settings, worker_options(knobs)))


if __name__ == "__main__":
    main()
