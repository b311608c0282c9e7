"""A `tickler web` and a `tickler worker` as operators run them, on the suite's servers, each serving its
metrics on a port of its own: what Prometheus scrapes in these tests."""

from __future__ import annotations

import functools
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from tickler import devstack
from tickler.devstack.process import log_tail

START_TIMEOUT = 60.0


@dataclass
class Processes:
    """The two processes: their settings (task queue and channel of their own) and their addresses."""

    settings: Settings
    web_url: str
    web_metrics: str
    worker_metrics: str
    worker_health: str
    logs: list[Path]

    def scrape(self, url: str) -> str:
        with httpx.Client(timeout=5.0) as client:
            response = client.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain"), response.headers
        return response.text

    def tail(self) -> str:
        return "".join(log_tail(path, 3000) for path in self.logs)


def _variables(settings: Settings) -> dict[str, str]:
    """The TICKLER_* variables of every field set explicitly in ``settings``."""
    variables = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = str(value).lower()
        variables[f"TICKLER_{name.upper()}"] = str(value)
    return variables


def _answers(url: str) -> bool:
    try:
        with httpx.Client(timeout=1.0) as client:
            return client.get(url).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="session")
def processes(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    logs = tmp_path_factory.mktemp("processes")
    own = settings.model_copy(
        update={
            "temporal_task_queue": f"metrics-{uuid.uuid4().hex[:8]}",
            "redis_channel": f"metrics-{uuid.uuid4().hex[:8]}",
            "web_port": devstack.free_port(),
            "web_metrics_port": devstack.free_port(),
            "worker_metrics_port": devstack.free_port(),
            "worker_health_port": devstack.free_port(),
            # No maintenance Schedule in the suite's Temporal: the tests start a run themselves.
            "maintenance_interval_seconds": 0,
        }
    )
    # Nothing of the caller's TICKLER_* variables, and no .env: every setting the suite's fixtures chose
    # (its servers, its keys, the ports above) and nothing else.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TICKLER_")}
    env.update(_variables(own))
    started = [
        devstack.spawn(
            f"tickler-{name}",
            [sys.executable, "-m", "tickler", name],
            log_path=logs / f"{name}.log",
            cwd=logs,
            env=env,
        )
        for name in ("worker", "web")
    ]
    found = Processes(
        settings=own,
        web_url=f"http://127.0.0.1:{own.web_port}",
        web_metrics=f"http://127.0.0.1:{own.web_metrics_port}/metrics",
        worker_metrics=f"http://127.0.0.1:{own.worker_metrics_port}/metrics",
        worker_health=f"http://127.0.0.1:{own.worker_health_port}",
        logs=[logs / "worker.log", logs / "web.log"],
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        for process, url in zip(started, (found.worker_health, found.web_url), strict=True):
            ready = f"{url}/readyz"
            process.wait_until(f"{ready} to answer 200", functools.partial(_answers, ready), deadline)
        yield found
    finally:
        for process in reversed(started):
            process.stop()
