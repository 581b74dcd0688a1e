"""Sync-aware polling end to end: real ``lms-changefeed run`` processes, the simulator in
scheduled mode, tansu, SQLite. Webhooks (signed by the simulator and by the test),
SIGHUP reloads, and the metrics the ops port serves (and the webhook port does not)."""

from __future__ import annotations

import math
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson

from bindbee_sim import SimServer
from daemon.timestamps import normalize_time
from tests.harness import (
    PAGE,
    Daemon,
    base_config,
    free_port,
    metric_value,
    post_webhook,
    topic_of,
    wait_until,
    webhook_envelope,
    webhook_signature,
    write_config,
)
from tests.helpers import SECRET_API_KEY, SECRET_TOKEN
from tests.kafka_read import read_topic

WEBHOOK_SECRET = "whsec-s3cr3t-of-the-hook"
ENROLLMENTS = 250
PAGES = math.ceil(ENROLLMENTS / PAGE)
HINT_INTERVAL = 30.0  # webhook.hint_interval_seconds: one hint per connector per window
SAFETY_NET = 3600  # poll_interval_seconds of the sync-triggered model: never reached here


def sync_sim(webhook_port: int | None = None, **options: Any) -> SimServer:
    """The simulator in scheduled mode with recognisable secrets; with ``webhook_port`` it
    delivers signed webhooks to the daemon's receiver there."""
    webhook = (
        {
            "webhook_url": f"http://127.0.0.1:{webhook_port}/webhooks/bindbee",
            "webhook_secret": WEBHOOK_SECRET,
            "webhook_retry_window_seconds": 10,
        }
        if webhook_port is not None
        else {}
    )
    return SimServer(
        connectors={"acme": SECRET_TOKEN},
        enrollments=ENROLLMENTS,
        seed=21,
        api_key=SECRET_API_KEY,
        rate_limit=0,
        sync_mode="scheduled",
        sync_duration_seconds=0.2,
        **webhook,
        **options,
    )


def sync_config(
    sim: SimServer,
    broker: Any,
    tmp_path: Path,
    *,
    webhook_port: int | None,
    check_interval: float = 0.0,
) -> dict[str, Any]:
    """``trigger: sync`` for enrollments; the list is read only when a webhook hints
    (``check_interval`` 0) or on that interval."""
    config = base_config(
        sim, broker.bootstrap, tmp_path, trigger="sync", poll_interval_seconds=SAFETY_NET
    )
    config["bindbee"].update(
        sync_check_interval_seconds=check_interval, sync_check_min_gap_seconds=0
    )
    if webhook_port is not None:
        config["webhook"] = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": webhook_port,
            "hint_interval_seconds": HINT_INTERVAL,
        }
    return config


@contextmanager
def daemon_running(config: dict[str, Any], tmp_path: Path) -> Iterator[Daemon]:
    """``lms-changefeed run`` with the webhook secret in its environment; it must stop
    cleanly (exit 0) on SIGTERM, and nothing it prints may carry a secret."""
    daemon = Daemon(
        write_config(tmp_path, config), env={"CHANGEFEED_WEBHOOK__SECRET": WEBHOOK_SECRET}
    )
    try:
        yield daemon
    finally:
        code = daemon.stop()
    assert code == 0, daemon.lines[-15:]
    assert not daemon.tracebacks(), daemon.tracebacks()[:3]
    printed = "\n".join(
        [
            orjson.dumps({k: v for k, v in line.items() if k != "_t"}).decode()
            for line in daemon.lines
        ]
        + daemon.stdout
    )
    for secret in (WEBHOOK_SECRET, SECRET_TOKEN, SECRET_API_KEY):
        assert secret not in printed, f"a secret ({secret[:4]}...) reached the daemon's output"


def data_requests(sim: SimServer, connector: str = "acme") -> int:
    return sum(sim.stats().get(connector, {}).values())


def org_requests(sim: SimServer) -> int:
    """GET /connectors requests (the sync watcher's reads of the list)."""
    return sum(sim.stats().get("_org", {}).values())


def updated_events(config: dict[str, Any], broker: Any, expected: int) -> dict[str, str]:
    """subject -> start_date of the ``updated`` events on acme's topic."""
    records = read_topic(broker.bootstrap, topic_of(config, "acme"), expected=expected)
    events = [orjson.loads(r.value) for r in records if r.value is not None]
    assert len(events) == expected, len(events)
    return {
        e["subject"]: normalize_time(e["data"]["record"]["start_date"])
        for e in events
        if e["type"].endswith(".updated")
    }


def patch_records(sim: SimServer, count: int, year: int) -> dict[str, str]:
    """Stage a new start_date on ``count`` records; id -> the value the sync will publish."""
    changed = {}
    for n, rid in enumerate(sim.ids("acme", "enrollments")[:count]):
        value = f"{year}-0{n + 1}-01T00:00:00Z"
        sim.update("acme", "enrollments", rid, {"start_date": value})
        changed[rid] = normalize_time(value)
    assert sim.staged()["acme"] == count
    return changed


def test_the_simulators_signed_webhook_brings_the_syncs_changes(broker, tmp_path) -> None:
    port = free_port()
    with sync_sim(webhook_port=port) as sim:
        config = sync_config(sim, broker, tmp_path, webhook_port=port)
        with daemon_running(config, tmp_path) as daemon:
            first = daemon.wait_for("scan_finished", connector="acme")
            assert first["created"] == ENROLLMENTS
            daemon.wait_for("webhook_listening")
            assert data_requests(sim) == PAGES
            changed = patch_records(sim, 3, 2045)
            # Staged, not synced, and no sync check on a timer: nothing is read.
            assert data_requests(sim) == PAGES

            synced_at = time.monotonic()
            sim.sync("acme")
            assert updated_events(config, broker, ENROLLMENTS + 3) == changed
            connector_id = sim.connector("acme")["id"]
            hint = daemon.wait_for("webhook_hint", since=synced_at, connector_id=connector_id)
            assert hint["webhook_event"] == "connector_synced"
            daemon.wait_for("scan_finished", since=synced_at, connector="acme")
            # The sync's 3 hinted ids read by id first (full_scan_every_syncs 1), then its walk.
            assert data_requests(sim) == 2 * PAGES + 3
            delivered = wait_until(
                lambda: [
                    d
                    for d in sim.webhooks()
                    if d["event"] == "connector_synced" and d["outcome"] == "delivered"
                ],
                15,
                "the simulator's record of the delivery",
            )
            assert delivered[-1]["status"] == 200


def test_webhooks_are_verified_bounded_and_coalesced(broker, tmp_path) -> None:
    port = free_port()
    with sync_sim() as sim:  # no webhook URL: every delivery here is the test's own
        config = sync_config(sim, broker, tmp_path, webhook_port=port)
        with daemon_running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme")
            daemon.wait_for("webhook_listening")
            connector_id = sim.connector("acme")["id"]
            body = orjson.dumps(webhook_envelope(connector_id))
            orgs, data = org_requests(sim), data_requests(sim)

            # A wrong signature (another key), or none: 401, and the hint is never taken
            # (the receiver answers only after it decided, so nothing can follow).
            forged = post_webhook(port, body, webhook_signature("not-the-secret", body))
            assert forged.status_code == 401, forged.text
            assert forged.json()["outcome"] == "bad_signature"
            assert post_webhook(port, body, None).status_code == 401
            daemon.wait_for("webhook_bad_signature")
            assert (org_requests(sim), data_requests(sim)) == (orgs, data)

            # Bigger than webhook.max_body_bytes (1 MiB): refused before it is read. It may
            # have been a sync's ids: the stream walks now (one walk, no list read).
            big = b"{" + b" " * (1 << 20) + b"}"
            refused = time.monotonic()
            too_large = post_webhook(port, big, webhook_signature(WEBHOOK_SECRET, big))
            assert too_large.status_code == 413
            daemon.wait_for("scan_finished", since=refused, connector="acme")
            assert (org_requests(sim), data_requests(sim)) == (orgs, data + PAGES)
            data = data_requests(sim)

            # One sync, delivered 20 times (Bindbee retries, duplicates, a replay): one
            # hint, one read of the connectors list, one scan.
            changed = patch_records(sim, 2, 2046)
            sim.sync("acme")
            began = time.monotonic()
            answers = [
                post_webhook(port, body, webhook_signature(WEBHOOK_SECRET, body)) for _ in range(20)
            ]
            elapsed = time.monotonic() - began
            assert [a.status_code for a in answers] == [200] * 20
            outcomes = [a.json()["outcome"] for a in answers]
            assert 1 <= outcomes.count("accepted") <= 1 + int(elapsed // HINT_INTERVAL), outcomes
            assert set(outcomes) <= {"accepted", "coalesced"}

            finished = daemon.wait_for("scan_finished", since=began, connector="acme")
            assert finished["updated"] == 2
            assert updated_events(config, broker, ENROLLMENTS + 2) == changed
            windows = 1 + int((time.monotonic() - began) // HINT_INTERVAL)
            assert 1 <= org_requests(sim) - orgs <= windows
            assert data_requests(sim) == data + PAGES
            assert len(daemon.matching("scan_finished", since=began, connector="acme")) == 1


def test_sighup_applies_a_new_interval_and_refuses_an_invalid_file(sim, broker, tmp_path) -> None:
    config = base_config(sim, broker.bootstrap, tmp_path, poll_interval_seconds=30)
    path = write_config(tmp_path, config)
    daemon = Daemon(path)
    try:
        daemon.wait_for("scan_finished", connector="acme")
        assert len(daemon.matching("scan_finished")) == 1  # the next pass is 30 s away

        config["models"]["enrollments"]["poll_interval_seconds"] = 0.5
        write_config(tmp_path, config)
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = daemon.wait_for("config_reloaded", timeout=15)
        wait_until(
            lambda: len(daemon.matching("scan_finished", since=reloaded["_t"])) >= 3,
            30,
            "three passes on the new 0.5 s interval",
        )

        config["models"]["enrollments"]["poll_interval_seconds"] = -1
        write_config(tmp_path, config)
        daemon.proc.send_signal(signal.SIGHUP)
        refused = daemon.wait_for("config_reload_refused", timeout=15)
        assert "poll_interval_seconds" in refused["field"], refused
        # The old configuration (0.5 s) keeps running.
        wait_until(
            lambda: len(daemon.matching("scan_finished", since=refused["_t"])) >= 3,
            30,
            "passes after the refused reload",
        )
        assert daemon.proc.poll() is None
        assert len(daemon.matching("config_reloaded")) == 1
    finally:
        code = daemon.stop()
    assert code == 0, daemon.lines[-15:]
    assert not daemon.tracebacks(), daemon.tracebacks()[:3]


def test_metrics_on_the_ops_port_and_not_on_the_webhook_port(broker, tmp_path) -> None:
    port = free_port()
    with sync_sim() as sim:
        config = sync_config(sim, broker, tmp_path, webhook_port=port, check_interval=0.2)
        with daemon_running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme")
            daemon.wait_for("webhook_listening")
            body = orjson.dumps(webhook_envelope(sim.connector("acme")["id"]))
            answer = post_webhook(port, body, webhook_signature(WEBHOOK_SECRET, body))
            assert answer.json()["outcome"] == "accepted"

            def scraped() -> str | None:
                text = daemon.http("/metrics").text
                ok = metric_value(text, "changefeed_connector_status", connector="acme", state="ok")
                return text if ok == 1 else None

            text = wait_until(scraped, 15, "connector acme reported ok")
            assert (
                metric_value(text, "changefeed_connector_status", connector="acme", state="failed")
                == 0
            )
            assert (
                metric_value(text, "changefeed_sync_check_requests_total", outcome="ok") or 0
            ) > 0
            accepted = metric_value(text, "changefeed_webhook_deliveries_total", outcome="accepted")
            assert (accepted or 0) >= 1
            interval = metric_value(
                text,
                "changefeed_stream_interval_seconds",
                connector="acme",
                model="enrollments",
                trigger="sync",
            )
            assert interval == SAFETY_NET
            for secret in (WEBHOOK_SECRET, SECRET_TOKEN, SECRET_API_KEY):
                assert secret not in text

            # The webhook port may face the internet: it serves its one path, nothing else.
            for path in ("/metrics", "/healthz", "/readyz"):
                assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 404
            assert (
                httpx.get(f"http://127.0.0.1:{port}/webhooks/bindbee", timeout=10).status_code
                == 405
            )


def test_a_sighup_during_start_up_does_not_kill_the_daemon(broker, tmp_path) -> None:
    # An API that accepts connections and never answers: the watcher's first read of the
    # connectors list (which scheduler.start waits for) takes its full timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        fake = SimpleNamespace(
            base_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            api_key=SECRET_API_KEY,
            tokens={"acme": SECRET_TOKEN},
        )
        config = base_config(
            fake, broker.bootstrap, tmp_path, trigger="sync", poll_interval_seconds=SAFETY_NET
        )
        config["bindbee"]["sync_check_interval_seconds"] = 60
        # Start-up waits for that read at most 10 s; 1 s per attempt keeps the wait at the
        # read's four attempts (4 s or more), still long enough for the SIGHUP to land in it.
        config["bindbee"]["timeout_seconds"] = 1
        daemon = Daemon(write_config(tmp_path, config))
        try:
            daemon.wait_for("http_listening", timeout=30)
            assert not daemon.matching("scheduler_started")  # still starting
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_for("scheduler_started", timeout=60)
            assert daemon.proc.poll() is None
        finally:
            code = daemon.stop()
        assert code == 0, (code, daemon.lines[-10:])
