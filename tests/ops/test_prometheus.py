"""Prometheus from Debian against a running web process and worker: it scrapes both, evaluates the alert
rules, and sees a reminder fired through the REST API in the lateness histogram. Every metric the alert
rules and the dashboard name is found in a real scrape of the two processes."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.client import Client, WorkflowHandle

from core.maintenance import MAINTENANCE_WORKFLOW, MaintenanceInput
from core.payloads import Recurrence
from tests.helpers import bearer, new_org, short_grace_task_id, start_task, task_state, wait_until
from tests.ops.conftest import Processes
from tests.ops.test_rules import ALERTS, DASHBOARD, SCRAPE_CONFIG
from tickler import devstack
from tickler.devstack.process import log_tail

START_TIMEOUT = 30.0
# Scrapes and rule evaluations every second, so each condition below shows within a few.
SEEN_WITHIN = 30.0
METRIC_NAME = re.compile(r"\b(?:tickler|temporal)_[A-Za-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql``, now."""
        with httpx.Client(timeout=5.0) as client:
            response = client.get(f"{self.url}/api/v1/query", params={"query": promql})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The value of a query that yields at most one series; None if it yields none."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def get(self, path: str) -> Any:
        with httpx.Client(timeout=5.0) as client:
            response = client.get(f"{self.url}{path}")
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Debian's Prometheus (`apt-get install prometheus`); skipped without it, except in CI (.ci/run
    installs it)."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        message = "prometheus is missing: `apt-get install prometheus` (Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, processes: Processes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus on a free port and a fresh data dir, with ops/prometheus/prometheus.yml's jobs pointed at
    the two processes, scraping and evaluating ops/prometheus/alerts.yml every second."""
    home = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    targets = {
        "tickler-web": processes.web_metrics.removeprefix("http://").removesuffix("/metrics"),
        "tickler-worker": processes.worker_metrics.removeprefix("http://").removesuffix("/metrics"),
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = devstack.free_port()
    log = home / "prometheus.log"
    process = devstack.spawn(
        "prometheus",
        [
            prometheus_binary,
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=log,
        cwd=home,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with httpx.Client(timeout=1.0) as client:
                return client.get(f"{url}/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        process.wait_until("Prometheus to be ready", ready, time.monotonic() + START_TIMEOUT)
        yield Prometheus(url, log)
    finally:
        process.stop()


def _tails(processes: Processes, prometheus: Prometheus) -> str:
    return processes.tail() + log_tail(prometheus.log, 3000)


async def test_prometheus_scrapes_both_processes_and_sees_a_fired_reminder(
    prometheus: Prometheus, processes: Processes
) -> None:
    try:
        both_up = 'count(up{job=~"tickler-web|tickler-worker"} == 1)'
        await wait_until(lambda: prometheus.value(both_up) == 2, within=SEEN_WITHIN, what="both targets up")
        published = 'sum(tickler_reminder_lateness_count{job="tickler-worker",stage="published"})'
        before = prometheus.value(published) or 0.0

        headers = bearer(processes.settings, "7", new_org())

        async def fire(title: str) -> None:
            """A reminder due in a second, through the REST API."""
            due = datetime.now(UTC) + timedelta(seconds=1)
            async with httpx.AsyncClient(base_url=processes.web_url, timeout=10.0) as client:
                created = await client.post(
                    "/v1/tasks", json={"title": title, "due_at": due.isoformat()}, headers=headers
                )
            assert created.status_code == 201, created.text

        await fire("Call Ana")
        await wait_until(
            lambda: (prometheus.value(published) or 0.0) >= before + 1,
            within=SEEN_WITHIN,
            what="the fired reminder in the lateness histogram",
        )
        assert (prometheus.value('sum(tickler_reminder_lateness_count{stage="row"})') or 0) >= 1
        assert (prometheus.value("sum(tickler_reminders_delivered)") or 0) >= 1
        created_count = (
            'sum(tickler_http_requests_total{job="tickler-web",route="/v1/tasks",method="POST",status="201"})'
        )
        assert (prometheus.value(created_count) or 0) >= 1
        # The SLO's ratio is computed from the real spelling of the buckets (le="1" among them).
        assert prometheus.query('tickler_reminder_lateness_bucket{stage="published",le="1"}')

        def evaluated() -> list[dict[str, Any]]:
            rules = [rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]]
            return rules if all(rule["health"] == "ok" for rule in rules) else []

        rules = await wait_until(evaluated, within=SEEN_WITHIN, what="every rule evaluated without error")
        assert {rule["name"] for rule in rules if rule["type"] == "alerting"} >= {
            "TicklerLatenessSLOBurn",
            "TicklerTargetDown",
            "TicklerStreamHubUnsubscribed",
        }
        # The SDK's histogram appeared with the first reminder, which rate() cannot see (no sample before
        # it): the SLO's ratio has a value from the second reminder on.
        await fire("Call Bea")
        slo = "tickler:reminder_lateness_slow:ratio_rate5m"

        def share_late() -> list[float]:
            value = prometheus.value(slo)
            return [] if value is None or math.isnan(value) else [value]

        [share] = await wait_until(
            share_late, within=SEEN_WITHIN, what="the SLO's recording rule to count the second reminder"
        )
        assert 0 <= share <= 1
        # A healthy stack: none of these is even pending.
        alerts = {alert["labels"]["alertname"] for alert in prometheus.get("/api/v1/alerts")["alerts"]}
        quiet = {
            "TicklerTargetDown",
            "TicklerStreamHubUnsubscribed",
            "TicklerRemindersOverdue",
            "TicklerDeliveriesFailing",
        }
        assert not alerts & quiet, alerts
    except BaseException:
        print(_tails(processes, prometheus))
        raise


def named_metrics() -> dict[str, set[str]]:
    """Every metric name an expression of the alert rules or the dashboard uses, with where."""
    exprs: list[tuple[str, str]] = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            exprs.append((f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            exprs.append((f"tickler.json {panel['title']}", target["expr"]))
    names: dict[str, set[str]] = {}
    for where, expr in exprs:
        for name in METRIC_NAME.findall(expr):
            names.setdefault(name, set()).add(where)
    return names


def exposition(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Of a Prometheus text exposition: each sample name with the type of its family (a histogram's
    ``_bucket``, ``_count`` and ``_sum`` samples are of the family without the suffix; a counter of
    prometheus-client is typed without its ``_total``), and each sample's labels."""
    types: dict[str, str] = {}
    names: dict[str, str] = {}
    labels: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            types[family] = kind
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split(" ", 1)[0]
            family = name
            for suffix in (*HISTOGRAM_SUFFIXES, "_total"):
                if name.endswith(suffix) and name.removesuffix(suffix) in types:
                    family = name.removesuffix(suffix)
            names[name] = types.get(family, "untyped")
            labels.append(dict(re.findall(r'(\w+)="([^"]*)"', rest.rpartition("}")[0])))
    return names, labels


async def test_every_metric_the_alerts_and_the_dashboard_name_is_in_a_real_scrape(
    processes: Processes, temporal: Client
) -> None:
    """Each name is looked for as the sample a query reads (``tickler_http_requests_total``,
    ``tickler_reminder_lateness_bucket``), and a ``_bucket`` / ``_count`` / ``_sum`` must be a histogram's:
    the two exporters spell counters differently, and a name spelled for the other would match nothing."""
    settings = processes.settings
    queue = settings.temporal_task_queue
    org = new_org()
    # What makes the worker export what happens only on an event: a delivered reminder of a series whose
    # rule cannot be used (lateness, delivered, recurrences stopped), a signal it rejects, a workflow type
    # the worker does not know (workflow task failures), an audit of the organization, readiness checks.
    unusable = Recurrence.model_construct(rrule="FREQ=DAILY;INTERVAL=0", every=None, unit=None)
    # Its grace step, which ends the series, ~4 s after the instant.
    state = task_state(org=org, due_in=timedelta(seconds=1), recurrence=None).model_copy(
        update={"recurrence": unusable, "task_id": short_grace_task_id()}
    )
    task = await start_task(temporal, state, queue)
    unknown: WorkflowHandle[Any, Any] = await temporal.start_workflow(
        "NoSuchWorkflow", id=f"no-such-workflow-{uuid.uuid4()}", task_queue=queue
    )
    try:
        await task.signal("reschedule", {"due_at": "not a time"})
        audit = await temporal.execute_workflow(
            MAINTENANCE_WORKFLOW,
            MaintenanceInput(repair=False, retention_days=0, organization_id=org),
            id=f"maintenance-{uuid.uuid4()}",
            task_queue=queue,
            execution_timeout=timedelta(minutes=2),
        )
        assert audit is not None
        async with httpx.AsyncClient(timeout=5.0) as client:
            assert (await client.get(f"{processes.web_url}/readyz")).status_code == 200
            assert (await client.get(f"{processes.worker_health}/readyz")).status_code == 200

        wanted = named_metrics()
        assert len(wanted) >= 20, wanted

        def scraped() -> tuple[dict[str, str], list[dict[str, str]]]:
            names: dict[str, str] = {}
            labels: list[dict[str, str]] = []
            for url in (processes.web_metrics, processes.worker_metrics):
                more_names, more_labels = exposition(processes.scrape(url))
                names |= more_names
                labels += more_labels
            return names, labels

        async def all_there() -> tuple[dict[str, str], list[dict[str, str]]] | None:
            names, labels = scraped()
            return (names, labels) if set(wanted) <= set(names) else None

        try:
            # The series stops at the reminder's grace step, ~4 s after its instant (short_grace_task_id).
            found = await wait_until(all_there, within=SEEN_WITHIN + 5, what="every metric named")
        except AssertionError:
            names, _ = scraped()
            missing = {name: sorted(where) for name, where in wanted.items() if name not in names}
            raise AssertionError(f"named but not exported: {missing}") from None
        assert found is not None
        names, labels = found
        for name, where in wanted.items():
            if name.endswith(HISTOGRAM_SUFFIXES):
                assert names[name] == "histogram", f"{name} ({sorted(where)}) is a {names[name]}'s sample"
        # Bounded labels: no id of a task, a workflow or an organization in any label of either process.
        values = {value for sample in labels for value in sample.values()}
        assert not {v for v in values if org in v or str(state.task_id) in v}
        assert not {v for v in values if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", v)}
    except BaseException:
        print(processes.tail())
        raise
    finally:
        await unknown.terminate("test over")
        await task.terminate("test over")
