"""A bench-only Tickler worker with other tuning knobs, to measure levers without touching the product.

    python -m bench.worker --knobs wf_pollers=20,act_pollers=20,ratio=1,sandbox=0,cache=10000,uvloop=1

It runs the product's workflow and activities (workflows.task.TaskWorkflow, activities.tasks
.TaskActivities) with the product's clients and settings; only the temporalio Worker's options differ.
Knobs: wf_pollers, act_pollers (maximum pollers), ratio (nonsticky_to_sticky_poll_ratio), sandbox (0 =
UnsandboxedWorkflowRunner, 2 = the sandbox passing every module through), cache (max_cached_workflows),
wf_slots, act_slots, la_slots (max concurrent workflow tasks, activities, local activities), eager (0
disables eager activity execution), uvloop, freeze (0: leave the start-up heap in garbage collection,
which the product freezes), gapgc (0: CPython's full collections instead of the product's, between
deliveries), gc0 / gc1 / gc2 (gc.set_threshold; gc2 only counts with gapgc=0), pool (database
connections kept per process).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from typing import Any

from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.tasks import TaskActivities
from core.db import make_engine, make_sessionmaker
from core.gcwatch import Deliveries, collection_schedule
from core.pubsub import make_redis
from core.recurrence import RuleRunner
from core.settings import get_settings
from core.temporal import connect
from workflows.task import TaskWorkflow

log = logging.getLogger("bench.worker")

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


def worker_options(knobs: dict[str, float]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "wf_pollers" in knobs:
        options["workflow_task_poller_behavior"] = PollerBehaviorSimpleMaximum(int(knobs["wf_pollers"]))
    if "act_pollers" in knobs:
        options["activity_task_poller_behavior"] = PollerBehaviorSimpleMaximum(int(knobs["act_pollers"]))
    if "ratio" in knobs:
        options["nonsticky_to_sticky_poll_ratio"] = knobs["ratio"]
    if knobs.get("sandbox", 1) == 0:
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    elif knobs.get("sandbox", 1) == 2:
        restrictions = SandboxRestrictions.default.with_passthrough_all_modules()
        options["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)
    if "cache" in knobs:
        options["max_cached_workflows"] = int(knobs["cache"])
    for knob, option in (
        ("wf_slots", "max_concurrent_workflow_tasks"),
        ("act_slots", "max_concurrent_activities"),
        ("la_slots", "max_concurrent_local_activities"),
    ):
        if knob in knobs:
            options[option] = int(knobs[knob])
    if knobs.get("eager", 1) == 0:
        options["disable_eager_activity_execution"] = True
    return options


async def run(knobs: dict[str, float]) -> None:
    settings = get_settings()
    if "pool" in knobs:
        settings = settings.model_copy(update={"database_pool_size": int(knobs["pool"])})
    engine = make_engine(settings, application_name="tickler-worker")
    redis = make_redis(settings)
    rules = RuleRunner()
    try:
        client = await connect(settings)
        deliveries = Deliveries()
        activities = TaskActivities(
            make_sessionmaker(engine), redis, settings.redis_channel, deliveries, rules=rules
        )
        worker = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[TaskWorkflow],
            activities=[activities.save_task, activities.next_occurrence, activities.deliver_reminder],
            **worker_options(knobs),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if any(f"gc{g}" in knobs for g in range(3)):
            now = gc.get_threshold()
            gc.set_threshold(*(int(knobs.get(f"gc{g}", now[g])) for g in range(3)))
        schedule = collection_schedule(
            warn_after_seconds=settings.gc_pause_warning_ms / 1000,
            between=deliveries if knobs.get("gapgc", 1) else None,
            freeze=bool(knobs.get("freeze", 1)),
        )
        async with worker, schedule as frozen:
            log.warning(
                "bench worker polling %r with %s (%d frozen)", settings.temporal_task_queue, knobs, frozen
            )
            await stop.wait()
    finally:
        rules.close()
        await redis.aclose()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--knobs", default="", help="a variant name or key=value,... (see the docstring)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")
    knobs = parse_knobs(args.knobs)
    if knobs.get("uvloop"):
        import uvloop

        uvloop.install()
    asyncio.run(run(knobs))


if __name__ == "__main__":
    main()
