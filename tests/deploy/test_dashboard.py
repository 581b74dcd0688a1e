"""The Grafana dashboard (helm/lms-changefeed/files/dashboard.json): well-formed, its
PromQL parses (promtool), and every metric it queries is one the daemon defines
(daemon/ops/metrics.py, as registered) and a real daemon exports, checked against the
/metrics of ``lms-changefeed run`` after a real pass.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Daemon, base_config, write_config
from tests.helpers import defined_metric_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "lms-changefeed" / "files" / "dashboard.json"
METRIC_NAME = re.compile(r"\b(changefeed_[A-Za-z0-9_:]+)")
# What an operator needs in the first hour: each must have a panel.
REQUIRED = {
    "changefeed_stream_up",
    "changefeed_scans_total",
    "changefeed_events_published_total",
    "changefeed_api_requests_total",
    "changefeed_api_rate_limited_total",
    "changefeed_api_rate_limit_remaining",
    "changefeed_last_successful_scan_timestamp_seconds",
    "changefeed_stream_interval_seconds",
    "changefeed_connector_status",
    "changefeed_items_rejected_total",
    "changefeed_webhook_deliveries_total",
    "changefeed_sync_watcher_up",
    "changefeed_deletes_withheld",
    # Several replicas on PostgreSQL: who runs what.
    "changefeed_replica_info",
    "changefeed_replicas_live",
    "changefeed_leases_held",
    "changefeed_lease_lost_total",
    "changefeed_sync_watcher_leader",
}
# Grafana's variables, replaced by plain values for promtool.
GRAFANA_VARS = {"$__rate_interval": "5m", "$connector": ".*", "$model": ".*"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def _metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "lms-changefeed"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert METRIC_NAME.search(target["expr"]), target["expr"]


def test_dashboard_covers_the_operators_metrics() -> None:
    missing = REQUIRED - _metric_names(_expressions(_dashboard()))
    assert not missing, f"no panel queries {sorted(missing)}"


def test_every_dashboard_metric_is_defined_by_the_daemon() -> None:
    # Fast and without a daemon; the live test below checks the same against /metrics.
    unknown = sorted(_metric_names(_expressions(_dashboard())) - defined_metric_names())
    assert not unknown, f"daemon/ops/metrics.py defines no {unknown}"


def test_dashboard_promql_parses(tmp_path: Path, promtool: str) -> None:
    rules = []
    for i, expr in enumerate(_expressions(_dashboard())):
        if expr.startswith("label_values("):
            # Grafana's own function: check the selector inside it.
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _exported(exposition: str) -> tuple[set[str], set[str]]:
    """Names with samples, and names of families declared by ``# TYPE`` (with or
    without samples), histogram families expanded to their series names."""
    sampled: set[str] = set()
    declared: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            declared.add(name)
            if kind == "histogram":
                declared.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            sampled.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return sampled, declared


@pytest.mark.sim(enrollments=150)
def test_every_dashboard_metric_is_exported_by_a_running_daemon(
    sim: Any, broker: Any, tmp_path: Path
) -> None:
    config = base_config(sim, broker.bootstrap, tmp_path)
    # A sync-triggered model too, so the sync watcher's series are real ones.
    config["models"]["users"] = {"trigger": "sync"}
    daemon = Daemon(write_config(tmp_path, config))
    try:
        daemon.wait_for("scan_finished", timeout=90, model="enrollments")
        exposition = daemon.http("/metrics").text
    finally:
        daemon.stop()
    sampled, declared = _exported(exposition)
    used = _metric_names(_expressions(_dashboard()))
    unknown = sorted(used - sampled - declared)
    assert not unknown, f"the dashboard queries metrics the daemon does not export: {unknown}"
    # The pass really ran: the per-stream series the main panels draw have samples.
    for name in (
        "changefeed_stream_up",
        "changefeed_scans_total",
        "changefeed_events_published_total",
        "changefeed_api_requests_total",
        "changefeed_last_successful_scan_timestamp_seconds",
        "changefeed_stream_interval_seconds",
        "changefeed_scan_duration_seconds_bucket",
    ):
        assert name in sampled, f"{name} has no samples after a pass"
    # Rare-event families are declared even before their first event.
    for name in (
        "changefeed_api_rate_limited_total",
        "changefeed_items_rejected_total",
        "changefeed_webhook_deliveries_total",
        "changefeed_delete_guard_trips_total",
    ):
        assert name in declared, f"{name} is not declared in /metrics"
