"""The alert rules and the dashboard as files: Prometheus accepts them, `promtool test rules` shows each
alert firing on its condition and quiet otherwise, and each alert says how bad it is, waits, and points at
its section of the runbook. (That every metric they name exists: tests/ops/test_prometheus.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.temporal import LATENCY_BUCKETS

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "tickler.json"
RUNBOOK = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Debian's promtool (`apt-get install prometheus`); skipped without it, except in CI (.ci/run installs
    it)."""
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        message = "promtool is missing: `apt-get install prometheus` (Debian's package ships it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown document."""
    found = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_prometheus_accepts_the_rules_and_the_scrape_config(promtool: str) -> None:
    rules = _run(promtool, "check", "rules", str(ALERTS))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = _run(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_fires_on_its_condition_and_stays_quiet_otherwise(promtool: str) -> None:
    result = _run(promtool, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet() -> None:
    cases = [
        case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    for name in {rule["alert"] for rule in alerting_rules()}:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"no test of {name} firing"
        assert any(not case.get("exp_alerts") for case in mine), f"no test of {name} staying quiet"


def test_every_alert_waits_says_how_bad_it_is_and_points_at_its_runbook_section() -> None:
    sections = anchors(RUNBOOK.read_text())
    rules = alerting_rules()
    assert len(rules) >= 9
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", name
        assert anchor == name.lower(), f"{name}: runbook_url should end in #{name.lower()}"
        assert anchor in sections, f"docs/operations.md has no section `### {name}`"


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["refId"], panel["title"]


def test_the_lateness_buckets_the_rules_read_exist_as_the_sdk_spells_them() -> None:
    """A rule that reads a bucket the histogram lacks (or spells ``le`` as prometheus-client would,
    "1.0") matches nothing and never fires. The SDK writes 1 as "1" (tests/ops/test_prometheus.py sees it)."""
    spelled = {f"{bucket:g}" for bucket in LATENCY_BUCKETS}
    pattern = r'tickler_reminder_lateness_bucket\{[^}]*le=\\?"([^"\\]+)'
    used = set(re.findall(pattern, ALERTS.read_text() + DASHBOARD.read_text()))
    assert used == {"1", "60"}
    assert used <= spelled
