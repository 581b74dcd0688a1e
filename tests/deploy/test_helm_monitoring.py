"""The chart's monitoring extras, rendered by the real Helm engine (helm-python-sdk):
the PrometheusRule made from files/alerts.yaml (checked and unit-tested by promtool
as rendered) and the Grafana dashboard ConfigMap; both only when enabled.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lms-changefeed"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
ALERTS_TEST = REPO / "tests" / "promtool" / "alerts_test.yaml"
KUBE_VERSION = "1.34.0"
RELEASE = "lcf"
NAMESPACE = "lms"
ENABLED = {
    "metrics": {
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {
            "enabled": True,
            "labels": {"team": "lms"},
            "annotations": {"grafana_folder": "LMS"},
        },
    }
}


@pytest.fixture(scope="module")
def helm() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")


@pytest.fixture(scope="module")
def chart(helm: Any) -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if not path.endswith(".txt"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _dashboards(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        doc
        for doc in _of_kind(docs, "ConfigMap")
        if doc["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]


def _rule(rule_doc: dict[str, Any], alert: str) -> dict[str, Any] | None:
    for group in rule_doc["spec"]["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                found: dict[str, Any] = rule
                return found
    return None


def test_nothing_renders_unless_enabled(chart: Any) -> None:
    docs = render(chart)
    assert _of_kind(docs, "PrometheusRule") == []
    assert _dashboards(docs) == []
    assert len(_of_kind(docs, "ConfigMap")) == 1  # the daemon's config only


def test_lint_strict_is_clean_with_both_enabled(helm: Any) -> None:
    report = helm.lint(CHART, ENABLED, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_prometheus_rule_is_the_alerts_file(chart: Any) -> None:
    docs = render(chart, ENABLED)
    (rule_doc,) = _of_kind(docs, "PrometheusRule")
    assert rule_doc["apiVersion"] == "monitoring.coreos.com/v1"
    labels = rule_doc["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/instance"] == RELEASE
    # With the default 60 s check interval the file's threshold (180) stands: one copy.
    source = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert rule_doc["spec"]["groups"] == source["groups"]


def test_rendered_rules_pass_promtool(chart: Any, tmp_path: Path, promtool: str) -> None:
    (rule_doc,) = _of_kind(render(chart, ENABLED), "PrometheusRule")
    rules = tmp_path / "rendered_alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_doc["spec"]["groups"]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The same unit tests, against the rules as the Prometheus Operator gets them.
    suite = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    suite["rule_files"] = [str(rules)]
    suite_path = tmp_path / "rendered_alerts_test.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    tested = subprocess.run(
        [promtool, "test", "rules", str(suite_path)], capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_sync_watcher_staleness_follows_the_check_interval(chart: Any) -> None:
    values = {**ENABLED, "config": {"bindbee": {"sync_check_interval_seconds": 120}}}
    (rule_doc,) = _of_kind(render(chart, values), "PrometheusRule")
    stale = _rule(rule_doc, "ChangefeedSyncWatcherStale")
    assert stale is not None
    assert "changefeed_sync_watcher_last_success_timestamp_seconds > 360\n" in stale["expr"]


def test_no_watcher_staleness_rule_when_checks_only_follow_webhooks(chart: Any) -> None:
    values = {
        **ENABLED,
        "config": {
            "bindbee": {"sync_check_interval_seconds": 0},
            "models": {"enrollments": {"trigger": "interval"}},
        },
    }
    (rule_doc,) = _of_kind(render(chart, values), "PrometheusRule")
    assert _rule(rule_doc, "ChangefeedSyncWatcherStale") is None
    assert _rule(rule_doc, "ChangefeedSyncWatcherFailing") is not None


def test_dashboard_configmap_for_the_grafana_sidecar(chart: Any) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the dev extra"
    )
    docs = render(chart, ENABLED)
    (config_map,) = _dashboards(docs)
    assert len(_of_kind(docs, "ConfigMap")) == 2
    meta = config_map["metadata"]
    assert meta["name"] == f"{RELEASE}-lms-changefeed-dashboard"
    assert meta["labels"]["team"] == "lms"
    assert meta["annotations"] == {"grafana_folder": "LMS"}
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for doc in docs:
        if doc["kind"] in {"PrometheusRule", "ServiceMonitor"}:
            continue  # CRDs: no Kubernetes schema
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


@pytest.mark.parametrize(
    ("metrics", "where"),
    [
        ({"prometheusRule": {"enabled": "yes"}}, "enabled"),
        ({"prometheusRule": {"labels": {"release": 1}}}, "release"),
        ({"grafanaDashboard": {"folder": "LMS"}}, "folder"),
    ],
)
def test_schema_refuses(helm: Any, chart: Any, metrics: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.render({"metrics": metrics}, name=RELEASE, namespace=NAMESPACE)
