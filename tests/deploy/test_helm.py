"""The Helm chart, rendered by the real Helm engine (helm-python-sdk, no helm binary),
validated against the Kubernetes schemas, and its config loaded by the daemon's own
loader; plus config/example.yaml, which must document and load every setting.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from daemon.errors import ConfigError
from daemon.settings import LMS_MODELS, ConnectorSettings, ModelSettings, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lms-changefeed"
THREE_CONNECTORS = CHART / "ci" / "three-connectors-values.yaml"
WEBHOOK_DISCOVERY = CHART / "ci" / "webhook-discovery-values.yaml"
POSTGRES_REPLICAS = CHART / "ci" / "postgres-replicas-values.yaml"
EXAMPLE_CONFIG = REPO / "config" / "example.yaml"
KUBE_VERSION = "1.34.0"
RELEASE = "lcf"
NAMESPACE = "lms"
CONFIG_PATH = "/etc/lms-changefeed/config.yaml"
# What the downward API gives CHANGEFEED_SCHEDULER__REPLICA_ID (metadata.name) in a test.
POD_NAME = "lcf-lms-changefeed-7d9f8c6b5-x2x7q"
PG_URL = "postgresql://changefeed:not-a-real-password@pg.lms.svc:5432/changefeed"

# Settings fields that must never appear in the chart's config block.
SECRET_FIELDS = {
    ("bindbee", "api_key"),
    ("kafka", "sasl_plain_password"),
    ("connectors", "token"),
    ("webhook", "secret"),
}
# Set by connector discovery, not by people: neither the chart nor the example offer it.
INTERNAL_FIELDS = {("connectors", "bindbee_id")}
# Settings the chart sets itself rather than taking from values: state.path (the
# volume), state.url (from state.urlSecret) and the replica id (the pod's name).
CHART_OWNED_FIELDS = {("state", "path"), ("state", "url"), ("scheduler", "replica_id")}


@pytest.fixture(scope="module")
def helm() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk is in the dev extra")


@pytest.fixture(scope="module")
def chart(helm: Any) -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def three_values(helm: Any) -> dict[str, Any]:
    values: dict[str, Any] = helm.values_from_yaml(THREE_CONNECTORS.read_text(encoding="utf-8"))
    return values


@pytest.fixture(scope="module")
def hook_values(helm: Any) -> dict[str, Any]:
    values: dict[str, Any] = helm.values_from_yaml(WEBHOOK_DISCOVERY.read_text(encoding="utf-8"))
    return values


@pytest.fixture(scope="module")
def pg_values(helm: Any) -> dict[str, Any]:
    values: dict[str, Any] = helm.values_from_yaml(POSTGRES_REPLICAS.read_text(encoding="utf-8"))
    return values


class Rendered:
    """The manifests of one render, by kind (and name where several could exist)."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files
        self.notes = next((text for path, text in files.items() if path.endswith("NOTES.txt")), "")
        self.docs: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if path.endswith(".txt"):
                continue
            self.docs.extend(doc for doc in yaml.safe_load_all(text) if doc)

    def kinds(self) -> list[str]:
        return sorted(doc["kind"] for doc in self.docs)

    def one(self, kind: str) -> dict[str, Any]:
        found = [doc for doc in self.docs if doc["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = [doc for doc in self.docs if doc["kind"] == kind]
        return found[0] if found else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def service(self, component: str) -> dict[str, Any]:
        """The Service of one component: ``ops`` (/metrics, probes) or ``webhook``."""
        found = [
            doc
            for doc in self.all("Service")
            if doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {component} Service, got {len(found)}"
        return found[0]

    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self) -> dict[str, Any]:
        containers = self.pod()["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    def config_text(self) -> str:
        text: str = self.one("ConfigMap")["data"]["config.yaml"]
        return text

    def pod_env(
        self,
        existing_secret: dict[str, str] | None = None,
        other_secrets: dict[str, dict[str, str]] | None = None,
    ) -> dict[str, str]:
        """The container's env as Kubernetes would resolve it: from the credentials Secret
        (the chart's, or ``existing_secret``), from ``other_secrets`` by Secret name (the
        PostgreSQL URL's), and the pod's own name from the downward API."""
        secret = self.maybe("Secret")
        if existing_secret is not None:
            assert secret is None, "the chart made a Secret although existingSecret is set"
            data = existing_secret
        else:
            assert secret is not None
            data = secret.get("stringData") or {}
        env: dict[str, str] = {}
        for entry in self.container()["env"]:
            if "value" in entry:
                env[entry["name"]] = entry["value"]
                continue
            source = entry["valueFrom"]
            if "fieldRef" in source:
                assert source["fieldRef"] == {"fieldPath": "metadata.name"}, entry
                env[entry["name"]] = POD_NAME
                continue
            ref = source["secretKeyRef"]
            if other_secrets and ref["name"] in other_secrets:
                env[entry["name"]] = other_secrets[ref["name"]][ref["key"]]
                continue
            if existing_secret is None:
                assert ref["name"] == secret["metadata"]["name"]  # type: ignore[index]
            if ref["key"] in data:
                env[entry["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"pod cannot start: Secret has no key {ref['key']}"
        return env


def render(chart: Any, values: dict[str, Any] | None = None) -> Rendered:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return Rendered(files)


@pytest.fixture(scope="module")
def defaults(chart: Any) -> Rendered:
    return render(chart)


@pytest.fixture(scope="module")
def three(chart: Any, three_values: dict[str, Any]) -> Rendered:
    return render(chart, three_values)


@pytest.fixture(scope="module")
def hooks(chart: Any, hook_values: dict[str, Any]) -> Rendered:
    return render(chart, hook_values)


@pytest.fixture(scope="module")
def pg(chart: Any, pg_values: dict[str, Any]) -> Rendered:
    return render(chart, pg_values)


def existing_secret_values(three_values: dict[str, Any]) -> dict[str, Any]:
    return {**three_values, "secrets": {"existingSecret": "lms-changefeed-creds"}}


def load_rendered_config(
    rendered: Rendered, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Load the ConfigMap's config.yaml with the pod's env, as the container would."""
    path = tmp_path / "config.yaml"
    path.write_text(rendered.config_text(), encoding="utf-8")
    for name in list(os.environ):
        if name.startswith(("CHANGEFEED_", "BINDBEE_TOKEN_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name != "CHANGEFEED_CONFIG":  # the pod's path; here the file is elsewhere
            monkeypatch.setenv(name, value)
    assert env.get("CHANGEFEED_CONFIG") == CONFIG_PATH
    return load_settings(path)


# -- lint ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which", ["defaults", "three-connectors", "webhook-discovery", "postgres-replicas"]
)
def test_lint_strict_is_clean(
    helm: Any,
    three_values: dict[str, Any],
    hook_values: dict[str, Any],
    pg_values: dict[str, Any],
    which: str,
) -> None:
    values = {
        "defaults": None,
        "three-connectors": three_values,
        "webhook-discovery": hook_values,
        "postgres-replicas": pg_values,
    }[which]
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is INFO ("icon is recommended"); warnings and errors fail --strict.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# -- every manifest against the Kubernetes schemas -------------------------------------


def _check_service_monitor(rendered: Rendered, monitor: dict[str, Any]) -> None:
    # No Kubernetes schema for the Prometheus Operator's CRD: check what makes it scrape.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = rendered.service("ops")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # It scrapes the ops Service only, never the webhook one.
    selected = [
        s for s in rendered.all("Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [service]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize(
    "which",
    [
        "defaults",
        "three",
        "existing-secret",
        "no-persistence",
        "webhook-discovery",
        "postgres-replicas",
        "postgres-min-available",
    ],
)
def test_every_manifest_validates_against_kubernetes(
    chart: Any,
    three_values: dict[str, Any],
    hook_values: dict[str, Any],
    pg_values: dict[str, Any],
    which: str,
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the dev extra"
    )
    values = {
        "defaults": None,
        "three": three_values,
        "existing-secret": existing_secret_values(three_values),
        "no-persistence": {**three_values, "persistence": {"enabled": False}},
        "webhook-discovery": hook_values,
        "postgres-replicas": pg_values,
        "postgres-min-available": {
            **pg_values,
            "podDisruptionBudget": {"minAvailable": "50%"},
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1},
        },
    }[which]
    rendered = render(chart, values)
    assert rendered.docs
    for doc in rendered.docs:
        if doc["kind"] == "ServiceMonitor":
            _check_service_monitor(rendered, doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_rendered_kinds(
    defaults: Rendered, three: Rendered, hooks: Rendered, pg: Rendered, chart: Any
) -> None:
    common = ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Secret", "Service"]
    assert defaults.kinds() == sorted([*common, "ServiceAccount"])
    assert three.kinds() == sorted([*common, "ServiceAccount", "ServiceMonitor"])
    assert hooks.kinds() == sorted(
        [*common, "Ingress", "Service", "ServiceAccount", "ServiceMonitor"]
    )
    assert "StatefulSet" not in render(chart, {"persistence": {"enabled": False}}).kinds()
    # PostgreSQL: no volume, no chart-made Secret (existingSecret), a disruption budget.
    assert pg.kinds() == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )


# -- the config the pod runs with -----------------------------------------------------


def test_three_connector_config_loads_through_the_daemon_loader(
    three: Rendered, three_values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_rendered_config(three, three.pod_env(), tmp_path, monkeypatch)

    assert [c.name for c in settings.connectors] == ["acme", "globex-eu", "initech"]
    assert set(settings.models) == {"enrollments", "users", "completions"}
    tokens = three_values["secrets"]["connectorTokens"]
    for connector in settings.connectors:
        assert connector.token is not None
        assert connector.token.get_secret_value() == tokens[connector.name]
    assert settings.bindbee.api_key.get_secret_value() == three_values["secrets"]["apiKey"]
    assert settings.kafka.sasl_plain_password is not None
    assert settings.kafka.sasl_plain_password.get_secret_value() == "test-sasl-password"

    # Per-connector overrides win; other streams take the model's interval.
    assert settings.poll_interval("acme", "enrollments") == 900
    assert settings.poll_interval("acme", "users") == 3600
    assert settings.poll_interval("globex-eu", "enrollments") == 120
    assert settings.poll_interval("globex-eu", "users") == 1800
    assert settings.poll_interval("initech", "enrollments") == 300
    assert settings.poll_interval("initech", "completions") == 600
    # This file keeps clock polling: every model says trigger interval.
    assert {m.trigger for m in settings.models.values()} == {"interval"}
    assert settings.models["enrollments"].full_scan_interval_seconds == 43200
    assert settings.models["users"].incremental_param is None
    assert settings.models["users"].initial_sync == "baseline"
    assert settings.models["users"].ignore_fields == ("modified_at", "raw_data")
    assert settings.models["completions"].params == {"include_custom_fields": True}
    assert settings.models["completions"].emit_tombstones is True

    assert settings.state.path == Path("/data/changefeed.db")
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.topic_for("acme", "users") == "lms.acme.users"
    assert settings.log.level == "DEBUG"
    assert settings.scheduler.max_workers == 6
    ports = three.container()["ports"]
    assert ports == [{"name": "http", "containerPort": settings.http.port, "protocol": "TCP"}]


def test_existing_secret_config_loads_with_the_users_secret(
    chart: Any, three_values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(chart, existing_secret_values(three_values))
    assert rendered.maybe("Secret") is None
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in rendered.container()["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"lms-changefeed-creds"}
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations
    # The keys the user's Secret must hold are the env var names.
    existing = {
        "CHANGEFEED_BINDBEE__API_KEY": "from-existing",
        "BINDBEE_TOKEN_ACME": "t1",
        "BINDBEE_TOKEN_GLOBEX_EU": "t2",
        "INITECH_BINDBEE_TOKEN": "t3",
    }
    settings = load_rendered_config(rendered, rendered.pod_env(existing), tmp_path, monkeypatch)
    assert settings.bindbee.api_key.get_secret_value() == "from-existing"
    assert settings.kafka.sasl_plain_password is None
    assert [c.token.get_secret_value() for c in settings.connectors if c.token] == [
        "t1",
        "t2",
        "t3",
    ]
    for name in existing:
        assert name in rendered.notes or name == "CHANGEFEED_BINDBEE__API_KEY"


def test_default_config_is_refused_until_connectors_are_given(
    defaults: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults render (and lint) but hold no credentials and no connector:
    # NOTES says so, and neither Kubernetes nor the daemon would start the pod.
    assert "config.connectors is empty" in defaults.notes
    with pytest.raises(AssertionError, match="Secret has no key CHANGEFEED_BINDBEE__API_KEY"):
        defaults.pod_env()
    env = {"CHANGEFEED_CONFIG": CONFIG_PATH, "CHANGEFEED_BINDBEE__API_KEY": "k"}
    with pytest.raises(ConfigError) as caught:
        load_rendered_config(defaults, env, tmp_path, monkeypatch)
    assert caught.value.field == "connectors"


def test_full_scans_only_survives_helms_null_handling(
    chart: Any, three_values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Helm drops a null that overrides a chart default; the chart must not default this.
    values = copy.deepcopy(three_values)
    values["config"]["models"]["enrollments"]["incremental_param"] = None
    rendered = render(chart, values)
    settings = load_rendered_config(rendered, rendered.pod_env(), tmp_path, monkeypatch)
    assert settings.models["enrollments"].incremental_param is None


def test_no_secret_in_the_configmap_or_the_pod_spec(
    three: Rendered, three_values: dict[str, Any]
) -> None:
    secrets = three_values["secrets"]
    values = [secrets["apiKey"], secrets["kafkaSaslPassword"], *secrets["connectorTokens"].values()]
    configmap = yaml.safe_dump(three.one("ConfigMap"))
    deployment = yaml.safe_dump(three.one("Deployment"))
    for value in values:
        assert value not in configmap
        assert value not in deployment
        assert value not in three.notes
    config = yaml.safe_load(three.config_text())
    assert "api_key" not in config["bindbee"]
    assert all("token" not in c and c["token_env"] for c in config["connectors"])


def test_token_env_names_match_between_configmap_deployment_and_secret(three: Rendered) -> None:
    config = yaml.safe_load(three.config_text())
    token_envs = [c["token_env"] for c in config["connectors"]]
    assert token_envs == ["BINDBEE_TOKEN_ACME", "BINDBEE_TOKEN_GLOBEX_EU", "INITECH_BINDBEE_TOKEN"]
    env = {e["name"]: e for e in three.container()["env"]}
    secret_keys = set(three.one("Secret")["stringData"])
    for name in [*token_envs, "CHANGEFEED_BINDBEE__API_KEY"]:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == name and not ref.get("optional")
        assert name in secret_keys
        assert name in three.notes or name == "CHANGEFEED_BINDBEE__API_KEY"
    assert env["CHANGEFEED_KAFKA__SASL_PLAIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"]
    assert env["CHANGEFEED_CONFIG"]["value"] == CONFIG_PATH
    assert three.container()["args"] == ["run", "--config", CONFIG_PATH]


# -- sync-aware polling: triggers, webhooks, discovery --------------------------------


def _one_connector(extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "config": {"connectors": [{"name": "acme"}], **(extra_config or {})},
        "secrets": {"apiKey": "k", "connectorTokens": {"acme": "t"}},
    }


def test_default_models_follow_syncs(
    chart: Any, defaults: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chart leaves the interval to the daemon: 86400 s, the sync trigger's safety net.
    assert yaml.safe_load(defaults.config_text())["models"] == {"enrollments": {"trigger": "sync"}}
    assert "enrollments: trigger sync, safety-net full scan every 86400 s" in defaults.notes
    rendered = render(chart, _one_connector())
    settings = load_rendered_config(rendered, rendered.pod_env(), tmp_path, monkeypatch)
    assert settings.models["enrollments"].trigger == "sync"
    assert settings.poll_interval("acme", "enrollments") == 86400
    assert settings.bindbee.sync_check_interval_seconds == 60
    assert settings.webhook.enabled is False
    # No webhook: no webhook port, Service, Ingress or secret.
    assert [p["name"] for p in rendered.container()["ports"]] == ["http"]
    assert [s["metadata"]["name"] for s in rendered.all("Service")] == [f"{RELEASE}-lms-changefeed"]
    assert rendered.maybe("Ingress") is None
    assert "CHANGEFEED_WEBHOOK__SECRET" not in {e["name"] for e in rendered.container()["env"]}


def test_webhook_discovery_config_loads_through_the_daemon_loader(
    hooks: Rendered, hook_values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = hooks.pod_env()
    settings = load_rendered_config(hooks, env, tmp_path, monkeypatch)

    assert settings.webhook.enabled is True
    assert settings.webhook.secret is not None
    assert settings.webhook.secret.get_secret_value() == hook_values["secrets"]["webhookSecret"]
    assert settings.webhook.port == 9103 != settings.http.port
    assert settings.webhook.path == "/webhooks/bindbee"
    assert settings.webhook.signature_encodings == ("base64url", "hex")
    assert settings.bindbee.discover_connectors is True
    assert settings.bindbee.discover_filter.integration_slug == ("moodle", "canvas")
    assert settings.bindbee.discover_filter.is_test_connector is False
    assert settings.bindbee.discover_filter.origin_id == "tenant-*"
    assert settings.bindbee.sync_check_interval_seconds == 600
    assert [c.name for c in settings.connectors] == ["acme"]
    assert settings.models["enrollments"].trigger == "sync"
    assert settings.poll_interval("acme", "enrollments") == 86400
    assert settings.models["completions"].trigger == "sync"
    assert settings.poll_interval("acme", "completions") == 43200
    assert settings.models["users"].trigger == "interval"
    assert settings.poll_interval("acme", "users") == 3600


def _backend_ports(rendered: Rendered) -> list[tuple[str, Any]]:
    """Every (Service name, port) an Ingress routes to."""
    found = []
    for ingress in rendered.all("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                found.append((service["name"], service["port"]))
    return found


def test_only_the_webhook_port_is_exposed_for_webhooks(hooks: Rendered) -> None:
    ops_port = {"name": "http", "containerPort": 9102, "protocol": "TCP"}
    hook_port = {"name": "webhook", "containerPort": 9103, "protocol": "TCP"}
    assert hooks.container()["ports"] == [ops_port, hook_port]
    pod_labels = hooks.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    service = hooks.service("webhook")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 9103, "targetPort": "webhook", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The ops Service keeps the ops port alone.
    assert [p["targetPort"] for p in hooks.service("ops")["spec"]["ports"]] == ["http"]

    ingress = hooks.one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "changefeed-example-com-tls", "hosts": ["changefeed.example.com"]}
    ]
    rules = ingress["spec"]["rules"]
    assert [r["host"] for r in rules] == ["changefeed.example.com"]
    paths = [p for r in rules for p in r["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/webhooks/bindbee", "Exact")]
    assert _backend_ports(hooks) == [(service["metadata"]["name"], {"name": "webhook"})]
    assert "https://changefeed.example.com/webhooks/bindbee" in hooks.notes


def test_webhook_service_alone_and_ingress_implies_it(chart: Any) -> None:
    hook = {"webhook": {"enabled": True}}
    values = {**_one_connector(hook), "secrets": {"existingSecret": "creds"}}
    service_only = render(chart, {**values, "webhook": {"service": {"enabled": True}}})
    assert service_only.maybe("Ingress") is None
    assert service_only.service("webhook")["spec"]["ports"][0]["targetPort"] == "webhook"
    assert f"Service {RELEASE}-lms-changefeed-webhook" in service_only.notes

    ingress_only = render(
        chart, {**values, "webhook": {"ingress": {"enabled": True, "hosts": ["h.example"]}}}
    )
    name = ingress_only.service("webhook")["metadata"]["name"]
    assert _backend_ports(ingress_only) == [(name, {"name": "webhook"})]

    neither = render(chart, values)
    assert neither.maybe("Ingress") is None
    assert len(neither.all("Service")) == 1
    assert "Nothing exposes it yet" in neither.notes
    # Still listening (the container port), for a Service or mesh the user brings.
    assert [p["name"] for p in neither.container()["ports"]] == ["http", "webhook"]


def test_webhook_secret_comes_from_the_secret(
    chart: Any, hooks: Rendered, hook_values: dict[str, Any]
) -> None:
    env = {e["name"]: e for e in hooks.container()["env"]}
    ref = env["CHANGEFEED_WEBHOOK__SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {
        "name": hooks.one("Secret")["metadata"]["name"],
        "key": "CHANGEFEED_WEBHOOK__SECRET",
    }
    secret = hook_values["secrets"]["webhookSecret"]
    assert hooks.one("Secret")["stringData"]["CHANGEFEED_WEBHOOK__SECRET"] == secret
    for doc in ("ConfigMap", "Deployment", "Ingress"):
        assert secret not in yaml.safe_dump(hooks.one(doc))
    assert secret not in hooks.notes
    assert "secret" not in yaml.safe_load(hooks.config_text())["webhook"]

    # With a Secret of one's own, its key is the env var name too, and NOTES says so.
    existing = render(chart, {**hook_values, "secrets": {"existingSecret": "creds"}})
    env = {e["name"]: e for e in existing.container()["env"]}
    ref = env["CHANGEFEED_WEBHOOK__SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "creds", "key": "CHANGEFEED_WEBHOOK__SECRET"}
    assert "CHANGEFEED_WEBHOOK__SECRET" in existing.notes

    # webhookSecret is only used with webhooks on.
    off = render(
        chart,
        {**_one_connector(), "secrets": {**_one_connector()["secrets"], "webhookSecret": "w"}},
    )
    assert "CHANGEFEED_WEBHOOK__SECRET" not in off.one("Secret")["stringData"]


def test_discovery_needs_no_configured_connector(
    chart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"config": {"bindbee": {"discover_connectors": True}}, "secrets": {"apiKey": "k"}}
    rendered = render(chart, values)
    assert "config.connectors is empty" not in rendered.notes
    assert "Connector discovery is on" in rendered.notes
    env = rendered.pod_env()
    assert not any(name.startswith("BINDBEE_TOKEN_") for name in env)
    settings = load_rendered_config(rendered, env, tmp_path, monkeypatch)
    assert settings.connectors == ()
    assert settings.bindbee.discover_connectors is True


@pytest.mark.parametrize(
    "config",
    [
        # Webhooks are the only trigger of the sync check (plus one read at start).
        {"bindbee": {"sync_check_interval_seconds": 0}, "webhook": {"enabled": True}},
        # No sync-triggered model: nothing needs the watcher.
        {
            "bindbee": {"sync_check_interval_seconds": 0},
            "models": {"enrollments": {"trigger": "interval"}},
        },
    ],
)
def test_schema_accepts_a_sync_check_only_on_hints_where_the_daemon_does(
    chart: Any, config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _one_connector(config)
    values["secrets"]["webhookSecret"] = "w"
    rendered = render(chart, values)
    settings = load_rendered_config(rendered, rendered.pod_env(), tmp_path, monkeypatch)
    assert settings.bindbee.sync_check_interval_seconds == 0


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHANGEFEED_", "BINDBEE_TOKEN_"))
    }
    clean.update({k: v for k, v in env.items() if k != "CHANGEFEED_CONFIG"})
    return subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_rendered_config_and_refuses_a_shared_port(
    hooks: Rendered, tmp_path: Path
) -> None:
    env = hooks.pod_env()
    path = tmp_path / "config.yaml"
    path.write_text(hooks.config_text(), encoding="utf-8")
    ok = _check_config(path, env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("config OK: 1 connector(s) x 3 model(s)")
    assert env["CHANGEFEED_WEBHOOK__SECRET"] not in ok.stdout + ok.stderr

    # What the chart refuses to render, the daemon refuses to run: one port for both.
    config = yaml.safe_load(hooks.config_text())
    config["webhook"]["port"] = config["http"]["port"]
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    shared = _check_config(path, env)
    assert shared.returncode == 2
    assert "webhook.port: must differ from http.port" in shared.stderr

    # And without the secret the daemon refuses webhooks, naming the env var.
    del env["CHANGEFEED_WEBHOOK__SECRET"]
    path.write_text(hooks.config_text(), encoding="utf-8")
    no_secret = _check_config(path, env)
    assert no_secret.returncode == 2
    assert "CHANGEFEED_WEBHOOK__SECRET" in no_secret.stderr


# -- rolling on config change ---------------------------------------------------------


def _checksum(rendered: Rendered, name: str) -> str:
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations[name]
    return value


def test_a_config_change_changes_the_pod_template(
    chart: Any, three: Rendered, three_values: dict[str, Any]
) -> None:
    again = render(chart, three_values)
    assert _checksum(again, "checksum/config") == _checksum(three, "checksum/config")
    assert _checksum(again, "checksum/secret") == _checksum(three, "checksum/secret")

    changed_config = copy.deepcopy(three_values)
    changed_config["config"]["models"]["enrollments"]["poll_interval_seconds"] = 301
    rendered = render(chart, changed_config)
    assert _checksum(rendered, "checksum/config") != _checksum(three, "checksum/config")

    changed_secret = {**three_values, "secrets": {**three_values["secrets"], "apiKey": "rotated"}}
    rendered = render(chart, changed_secret)
    assert _checksum(rendered, "checksum/secret") != _checksum(three, "checksum/secret")
    assert _checksum(rendered, "checksum/config") == _checksum(three, "checksum/config")


# -- the pod ----------------------------------------------------------------------------


def _dockerfile_user() -> tuple[int, int]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, flags=re.MULTILINE)
    assert users, "Dockerfile has no numeric USER uid:gid"
    uid, gid = users[-1]
    return int(uid), int(gid)


@pytest.mark.parametrize("which", ["defaults", "three"])
def test_pod_is_hardened_and_single(defaults: Rendered, three: Rendered, which: str) -> None:
    rendered = defaults if which == "defaults" else three
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = rendered.pod()
    uid, gid = _dockerfile_user()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["runAsGroup"] == gid
    assert pod["securityContext"]["fsGroup"] == gid
    assert pod["automountServiceAccountToken"] is False
    security = rendered.container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    mounts = {m["mountPath"]: m for m in rendered.container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/etc/lms-changefeed", "/data", "/tmp"}
    assert mounts["/etc/lms-changefeed"]["readOnly"] is True
    assert "configMap" in volumes[mounts["/etc/lms-changefeed"]["name"]]
    claim = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == rendered.one("PersistentVolumeClaim")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_persistence_options(chart: Any, three: Rendered) -> None:
    pvc = three.one("PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pvc["spec"]["storageClassName"] == "fast-ssd"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    existing = render(chart, {"persistence": {"existingClaim": "my-claim"}})
    assert existing.maybe("PersistentVolumeClaim") is None
    volumes = {v["name"]: v for v in existing.pod()["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "my-claim"

    ephemeral = render(chart, {"persistence": {"enabled": False}})
    assert ephemeral.maybe("PersistentVolumeClaim") is None
    assert "emptyDir" in {v["name"]: v for v in ephemeral.pod()["volumes"]}["data"]
    assert "persistence.enabled=false" in ephemeral.notes


def test_probes_service_and_service_monitor_line_up(three: Rendered) -> None:
    container = three.container()
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = three.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    labels = three.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = three.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    _check_service_monitor(three, monitor)


def test_grace_period_covers_the_shutdown_timeout(
    defaults: Rendered, three: Rendered, chart: Any
) -> None:
    assert defaults.pod()["terminationGracePeriodSeconds"] == 25 + 5
    assert three.pod()["terminationGracePeriodSeconds"] == 40 + 5
    explicit = render(chart, {"terminationGracePeriodSeconds": 120})
    assert explicit.pod()["terminationGracePeriodSeconds"] == 120


# -- several replicas: the state in PostgreSQL -------------------------------------------

PG_SECRET = "lms-changefeed-postgres"
PG_CREDENTIALS = {
    "CHANGEFEED_BINDBEE__API_KEY": "from-existing",
    "BINDBEE_TOKEN_ACME": "t1",
    "BINDBEE_TOKEN_GLOBEX_EU": "t2",
}


def _env_entry(rendered: Rendered, name: str) -> dict[str, Any] | None:
    return next((e for e in rendered.container()["env"] if e["name"] == name), None)


def test_replicas_on_postgres_share_the_streams_without_a_volume(
    pg: Rendered, pg_values: dict[str, Any]
) -> None:
    deployment = pg.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    # The URL comes from the user's Secret, by reference; it is nowhere in the manifests.
    url = _env_entry(pg, "CHANGEFEED_STATE__URL")
    assert url == {
        "name": "CHANGEFEED_STATE__URL",
        "valueFrom": {"secretKeyRef": {"name": PG_SECRET, "key": "url"}},
    }
    # No volume: nothing at /data, no PVC, no emptyDir standing in for one.
    assert pg.maybe("PersistentVolumeClaim") is None
    assert {m["mountPath"] for m in pg.container()["volumeMounts"]} == {
        "/etc/lms-changefeed",
        "/tmp",
    }
    assert {v["name"] for v in pg.pod()["volumes"]} == {"config", "tmp"}
    assert "state" in yaml.safe_load(pg.config_text())
    assert "path" not in yaml.safe_load(pg.config_text())["state"]

    pdb = pg.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    spread = pg.pod()["topologySpreadConstraints"]
    assert spread == pg_values["topologySpreadConstraints"]

    assert "State: PostgreSQL, URL from Secret lms-changefeed-postgres (key url)" in pg.notes
    assert "3 replica(s) share the streams through leases" in pg.notes
    assert "persistence.enabled=false" not in pg.notes


def test_replica_config_loads_through_the_daemon_loader(
    pg: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = pg.pod_env(PG_CREDENTIALS, other_secrets={PG_SECRET: {"url": PG_URL}})
    settings = load_rendered_config(pg, env, tmp_path, monkeypatch)
    assert settings.state.url is not None
    assert settings.state.url.get_secret_value() == PG_URL
    assert settings.state.lease_seconds == 15
    assert settings.state.pool_size == 4
    assert settings.scheduler.max_workers == 8
    # Each pod names itself after its pod (the downward API's metadata.name).
    assert settings.scheduler.replica_id == POD_NAME
    assert [c.name for c in settings.connectors] == ["acme", "globex-eu"]
    for doc in ("ConfigMap", "Deployment"):
        assert "not-a-real-password" not in yaml.safe_dump(pg.one(doc))


def test_every_pod_is_named_by_the_downward_api(defaults: Rendered, three: Rendered) -> None:
    for rendered in (defaults, three):
        assert _env_entry(rendered, "CHANGEFEED_SCHEDULER__REPLICA_ID") == {
            "name": "CHANGEFEED_SCHEDULER__REPLICA_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        }


def test_sqlite_default_is_unchanged(defaults: Rendered, three: Rendered) -> None:
    # One pod, Recreate, the PVC at /data, state.path in the config, no PDB, no URL.
    for rendered in (defaults, three):
        assert rendered.one("Deployment")["spec"]["replicas"] == 1
        assert rendered.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
        assert rendered.maybe("PodDisruptionBudget") is None
        assert rendered.one("PersistentVolumeClaim")
        assert yaml.safe_load(rendered.config_text())["state"] == {"path": "/data/changefeed.db"}
        assert _env_entry(rendered, "CHANGEFEED_STATE__URL") is None
    # The daemon chooses the workers (one per stream, at most 32) unless values say.
    assert "max_workers" not in yaml.safe_load(defaults.config_text())["scheduler"]


def test_one_replica_on_postgres_rolls_and_needs_no_budget(
    chart: Any, pg_values: dict[str, Any]
) -> None:
    one = render(chart, {**pg_values, "replicaCount": 1})
    deployment = one.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert one.maybe("PodDisruptionBudget") is None
    assert one.maybe("PersistentVolumeClaim") is None


def test_disruption_budget_options(chart: Any, pg_values: dict[str, Any]) -> None:
    minimum = render(chart, {**pg_values, "podDisruptionBudget": {"minAvailable": 2}})
    spec = minimum.one("PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == 2
    assert "maxUnavailable" not in spec
    percent = render(chart, {**pg_values, "podDisruptionBudget": {"maxUnavailable": "34%"}})
    assert percent.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == "34%"
    off = render(chart, {**pg_values, "podDisruptionBudget": {"enabled": False}})
    assert off.maybe("PodDisruptionBudget") is None


def test_sqlite_can_be_scaled_to_zero(chart: Any) -> None:
    # `reset` wants the daemon stopped: replicaCount 0 keeps the PVC and the Recreate.
    stopped = render(chart, {"replicaCount": 0})
    assert stopped.one("Deployment")["spec"]["replicas"] == 0
    assert stopped.one("PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("values", "where"),
    [
        # SQLite is one process: more replicas need the state in PostgreSQL.
        ({"replicaCount": 3}, "/state/urlSecret"),
        ({"replicaCount": 2, "state": {"urlSecret": {}}}, "/state/urlSecret"),
        ({"replicaCount": 3, "state": {"urlSecret": {"name": "pg"}}}, "'key' required"),
        ({"state": {"urlSecret": {"key": "url"}}}, "'name' required"),
        ({"state": {"urlSecret": {"name": "Not_A_Name", "key": "url"}}}, "/state/urlSecret/name"),
        ({"state": {"url": "postgresql://u:p@h/db"}}, "'url' not allowed"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "maxUnavailable"),
        ({"rollingUpdate": {"maxSurge": -1}}, "maxSurge"),
    ],
)
def test_schema_refuses_replicas_without_postgres(
    helm: Any, chart: Any, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    if values.get("replicaCount", 1) > 1:
        # Both ways out are named: one replica, or the state in PostgreSQL.
        assert "at '/replicaCount': maximum: got" in str(caught.value)


def test_template_refuses_replicas_without_postgres_too(helm: Any, tmp_path: Path) -> None:
    # The second line of defence, for installs that skip the schema
    # (--skip-schema-validation): the same chart without values.schema.json.
    copy_ = tmp_path / "lms-changefeed"
    shutil.copytree(CHART, copy_)
    (copy_ / "values.schema.json").unlink()
    with helm.Chart.load(copy_) as unchecked, pytest.raises(helm.HelmRenderError) as caught:
        unchecked.render({"replicaCount": 3}, name=RELEASE, namespace=NAMESPACE)
    message = str(caught.value)
    assert "replicaCount 3 needs the state in PostgreSQL: set state.urlSecret" in message


# -- values that must be refused --------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"bindbee": {"api_key": "oops"}}, "api_key"),
        ({"kafka": {"sasl_plain_password": "oops"}}, "sasl_plain_password"),
        ({"connectors": [{"name": "acme", "token": "oops"}]}, "token"),
        ({"state": {"path": "/var/lib/x.db"}}, "/config/state"),
        # The URL holds the password: only through state.urlSecret, never in values.
        ({"state": {"url": "postgresql://u:p@h/db"}}, "'url' not allowed"),
        ({"state": {"lease_seconds": 0.5}}, "lease_seconds"),
        ({"state": {"pool_size": 0}}, "pool_size"),
        # Each pod's name, from the downward API: one value for all would merge them.
        ({"scheduler": {"replica_id": "one"}}, "'replica_id' not allowed"),
        ({"scheduler": {"max_workers": 1001}}, "max_workers"),
        ({"scheduler": {"claim_interval_seconds": 0}}, "claim_interval_seconds"),
        ({"models": {"grades": {}}}, "grades"),
        ({"http": {"enabled": False}}, "enabled"),
        ({"models": {"enrollments": {"initial_sync": "silent"}}}, "initial_sync"),
        # The signing secret comes from the Secret (CHANGEFEED_WEBHOOK__SECRET) only.
        ({"webhook": {"enabled": True, "secret": "oops"}}, "'secret' not allowed"),
        ({"models": {"enrollments": {"trigger": "hourly"}}}, "trigger"),
        ({"webhook": {"port": 0}}, "/config/webhook/port"),
        ({"webhook": {"path": "webhooks"}}, "/config/webhook/path"),
        ({"webhook": {"signature_encodings": []}}, "signature_encodings"),
        ({"webhook": {"signature_encodings": ["sha1"]}}, "signature_encodings"),
        ({"webhook": {"read_timeout_seconds": 61}}, "read_timeout_seconds"),
        ({"webhook": {"max_body_bytes": 512}}, "max_body_bytes"),
        ({"bindbee": {"sync_check_interval_seconds": -1}}, "sync_check_interval_seconds"),
        ({"bindbee": {"discover_filter": {"origin_id": ""}}}, "origin_id"),
        ({"kafka": {"schema_base_uri": "schemas"}}, "schema_base_uri"),
        ({"bindbee": {"discover_filter": {"slug": "moodle"}}}, "'slug' not allowed"),
        # Only webhooks would ever trigger the sync-triggered enrollments, and none come.
        ({"bindbee": {"sync_check_interval_seconds": 0}}, "sync_check_interval_seconds"),
    ],
)
def test_schema_refuses(helm: Any, chart: Any, config: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.render({"config": config}, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"config": {"connectors": [{"name": "acme"}]}, "secrets": {"apiKey": "k"}},
            "secrets.connectorTokens.acme is required",
        ),
        (
            {
                "config": {"connectors": [{"name": "acme"}]},
                "secrets": {"connectorTokens": {"acme": "t"}},
            },
            "secrets.apiKey is required",
        ),
        (
            {
                "config": {"connectors": [{"name": "acme"}]},
                "secrets": {"apiKey": "k", "connectorTokens": {"acme": "t", "acne": "t"}},
            },
            "secrets.connectorTokens.acne: no connector of that name",
        ),
        (
            {
                "config": {"connectors": [{"name": "acme"}, {"name": "acme"}]},
                "secrets": {"existingSecret": "s"},
            },
            'connector "acme" is listed twice',
        ),
        (
            {
                "config": {"connectors": [{"name": "a-b"}, {"name": "a.b"}]},
                "secrets": {"existingSecret": "s"},
            },
            "two connectors read their token from BINDBEE_TOKEN_A_B",
        ),
        (
            {"config": {"bindbee": {"discover_connectors": True}}},
            "secrets.apiKey is required",
        ),
        (
            {
                "config": {"connectors": [{"name": "acme"}], "webhook": {"enabled": True}},
                "secrets": {"apiKey": "k", "connectorTokens": {"acme": "t"}},
            },
            "secrets.webhookSecret is required with config.webhook.enabled",
        ),
        (
            {"webhook": {"service": {"enabled": True}}},
            "set config.webhook.enabled too",
        ),
        (
            {
                "webhook": {"ingress": {"enabled": True, "hosts": ["h.example"]}},
                "secrets": {"existingSecret": "s"},
            },
            "set config.webhook.enabled too",
        ),
        (
            {
                "config": {"webhook": {"enabled": True, "port": 9102}},
                "secrets": {"existingSecret": "s"},
            },
            "config.webhook.port: must differ from config.http.port (9102)",
        ),
        (
            # The daemon's default webhook port is 9103: moving the ops port onto it collides.
            {
                "config": {"http": {"port": 9103}, "webhook": {"enabled": True, "port": None}},
                "secrets": {"existingSecret": "s"},
            },
            "config.webhook.port: must differ from config.http.port (9103)",
        ),
    ],
)
def test_render_refuses_a_pod_that_could_not_start(
    helm: Any, chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def _model_fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_schema_covers_every_setting_except_secrets(chart: Any) -> None:
    schema = chart.schema["properties"]["config"]["properties"]
    assert set(schema) == set(Settings.model_fields)
    for section, field in Settings.model_fields.items():
        if section in {"connectors", "models"}:
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        expected = {
            f
            for f in _model_fields(model)
            if (section, f) not in SECRET_FIELDS | CHART_OWNED_FIELDS
        }
        assert set(schema[section]["properties"]) == expected, section
        assert schema[section]["additionalProperties"] is False, section
    connector = schema["connectors"]["items"]["properties"]
    assert set(connector) == _model_fields(ConnectorSettings) - {"token", "bindbee_id"}
    model_schema = schema["models"]["additionalProperties"]["anyOf"][0]["properties"]
    assert set(model_schema) == _model_fields(ModelSettings)
    assert schema["models"]["propertyNames"]["enum"] == list(LMS_MODELS)


# -- config/example.yaml ----------------------------------------------------------------

EXAMPLE_SECRETS = {
    "CHANGEFEED_BINDBEE__API_KEY": "example-api-key",
    "BINDBEE_TOKEN_ACME": "example-token-acme",
    "BINDBEE_TOKEN_GLOBEX": "example-token-globex",
    "BINDBEE_TOKEN_INITECH": "example-token-initech",
}


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CHANGEFEED_", "BINDBEE_TOKEN_")):
            monkeypatch.delenv(name)
    for name, value in EXAMPLE_SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("example_env")
def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE_CONFIG)
    assert settings.bindbee.api_key.get_secret_value() == "example-api-key"
    assert [c.name for c in settings.connectors] == ["acme", "globex", "initech"]
    assert settings.connector("acme").token is not None
    assert settings.poll_interval("acme", "enrollments") == 900
    assert settings.poll_interval("globex", "users") == 1800
    # initech has no override: enrollments follow syncs, with the daily safety net.
    assert settings.models["enrollments"].trigger == "sync"
    assert settings.poll_interval("initech", "enrollments") == 86400
    assert settings.models["users"].trigger == "interval"
    assert settings.models["courses"].trigger == "interval"
    assert settings.poll_interval("initech", "users") == 3600
    assert settings.webhook.enabled is False
    assert settings.bindbee.discover_connectors is False
    assert settings.models["courses"].incremental_param is None
    assert settings.models["users"].initial_sync == "baseline"
    assert settings.models["courses"].emit_tombstones is True


@pytest.mark.usefixtures("example_env")
def test_example_config_shows_the_defaults() -> None:
    # The example's default-valued sections must say what the daemon would do anyway.
    example = load_settings(EXAMPLE_CONFIG)
    bare = Settings.model_validate(
        {"bindbee": {"api_key": "x"}, "connectors": [{"name": "x", "token": "x"}]}
    )
    for section in ("kafka", "state", "log", "http", "scheduler", "webhook"):
        assert getattr(example, section) == getattr(bare, section), section
    assert example.models["enrollments"] == ModelSettings()
    assert example.bindbee.model_dump(exclude={"api_key"}) == bare.bindbee.model_dump(
        exclude={"api_key"}
    )


def test_example_config_documents_every_field() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")

    def documented(name: str) -> bool:
        # As a key, or as a commented-out key for the secrets.
        return (
            re.search(rf"^\s*(#\s*)?(- )?{re.escape(name)}:", text, flags=re.MULTILINE) is not None
        )

    missing = []
    for section, field in Settings.model_fields.items():
        if not documented(section):
            missing.append(section)
        model = field.annotation
        if section == "connectors":
            model = ConnectorSettings
        elif section == "models":
            model = ModelSettings
        if isinstance(model, type) and issubclass(model, BaseModel):
            for name, sub in model.model_fields.items():
                if (section, name) in INTERNAL_FIELDS:
                    continue
                if not documented(name):
                    missing.append(f"{section}.{name}")
                if isinstance(sub.annotation, type) and issubclass(sub.annotation, BaseModel):
                    missing += [
                        f"{section}.{name}.{n}"
                        for n in sub.annotation.model_fields
                        if not documented(n)
                    ]
    assert missing == []
    # Secrets are only ever shown as env vars.
    assert "CHANGEFEED_BINDBEE__API_KEY" in text
    assert "CHANGEFEED_KAFKA__SASL_PLAIN_PASSWORD" in text
    assert "CHANGEFEED_WEBHOOK__SECRET" in text
    assert not re.search(
        r"^\s*(api_key|token|sasl_plain_password|secret):", text, flags=re.MULTILINE
    )
