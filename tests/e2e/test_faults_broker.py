"""Faults, the broker: frozen mid-scan, and absent at start-up. The invariant: a replayed
topic equals the source's current data.

Real parts only: a tansu broker (a private one, ``own_broker``, wherever a test pauses or
stops it), the simulator over loopback, the daemon as a subprocess (`run` or `poll`) with its
SQLite file. Every scenario ends with ``invariant.check(...).assert_holds()``; figures
(redeliveries, recovery times, requests) are printed on one ``FIGURES`` line per test
(``pytest -s``). Shared drivers live in tests/harness.py and tests/invariant.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devtools.tansu import TansuBroker
from tests.harness import (
    PAGE,
    Daemon,
    base_config,
    figures,
    free_port,
    marked_through,
    scan_pages,
    stream_state,
    topic_of,
    unread_bytes,
    wait_until,
    write_config,
)
from tests.invariant import check

# -- 2. the broker freezes mid-scan --------------------------------------------------------------

# Long enough for two failed runs while frozen: the first ~4 s in (delivery_timeout_ms),
# its retry 2 s later failing ~8 s in (a producer cannot bootstrap within 2 s), with the
# first back-off capped at the poll interval (4 s -> 3 s); the next try is after the resume.
PAUSE_SECONDS = 11.0
INTERVAL = 3  # poll_interval_seconds: the cap on retries


@pytest.mark.sim(enrollments=1500)
def test_broker_frozen_mid_scan_then_back(sim, own_broker, tmp_path: Path) -> None:
    broker = own_broker
    config = base_config(sim, broker.bootstrap, tmp_path, poll_interval_seconds=INTERVAL)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    daemon = Daemon(path, "run")
    try:
        wait_until(lambda: scan_pages(db) >= 3, 60, "3 pages")
        # Freeze the broker while a page request is held back, so that page is on the wire.
        sim.add_fault(delay_ms=1500, count=1, connector="acme")
        wait_until(lambda: not sim.state.pending_faults(), 60, "the held-back page request")
        broker.pause()
        paused = time.monotonic()
        try:
            wait_until(lambda: unread_bytes(broker.port) > 0, 30, "a produce request")
            # That page is committed, its events in the outbox; nothing may follow it.
            frozen_at = stream_state(db, "acme")
            assert frozen_at is not None and frozen_at["outbox"] > 0
            daemon.wait_for("scan_failed", timeout=30, since=paused)
            assert daemon.http("/healthz").status_code == 200
            assert daemon.http("/readyz").status_code == 503
            # For the rest of the pause: no commit, and the daemon stays up.
            while time.monotonic() - paused < PAUSE_SECONDS:
                now = stream_state(db, "acme")
                assert now is not None
                assert (now["scan_pages"], now["records"]) == (
                    frozen_at["scan_pages"],
                    frozen_at["records"],
                ), "committed while Kafka was frozen"
                assert daemon.proc.poll() is None
                time.sleep(0.1)  # sampling interval of the watch above
        finally:
            broker.resume()
        resumed = time.monotonic()
        failures_while_paused = daemon.matching("scan_failed", since=paused)
        wait_until(
            lambda: scan_pages(db) > frozen_at["scan_pages"], 60, "a commit after the resume"
        )
        first_commit = time.monotonic() - resumed
        finished = daemon.wait_for("scan_finished", timeout=120, since=resumed)
        recovered = finished["_t"] - resumed
    finally:
        assert daemon.stop() == 0
    # The sink threw the failed producer away; the next run built a new one.
    assert daemon.matching("kafka_producer_created", since=resumed)
    assert daemon.matching("kafka_publish_failed", since=paused)
    # At most the attempt in flight at the resume failed after it.
    assert len(daemon.matching("scan_failed", since=resumed + 0.01)) <= 1
    for line in failures_while_paused:
        assert line["retry_in_s"] <= INTERVAL, line
    # One warning for the outage; the retries of the same failure are INFO lines.
    assert [line["level"] for line in failures_while_paused][:1] == ["warning"]
    assert all(line["level"] == "info" for line in failures_while_paused[1:])
    assert daemon.matching("stream_recovered", since=resumed)
    assert not daemon.tracebacks()
    # Through the last scan the daemon completed (its scan_completed marker).
    through = marked_through(daemon, broker.bootstrap, config, "acme")
    report = check(broker.bootstrap, topic_of(config, "acme"), sim, "acme", through=through)
    report.assert_holds()
    assert report.redeliveries <= PAGE
    figures(
        "broker_frozen",
        pause_s=PAUSE_SECONDS,
        failed_runs_while_frozen=len(failures_while_paused),
        producers_created=len(daemon.matching("kafka_producer_created")),
        first_commit_after_resume_s=round(first_commit, 2),
        scan_finished_after_resume_s=round(recovered, 2),
        redeliveries=report.redeliveries,
    )


@pytest.mark.sim(enrollments=600)
def test_sigterm_while_kafka_is_frozen_exits_at_once_and_loses_nothing(
    sim, own_broker, tmp_path: Path
) -> None:
    config = base_config(sim, own_broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    daemon = Daemon(path, "run")
    try:
        daemon.wait_for("scan_finished", timeout=60)
        own_broker.pause()
        try:
            for rid in sim.ids("acme", "enrollments")[:5]:
                sim.update("acme", "enrollments", rid, {"start_date": "2045-01-01T00:00:00Z"})
            # The next pass commits the changed page with its events, then cannot send them.
            wait_until(
                lambda: (stream_state(db, "acme") or {}).get("outbox", 0) > 0,
                30,
                "a committed page waiting for Kafka",
            )
            signalled = time.monotonic()
            code = daemon.stop(timeout=20)
            exit_s = time.monotonic() - signalled
        finally:
            own_broker.resume()
    finally:
        daemon.stop()
    assert code == 0, daemon.lines[-10:]
    assert not daemon.tracebacks()
    assert (stream_state(db, "acme") or {}).get("outbox", 0) > 0  # kept for the restart
    again = Daemon(path, "run")
    try:
        again.wait_for("outbox_published", timeout=60)
        again.wait_for("scan_finished", timeout=60)
    finally:
        assert again.stop() == 0
    through = marked_through(again, own_broker.bootstrap, config, "acme")
    topic = topic_of(config, "acme")
    check(own_broker.bootstrap, topic, sim, "acme", through=through).assert_holds()
    figures("sigterm_while_kafka_frozen", exit_s=round(exit_s, 2))


# -- 3. no broker at start-up ----------------------------------------------------------------


@pytest.mark.sim(enrollments=500)
def test_no_broker_at_start_then_it_appears(sim, tmp_path: Path) -> None:
    interval = 2  # the second retry is capped at it (4 s back-off otherwise)
    late = TansuBroker(port=free_port())
    config = base_config(sim, late.bootstrap, tmp_path, poll_interval_seconds=interval)
    path = write_config(tmp_path, config)
    try:
        daemon = Daemon(path, "run")
        try:
            failed = daemon.wait_for("scan_failed", timeout=60)
            assert late.bootstrap in failed["error"] and "SinkError" in failed["error"], failed
            ready = daemon.http("/readyz")
            assert ready.status_code == 503, ready.text
            # The Kafka check's own 5 s timeout usually beats the probe's 6 s one.
            detail = ready.json()["detail"]
            assert late.bootstrap in detail or "did not answer" in detail, detail
            assert daemon.http("/healthz").status_code == 200
            daemon.wait_for("scan_failed", timeout=60, failures=2)
            late.start()
            up = time.monotonic()
            finished = daemon.wait_for("scan_finished", timeout=60, since=up)
            published = finished["_t"] - up
            wait_until(lambda: daemon.http("/readyz").status_code == 200, 30, "ready")
        finally:
            assert daemon.stop() == 0
        through = marked_through(daemon, late.bootstrap, config, "acme")
        report = check(late.bootstrap, topic_of(config, "acme"), sim, "acme", through=through)
    finally:
        late.stop()
    failures = daemon.matching("scan_failed")
    # Retries come at most one poll interval apart, so the broker is found within one.
    assert failures and all(line["retry_in_s"] <= interval for line in failures), failures
    # The first run that started after the broker appeared published (at most the run in
    # flight at that moment failed).
    assert len(daemon.matching("scan_failed", since=up)) <= 1
    assert not daemon.tracebacks()
    report.assert_holds()
    assert report.events == 500
    figures(
        "no_broker_at_start",
        failed_runs=len(failures),
        retry_delays_s=[line["retry_in_s"] for line in failures],
        poll_interval_s=interval,
        published_after_broker_up_s=round(published, 2),
    )
