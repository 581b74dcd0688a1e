"""The alert rules (helm/lms-changefeed/files/alerts.yaml), checked by the real promtool:
``promtool check rules`` and the unit tests in tests/promtool/alerts_test.yaml, which
fire every alert from synthetic series. Plus what promtool does not check: each alert
has a test that fires it, a severity, and a runbook anchor that exists in the docs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "helm" / "lms-changefeed" / "files" / "alerts.yaml"
ALERTS_TEST = REPO / "tests" / "promtool" / "alerts_test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return path


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
