"""The alert rules (helm/lms-changefeed/files/alerts.yaml), checked by the real promtool:
``promtool check rules`` and the unit tests in tests/promtool/alerts_test.yaml, which
fire every alert from synthetic series. Plus what promtool does not check: each alert
has a test that fires it, a severity, a runbook anchor that exists in the docs, and
queries only metrics the daemon defines (a misspelt name would never fire).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import defined_metric_names

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "helm" / "lms-changefeed" / "files" / "alerts.yaml"
ALERTS_TEST = REPO / "tests" / "promtool" / "alerts_test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
METRIC_NAME = re.compile(r"\b(changefeed_[A-Za-z0-9_:]+)")
# A stream's state, as one replica last saw it: rules must ask every replica that ran it.
STREAM_KEY = "by (namespace, job, connector, model)"


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} +(.+)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_promtool_check_rules(promtool: str) -> None:
    done = _run(promtool, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_fired_by_a_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in _rules()}
    assert names - fired == set(), "alerts no unit test fires"
    assert names - quiet == set(), "alerts with no non-firing case"


def test_alerts_carry_severity_text_and_a_runbook() -> None:
    anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in _rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        runbook = notes["runbook"]
        assert runbook.startswith("docs/operations.md#"), name
        anchor = runbook.split("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"


def test_staleness_compares_with_the_interval_not_the_watermark() -> None:
    stale = next(rule for rule in _rules() if rule["alert"] == "ChangefeedStreamStale")
    assert "changefeed_last_successful_scan_timestamp_seconds" in stale["expr"]
    assert "changefeed_stream_interval_seconds" in stale["expr"]
    for rule in _rules():
        assert "watermark" not in rule["expr"], rule["alert"]


def test_every_alert_metric_is_defined_by_the_daemon() -> None:
    used = {name for rule in _rules() for name in METRIC_NAME.findall(rule["expr"])}
    unknown = sorted(used - defined_metric_names())
    assert not unknown, f"daemon/ops/metrics.py defines no {unknown}"


def _rule(name: str) -> dict[str, Any]:
    return next(rule for rule in _rules() if rule["alert"] == name)


def test_stream_state_rules_hold_across_replicas() -> None:
    # Several replicas each keep their own copy of a stream's gauges, as of their own
    # last pass of it: an old copy alone must neither fire nor silence an alert.
    assert STREAM_KEY in _rule("ChangefeedStreamDown")["expr"]
    assert "max " + STREAM_KEY in _rule("ChangefeedStreamDown")["expr"]
    assert "min " + STREAM_KEY in _rule("ChangefeedDeletesWithheld")["expr"]
    stale = _rule("ChangefeedStreamStale")["expr"]
    assert "max by (namespace, job, connector, model) (changefeed_last_successful" in stale
    # Only the replica that runs the sync watcher reports on it.
    for name in ("ChangefeedSyncWatcherFailing", "ChangefeedSyncWatcherStale"):
        expr = _rule(name)["expr"]
        assert "unless on (namespace, job, instance) changefeed_sync_watcher_leader == 0" in expr


def test_fleet_rules_watch_leases_the_leader_and_the_replicas() -> None:
    lost = _rule("ChangefeedLeaseLost")
    assert "increase(changefeed_lease_lost_total[15m]) > 0" in lost["expr"]
    assert lost["labels"]["severity"] == "warning"
    leader = _rule("ChangefeedSyncWatcherLeaderMissing")
    assert "sum by (namespace, job) (changefeed_sync_watcher_leader) == 0" in leader["expr"]
    assert 'changefeed_stream_interval_seconds{trigger="sync"}' in leader["expr"]
    assert leader["for"] == "5m"
    replicas = _rule("ChangefeedReplicasMissing")["expr"]
    assert "changefeed_replicas_live" in replicas and "changefeed_replica_info" in replicas
