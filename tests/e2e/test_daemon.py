"""`lms-changefeed run` as a real process: schedule, health, metrics, SIGTERM."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bindbee_sim import SimServer
from daemon.models import StreamKey
from daemon.state import open_store
from tests.harness import (
    Daemon,
    base_config,
    marked_through,
    topic_of,
    wait_until,
    write_config,
)
from tests.kafka_read import read_topic


@pytest.fixture
def daemon_config(sim, broker, tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    config = base_config(sim, broker.bootstrap, tmp_path, lookback_seconds=1)
    config["scheduler"]["jitter_seconds"] = 0.1
    yield write_config(tmp_path, config), config


@pytest.mark.sim(enrollments=300, honor_modified_after=True)
def test_run_serves_health_and_metrics_and_stops_cleanly(sim, broker, daemon_config) -> None:
    path, config = daemon_config
    daemon = Daemon(path)
    try:
        port = daemon.wait_for("http_listening")["port"]
        base = f"http://127.0.0.1:{port}"
        daemon.wait_for("scan_finished", kind="full")
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        topic = topic_of(config, "acme")
        through = marked_through(daemon, broker.bootstrap, config, "acme")
        assert len(read_topic(broker.bootstrap, topic, through=through)) == 300

        rid = sim.ids("acme", "enrollments")[5]
        sim.update("acme", "enrollments", rid, {"start_date": "2040-01-01T00:00:00Z"})
        records = read_topic(broker.bootstrap, topic, expected=301)
        last = orjson.loads(records[-1].value) if records[-1].key == rid.encode() else None
        assert last is None or last["type"].endswith(".updated")
        assert sum(1 for r in records if r.key == rid.encode()) == 2

        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        for name in (
            'changefeed_scans_total{connector="acme",kind="full",model="enrollments",result="ok"}',
            "changefeed_scan_duration_seconds_bucket",
            'changefeed_items_seen_total{connector="acme",model="enrollments"}',
            'changefeed_events_published_total{connector="acme",model="enrollments",type="created"}',
            'changefeed_api_requests_total{connector="acme",status="200"}',
            "changefeed_api_rate_limit_remaining",
            'changefeed_watermark_lag_seconds{connector="acme",model="enrollments"}',
            "changefeed_last_successful_scan_timestamp_seconds",
        ):
            assert name in metrics, name
        assert sim.tokens["acme"] not in metrics and sim.api_key not in metrics
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(30)
    assert code == 0
    daemon.wait_for("stopped", clean=True, timeout=5)


@pytest.mark.sim(enrollments=3000)
def test_sigterm_mid_scan_commits_every_acknowledged_page(sim, broker, daemon_config) -> None:
    path, config = daemon_config
    sim.add_fault(delay_ms=50, count=100_000, connector="acme")  # a slow API: a long scan
    daemon = Daemon(path)
    daemon.wait_for("scan_started")
    store = open_store(config["state"]["path"])
    key = StreamKey("acme", "enrollments")
    wait_until(lambda: store.state(key).scan_pages >= 5, 60, "five committed pages")
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    daemon.wait_for("stopped", clean=True, timeout=5)
    state = store.state(key)
    store.close()
    assert state.in_progress and state.scan_pages >= 5
    # The daemon has stopped: what the topic holds now is all it will ever hold.
    published = read_topic(broker.bootstrap, topic_of(config, "acme"), expected=state.records)
    # Exactly the committed pages were published: nothing acknowledged is left uncommitted.
    assert len(published) == state.records == state.scan_pages * 100


def test_example_config_runs_against_simulator_and_broker(broker, tmp_path: Path) -> None:
    """The shipped example config, with only addresses and secrets given by environment."""
    tokens = {"acme": "tok_a", "globex": "tok_g", "initech": "tok_i"}
    with SimServer(connectors=tokens, enrollments=150, seed=5, rate_limit=0) as sim:
        env = {
            "CHANGEFEED_BINDBEE__BASE_URL": sim.base_url,
            "CHANGEFEED_BINDBEE__API_KEY": sim.api_key,
            "CHANGEFEED_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "CHANGEFEED_KAFKA__TOPIC_TEMPLATE": f"x{uuid.uuid4().hex[:8]}.{{model}}",
            "CHANGEFEED_STATE__PATH": str(tmp_path / "state.db"),
            "CHANGEFEED_HTTP__HOST": "127.0.0.1",
            "CHANGEFEED_HTTP__PORT": "0",
            "CHANGEFEED_LOG__FORMAT": "json",
            **{f"BINDBEE_TOKEN_{name.upper()}": token for name, token in tokens.items()},
        }
        daemon = Daemon(Path("config/example.yaml"), env=env)
        try:
            port = daemon.wait_for("http_listening")["port"]
            for connector in tokens:
                for model in ("enrollments", "users", "courses"):
                    daemon.wait_for("scan_finished", connector=connector, model=model)
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            assert 'changefeed_stream_up{connector="initech",model="courses"} 1.0' in metrics
            for token in tokens.values():
                assert token not in metrics
        finally:
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.proc.wait(30)
        assert code == 0
        daemon.wait_for("stopped", clean=True, timeout=5)
        assert not any(line.get("log_level") == "error" for line in daemon.lines)
