"""The health endpoint over real HTTP on loopback: probes, exceptions, timeouts, metrics."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from daemon.errors import ConfigError
from daemon.ops import metrics
from daemon.ops.health import HealthServer
from daemon.settings import load_settings

API_KEY = "bb-live-key-do-not-leak-7f3a"
TOKEN = "conn-token-do-not-leak-91c2"


def ok(detail: str = "fine") -> Callable[[], tuple[bool, str]]:
    return lambda: (True, detail)


def not_ok(detail: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (False, detail)


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start HealthServers on free loopback ports; returns each one's base URL."""
    servers: list[HealthServer] = []

    def start(**kwargs: object) -> str:
        kwargs.setdefault("liveness", ok())
        kwargs.setdefault("readiness", ok())
        server = HealthServer("127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        assert server.port != 0
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_ok_check_is_200_with_json(serve: Callable[..., str], path: str) -> None:
    base = serve(liveness=ok("scheduler running"), readiness=ok("scheduler running"))
    response = get(base + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"ok": True, "detail": "scheduler running"}


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/healthz", {"liveness": not_ok("scan of acme/enrollments stuck")}),
        ("/readyz", {"readiness": not_ok("scan of acme/enrollments stuck")}),
    ],
)
def test_failing_check_is_503_with_reason(
    serve: Callable[..., str], path: str, kwargs: dict[str, object]
) -> None:
    response = get(serve(**kwargs) + path)
    assert response.status_code == 503
    assert response.json() == {"ok": False, "detail": "scan of acme/enrollments stuck"}


def test_liveness_and_readiness_are_independent(serve: Callable[..., str]) -> None:
    base = serve(liveness=ok(), readiness=not_ok("kafka unreachable"))
    assert get(base + "/healthz").status_code == 200
    assert get(base + "/readyz").status_code == 503


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_exception_in_check_is_503_with_message(serve: Callable[..., str], path: str) -> None:
    def boom() -> tuple[bool, str]:
        raise RuntimeError("state store closed")

    response = get(serve(liveness=boom, readiness=boom) + path)
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert "RuntimeError: state store closed" in body["detail"]


def test_query_string_is_ignored(serve: Callable[..., str]) -> None:
    assert get(serve() + "/healthz?verbose=1").status_code == 200


def test_unknown_path_is_404(serve: Callable[..., str]) -> None:
    response = get(serve() + "/nope")
    assert response.status_code == 404
    assert response.json()["ok"] is False


def test_hung_readiness_times_out_and_runs_once(serve: Callable[..., str]) -> None:
    release = threading.Event()
    calls: list[int] = []

    def hung() -> tuple[bool, str]:
        calls.append(1)
        release.wait()
        return True, "kafka reachable"

    base = serve(readiness=hung, check_timeout=0.2)
    try:
        first = get(base + "/readyz")
        second = get(base + "/readyz")
    finally:
        release.set()
    assert first.status_code == second.status_code == 503
    assert "did not answer within 0.2s" in first.json()["detail"]
    # The second probe joined the run in flight instead of starting another.
    assert len(calls) == 1
    # Once the slow check answers, probes see its answer (from the same run).
    recovered = get(base + "/readyz")
    assert recovered.status_code == 200
    assert recovered.json()["detail"] == "kafka reachable"
    assert len(calls) == 1


def test_readiness_answer_is_cached(serve: Callable[..., str]) -> None:
    calls: list[int] = []

    def counted() -> tuple[bool, str]:
        calls.append(1)
        return True, f"call {len(calls)}"

    # A TTL far longer than the test keeps this free of timing assumptions.
    base = serve(readiness=counted, readiness_ttl=3600)
    bodies = [get(base + "/readyz").json()["detail"] for _ in range(5)]
    assert bodies == ["call 1"] * 5
    assert len(calls) == 1


def test_liveness_is_not_cached(serve: Callable[..., str]) -> None:
    calls: list[int] = []

    def counted() -> tuple[bool, str]:
        calls.append(1)
        return True, f"call {len(calls)}"

    base = serve(liveness=counted)
    assert [get(base + "/healthz").json()["detail"] for _ in range(3)] == [
        "call 1",
        "call 2",
        "call 3",
    ]


def test_port_in_use_is_a_config_error_naming_http_port(serve: Callable[..., str]) -> None:
    port = int(serve().rsplit(":", 1)[1])
    other = HealthServer("127.0.0.1", port, liveness=ok(), readiness=ok())
    with pytest.raises(ConfigError) as caught:
        other.start()
    assert caught.value.field == "http.port"


def test_stop_releases_the_port() -> None:
    server = HealthServer("127.0.0.1", 0, liveness=ok(), readiness=ok())
    server.start()
    port = server.port
    server.stop()
    server.stop()  # idempotent
    again = HealthServer("127.0.0.1", port, liveness=ok(), readiness=ok())
    again.start()
    try:
        assert get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        again.stop()


# -- /metrics ------------------------------------------------------------------------


def _families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def _declared_metric_names() -> set[str]:
    names = {obj._name for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)}
    return names | {"changefeed_watermark_lag_seconds"}


def test_metrics_exposes_every_changefeed_metric_with_stream_labels(
    serve: Callable[..., str],
) -> None:
    labels = ("health-test-acme", "enrollments")
    metrics.SCANS.labels(*labels, "full", "ok").inc()
    metrics.SCAN_DURATION.labels(*labels).observe(12.5)
    metrics.ITEMS_SEEN.labels(*labels).inc(250)
    metrics.EVENTS_PUBLISHED.labels(*labels, "created").inc(3)
    metrics.API_REQUESTS.labels(labels[0], "200").inc(3)
    metrics.API_REQUESTS.labels(labels[0], "429").inc()
    metrics.API_RATE_LIMITED.labels(labels[0]).inc()
    metrics.API_RATE_LIMIT_REMAINING.labels(labels[0]).set(197)
    metrics.LAST_SUCCESS.labels(*labels).set(time.time())
    metrics.DELETE_GUARD_TRIPS.labels(*labels).inc()

    response = get(serve() + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = _families(response.text)

    missing = _declared_metric_names() - set(families)
    assert not missing, f"not exposed: {sorted(missing)}"

    stream = {"connector": labels[0], "model": labels[1]}

    def value(family: str, sample: str, **extra: str) -> float:
        wanted = {**stream, **extra}
        for name, sample_labels, sample_value in families[family]:
            if name == sample and sample_labels == wanted:
                return sample_value
        raise AssertionError(f"no {sample}{wanted} in /metrics")

    assert value("changefeed_scans", "changefeed_scans_total", kind="full", result="ok") >= 1
    assert value("changefeed_items_seen", "changefeed_items_seen_total") >= 250
    assert (
        value("changefeed_events_published", "changefeed_events_published_total", type="created")
        >= 3
    )
    assert value("changefeed_delete_guard_trips", "changefeed_delete_guard_trips_total") >= 1
    assert value("changefeed_scan_duration_seconds", "changefeed_scan_duration_seconds_count") >= 1

    api = {name: (sl, v) for name, sl, v in families["changefeed_api_requests"]}
    assert "changefeed_api_requests_total" in api
    statuses = {
        sl["status"]
        for name, sl, _ in families["changefeed_api_requests"]
        if sl.get("connector") == labels[0]
    }
    assert {"200", "429"} <= statuses
    remaining = [
        v
        for _, sl, v in families["changefeed_api_rate_limit_remaining"]
        if sl == {"connector": labels[0]}
    ]
    assert remaining == [197]


def test_watermark_lag_appears_once_a_watermark_is_set(serve: Callable[..., str]) -> None:
    labels = {"connector": "health-test-lag", "model": "courses"}
    base = serve()
    before = _families(get(base + "/metrics").text)
    assert all(sl != labels for _, sl, _ in before["changefeed_watermark_lag_seconds"])

    metrics.WATERMARK.labels(**labels).set(time.time() - 600)
    after = _families(get(base + "/metrics").text)
    lags = [v for _, sl, v in after["changefeed_watermark_lag_seconds"] if sl == labels]
    assert len(lags) == 1
    # Computed at scrape time as now - watermark; the clock only moves forward here.
    assert lags[0] >= 600


def test_openmetrics_is_served_when_asked(serve: Callable[..., str]) -> None:
    response = httpx.get(
        serve() + "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_no_secret_reaches_any_endpoint(
    serve: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "connectors:\n  - name: health-test-secret\n    token_env: HEALTH_TEST_TOKEN\n",
        encoding="utf-8",
    )
    for name in list(os.environ):
        if name.startswith("CHANGEFEED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHANGEFEED_BINDBEE__API_KEY", API_KEY)
    monkeypatch.setenv("HEALTH_TEST_TOKEN", TOKEN)
    settings = load_settings(config)
    connector = settings.connectors[0]
    assert connector.token is not None and connector.token.get_secret_value() == TOKEN

    # Label metrics the way the daemon does: by connector name.
    metrics.API_REQUESTS.labels(connector.name, "401").inc()
    metrics.API_RATE_LIMIT_REMAINING.labels(connector.name).set(0)
    metrics.SCANS.labels(connector.name, "enrollments", "incremental", "failed").inc()

    def failing() -> tuple[bool, str]:
        raise RuntimeError(f"cannot reach the API with {connector!r} and {settings.bindbee!r}")

    base = serve(liveness=failing, readiness=failing)
    bodies = [get(base + path).text for path in ("/healthz", "/readyz", "/metrics")]
    assert "health-test-secret" in bodies[0]
    assert "health-test-secret" in bodies[2]
    for body in bodies:
        assert TOKEN not in body
        assert API_KEY not in body


def test_lag_collector_is_registered_once() -> None:
    metrics.register_lag_collector(REGISTRY)
    names = [m.name for m in REGISTRY.collect() if m.name == "changefeed_watermark_lag_seconds"]
    assert names == ["changefeed_watermark_lag_seconds"]
