"""Fault injection around one invariant: a replayed topic equals the source's current data.

Real parts only: a tansu broker (a private one wherever a test pauses or stops it), the
simulator over loopback, the daemon as a subprocess (`run` or `poll`) with its SQLite file.
Every scenario ends with ``invariant.check(...).assert_holds()``; figures (redeliveries,
recovery times, requests) are printed on one ``FIGURES`` line per test (``pytest -s``).
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from bindbee_sim import SimServer
from bindbee_sim.ids import decode_cursor
from daemon.dev.tansu import TansuBroker
from tests.harness import (
    API_FAULTS,
    FAILURE_LINES,
    Daemon,
    base_config,
    figures,
    free_port,
    metric_value,
    poll,
    scan_pages,
    stream_state,
    topic_of,
    unread_bytes,
    wait_fresh_full_scan,
    wait_until,
    write_config,
)
from tests.invariant import check, read_replay, source_records, unpublished_below

PAGE = 100


@pytest.fixture
def own_broker() -> Iterator[TansuBroker]:
    """A broker this test may pause, stop or start (never the session's)."""
    with TansuBroker() as started:
        yield started


def ok_requests(sim: SimServer, connector: str = "acme") -> int:
    return sim.stats().get(connector, {}).get("200", 0)


def kill_while_publishing(
    daemon: Daemon, broker: TansuBroker, sim: SimServer, db: Path, connector: str = "acme"
) -> list[str]:
    """SIGKILL the daemon while one page's events are sent and not yet acknowledged.

    The next page request is held back by the simulator, the broker is frozen meanwhile,
    and the kill comes once the page's produce request sits unread in the broker's socket
    (call it after the process published a page: its first publish creates the producer,
    whose bootstrap request would be what sits there).
    When the broker resumes it appends that page. The page was committed first, with its
    events in the outbox, so the store knows what Kafka may have. Returns the page's ids.
    """
    sim.add_fault(delay_ms=1500, count=1, connector=connector)
    wait_until(lambda: not sim.state.pending_faults(), 60, "the held-back page request")
    state = stream_state(db, connector)
    assert state is not None
    cursor = state["scan_cursor"]
    after = decode_cursor(cursor) if cursor else ""
    in_flight = [rid for rid in sim.ids(connector, "enrollments") if rid > after][:PAGE]
    broker.pause()
    try:
        wait_until(lambda: unread_bytes(broker.port) > 0, 30, "the page's produce request")
        daemon.kill()
    finally:
        broker.resume()
    after_kill = stream_state(db, connector)
    assert after_kill is not None
    assert after_kill["scan_cursor"] != cursor, "the page in flight was not committed first"
    assert after_kill["outbox"] > 0, "the unacknowledged page is not in the outbox"
    return in_flight


# -- 1. SIGKILL during the initial sync -------------------------------------------------------


@pytest.mark.sim(enrollments=20_000)
def test_sigkill_during_initial_sync_at_three_points(sim, own_broker, tmp_path: Path) -> None:
    broker = own_broker
    config = base_config(sim, broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    topic = topic_of(config, "acme")
    kills: list[dict[str, object]] = []
    redelivered: list[int] = []

    def redeliveries() -> int:
        return read_replay(broker.bootstrap, topic, quiet_seconds=1.0).redeliveries

    # 1: while the daemon waits for a slow API answer.
    run = Daemon(path, "poll")
    wait_until(lambda: scan_pages(db) >= 40, 120, "40 pages")
    sim.add_fault(delay_ms=3000, count=1, connector="acme")
    wait_until(lambda: not sim.state.pending_faults(), 60, "the slow request")
    kills.append({"where": "waiting for the API", "page": scan_pages(db) + 1})
    run.kill()
    redelivered.append(redeliveries())

    # 2: while a page is on the wire to Kafka and not acknowledged.
    run = Daemon(path, "poll")
    started = run.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    wait_until(lambda: scan_pages(db) >= 100, 120, "100 pages")
    kill_while_publishing(run, broker, sim, db)
    kills.append({"where": "publishing (broker frozen)", "page": scan_pages(db) + 1})
    redelivered.append(redeliveries())

    # 3: at full speed, wherever the pass happens to be.
    run = Daemon(path, "poll")
    started = run.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    wait_until(lambda: scan_pages(db) >= 160, 120, "160 pages")
    run.kill()
    kills.append({"where": "anywhere", "page": scan_pages(db) + 1})
    redelivered.append(redeliveries())

    final = poll(path)
    started = final.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    finished = final.wait_for("scan_finished")
    assert finished["kind"] == "full"
    report = check(broker.bootstrap, topic, sim, "acme")
    report.assert_holds()
    redelivered.append(report.redeliveries)

    per_kill = [b - a for a, b in pairwise(redelivered)]
    assert all(n <= PAGE for n in per_kill), per_kill
    # Kill 2 happened with a page on the wire: the broker appended it, the restart sent it
    # again (same ids).
    assert per_kill[1] == PAGE, per_kill
    # Every restart resumed from its checkpoint: 200 pages in all, plus at most the page in
    # flight and the page fetched ahead at each kill (and the slow request, if it finished
    # after its client died).
    requests = ok_requests(sim)
    assert 200 <= requests <= 200 + 2 * 3 + 1, requests
    figures(
        "sigkill_initial_sync",
        kills=kills,
        redeliveries_per_kill=per_kill,
        events=report.events,
        api_pages_served=requests,
        final_run_pages=finished["pages"],
    )


# -- the source changes under a page Kafka got but did not acknowledge (fixed by the outbox) --


@pytest.mark.parametrize(
    ("events_in_flight", "change"),
    [
        ("created", "delete"),  # phantom: the topic keeps a record the source dropped
        ("created", "modified_at_bump"),  # a second `created` under a new event id
        ("updated", "revert"),  # the topic keeps the reverted-away content
        ("updated", "modified_at_bump"),  # an `updated` that changes nothing, new event id
    ],
)
@pytest.mark.sim(enrollments=1000)
def test_source_change_under_an_unacknowledged_page(
    sim, own_broker, tmp_path: Path, events_in_flight: str, change: str
) -> None:
    broker = own_broker
    config = base_config(sim, broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    before = {r["id"]: r for r in sim.records("acme", "enrollments")}
    if events_in_flight == "updated":
        poll(path)
        for rid in before:
            sim.update("acme", "enrollments", rid, {"start_date": "2031-01-01T00:00:00Z"})
    run = Daemon(path, "poll", "--full")
    # After one page, so the producer exists and the frozen request is a produce request.
    wait_until(lambda: scan_pages(db) >= 1, 60, "a first page")
    victim = kill_while_publishing(run, broker, sim, db)[0]
    if change == "delete":
        sim.delete("acme", "enrollments", victim)
    elif change == "revert":
        sim.update("acme", "enrollments", victim, {"start_date": before[victim]["start_date"]})
    else:
        sim.update("acme", "enrollments", victim, {})
    poll(path)
    poll(path, "--full")
    check(broker.bootstrap, topic_of(config, "acme"), sim, "acme").assert_holds()


# -- 2. the broker freezes mid-scan --------------------------------------------------------------

PAUSE_SECONDS = 20.0


@pytest.mark.sim(enrollments=3000)
def test_broker_frozen_mid_scan_then_back(sim, own_broker, tmp_path: Path) -> None:
    broker = own_broker
    config = base_config(sim, broker.bootstrap, tmp_path, poll_interval_seconds=5)
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
        assert line["retry_in_s"] <= 5, line
    assert not daemon.tracebacks()
    report = check(broker.bootstrap, topic_of(config, "acme"), sim, "acme")
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


# -- 3. no broker at start-up ----------------------------------------------------------------


@pytest.mark.sim(enrollments=500)
def test_no_broker_at_start_then_it_appears(sim, tmp_path: Path) -> None:
    interval = 3
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
        report = check(late.bootstrap, topic_of(config, "acme"), sim, "acme")
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


# -- 4. API faults ---------------------------------------------------------------------------


def mutate(sim: SimServer, connector: str, rng: random.Random, n: int = 10) -> None:
    """Half updates, a third creates, the rest deletes."""
    ids = rng.sample(sim.ids(connector, "enrollments"), n)
    updates, creates = n // 2, n // 3
    for rid in ids[:updates]:
        day = rng.randrange(1, 28)
        sim.update(connector, "enrollments", rid, {"start_date": f"2032-03-{day:02d}T00:00:00Z"})
    for _ in range(creates):
        sim.create(connector, "enrollments", {"user": None, "course": None})
    for rid in ids[updates + creates :]:
        sim.delete(connector, "enrollments", rid)


@pytest.mark.parametrize("name", list(API_FAULTS))
def test_api_fault_loses_nothing_and_spares_other_connectors(
    broker, tmp_path: Path, name: str
) -> None:
    fault, failures = API_FAULTS[name]
    rng = random.Random(name)
    tokens = {"acme": "tok_a", "globex": "tok_g"}
    with SimServer(
        connectors=tokens, enrollments=150, seed=11, rate_limit=0, honor_modified_after=True
    ) as sim:
        config = base_config(
            sim, broker.bootstrap, tmp_path, ("acme", "globex"), full_scan_interval_seconds=2
        )
        config["bindbee"]["timeout_seconds"] = 1
        path = write_config(tmp_path, config)
        db = tmp_path / "state.db"
        acme_topic = topic_of(config, "acme")
        daemon = Daemon(path, "run")
        try:
            for connector in tokens:
                daemon.wait_for("scan_finished", connector=connector)
            armed = time.monotonic()
            requests_before = ok_requests(sim)
            sim.add_fault(**fault, connector="acme")
            mutate(sim, "acme", rng)
            mutate(sim, "globex", rng)
            daemon.wait_for("api_retry|api_rate_limited|scan_failed", since=armed)
            # While the fault holds, the watermark has not passed anything unpublished.
            watermark = stream_state(db, "acme")["watermark"]
            during = read_replay(broker.bootstrap, acme_topic, expected=150, quiet_seconds=1.0)
            source = source_records(sim, "acme", "enrollments")
            assert unpublished_below(watermark, during, source) == []
            wait_until(lambda: not sim.state.pending_faults(), 60, "the fault to be used up")
            cleared = time.monotonic()
            recovered = wait_fresh_full_scan(daemon, "acme", cleared)
            wait_fresh_full_scan(daemon, "globex", cleared)
            state = stream_state(db, "acme")
        finally:
            assert daemon.stop() == 0
        after = check(broker.bootstrap, acme_topic, sim, "acme", expected=150 + 10)
        after.assert_holds()
        source = source_records(sim, "acme", "enrollments")
        assert unpublished_below(state["watermark"], after, source) == []
        assert state["last_error"] is None
        check(
            broker.bootstrap, topic_of(config, "globex"), sim, "globex", expected=160
        ).assert_holds()

    lines = [
        line for line in daemon.lines if line.get("event") in FAILURE_LINES and line["_t"] >= armed
    ]
    acme = [line for line in lines if line.get("connector") == "acme"]
    # One clear line per failure: what failed, where, and nothing else.
    assert len(acme) == failures, acme
    for line in acme:
        text = str(line.get("reason") or line.get("error") or line.get("where"))
        assert "acme/enrollments" in text, line
    assert not [line for line in lines if line.get("connector") != "acme"]
    assert not daemon.tracebacks()
    globex_scans = daemon.matching("scan_finished", since=armed, connector="globex")
    window = cleared - armed
    if window >= 3:
        assert [s for s in globex_scans if s["_t"] <= cleared], "globex stalled meanwhile"
    figures(
        f"api_fault[{name}]",
        failure_lines=len(acme),
        fault_window_s=round(window, 2),
        recovered_after_s=round(recovered["_t"] - cleared, 2),
        globex_scans_meanwhile=len([s for s in globex_scans if s["_t"] <= cleared]),
        acme_requests=ok_requests(sim) - requests_before,
        redeliveries=after.redeliveries,
    )


@pytest.mark.sim(enrollments=3000, honor_modified_after=True)
def test_watermark_does_not_pass_a_change_behind_the_scan_cursor(sim, broker, tmp_path) -> None:
    """A record changed behind a running scan's cursor is not skipped by the next pass."""
    config = base_config(sim, broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    ids = sim.ids("acme", "enrollments")
    behind, ahead = ids[0], ids[-1]
    run = Daemon(path, "poll")
    wait_until(lambda: scan_pages(db) >= 5, 60, "5 pages")
    sim.add_fault(delay_ms=300, count=1, connector="acme")
    wait_until(lambda: not sim.state.pending_faults(), 60, "the held-back page request")
    # Both change while page 6 is being fetched: one on page 1, one on the last page.
    sim.update("acme", "enrollments", behind, {"start_date": "2033-01-01T00:00:00Z"})
    sim.update("acme", "enrollments", ahead, {"start_date": "2033-02-02T00:00:00Z"})
    assert run.wait() == 0
    watermark = stream_state(db, "acme")["watermark"]
    topic = topic_of(config, "acme")
    report = read_replay(broker.bootstrap, topic)
    source = source_records(sim, "acme", "enrollments")
    # The scan published `ahead` as changed and `behind` as it was before.
    assert report.replica[ahead]["start_date"] == source[ahead]["start_date"]
    assert report.replica[behind]["start_date"] != source[behind]["start_date"]
    assert unpublished_below(watermark, report, source) == []
    # And the next (incremental) pass picks the change up.
    done = poll(path)
    assert done.wait_for("scan_finished")["kind"] == "incremental"
    check(broker.bootstrap, topic, sim, "acme").assert_holds()


@pytest.mark.sim(enrollments=50, honor_modified_after=True)
def test_a_record_dated_in_the_future_does_not_blind_later_passes(sim, broker, tmp_path) -> None:
    config = base_config(sim, broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    poll(path)
    first, second = sim.ids("acme", "enrollments")[:2]
    sim.update(
        "acme",
        "enrollments",
        first,
        {"start_date": "2034-01-01T00:00:00Z", "modified_at": "2035-01-01T00:00:00Z"},
    )
    poll(path)
    assert stream_state(tmp_path / "state.db", "acme")["watermark"] < "2035"
    sim.update("acme", "enrollments", second, {"start_date": "2034-02-02T00:00:00Z"})
    assert poll(path).wait_for("scan_finished")["kind"] == "incremental"
    check(broker.bootstrap, topic_of(config, "acme"), sim, "acme").assert_holds()


# -- 5. one connector's token revoked ----------------------------------------------------------


def test_revoked_token_backs_off_that_stream_only(broker, tmp_path: Path) -> None:
    tokens = {"acme": "tok_a", "globex": "tok_g"}
    with SimServer(connectors=tokens, enrollments=200, seed=5, rate_limit=0) as sim:
        config = base_config(
            sim, broker.bootstrap, tmp_path, ("acme", "globex"), full_scan_interval_seconds=2
        )
        config["scheduler"]["fatal_backoff_seconds"] = 600
        path = write_config(tmp_path, config)
        daemon = Daemon(path, "run")
        try:
            for connector in tokens:
                daemon.wait_for("scan_finished", connector=connector)
            # A stand-in for a revoked token: every globex request answers 401.
            sim.add_fault(status=401, count=100_000, connector="globex")
            revoked = time.monotonic()
            rng = random.Random(5)
            mutate(sim, "acme", rng)
            mutate(sim, "globex", rng)
            failed = daemon.wait_for("scan_failed", since=revoked, connector="globex")
            # acme keeps flowing: three more passes, the last a fresh full one (deletes too).
            for _ in range(3):
                daemon.wait_for("scan_finished", since=time.monotonic(), connector="acme")
            wait_fresh_full_scan(daemon, "acme", failed["_t"])
            metrics = daemon.http("/metrics").text
            status = subprocess.run(
                [sys.executable, "-m", "daemon", "status", "--config", str(path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            refused = sim.stats()["globex"].get("401", 0)
        finally:
            assert daemon.stop() == 0
        check(broker.bootstrap, topic_of(config, "acme"), sim, "acme").assert_holds()

    assert "AuthError" in failed["error"] and "401" in failed["error"], failed
    assert failed["retry_in_s"] == 600
    assert refused == 1  # backed off: no second try meanwhile
    assert len(daemon.matching("scan_failed", connector="globex")) == 1
    assert not daemon.matching("scan_failed", connector="acme")
    up = {c: metric_value(metrics, "changefeed_stream_up", connector=c) for c in tokens}
    assert up == {"acme": 1.0, "globex": 0.0}, up
    assert status.returncode == 1, status.stdout
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if "/enrollments" in line}
    assert "AuthError" in rows["globex/enrollments"] and "401" in rows["globex/enrollments"]
    assert "AuthError" not in rows["acme/enrollments"]
    assert tokens["globex"] not in status.stdout + str(daemon.lines) + metrics
    figures(
        "revoked_token",
        globex_requests_refused=refused,
        backoff_s=failed["retry_in_s"],
        acme_passes_meanwhile=len(
            daemon.matching("scan_finished", since=failed["_t"], connector="acme")
        ),
    )


# -- 6. the state store cannot be written ------------------------------------------------------


def _immutable(paths: list[Path], on: bool) -> None:
    """chattr +i/-i: even root cannot write the files, also through open descriptors."""
    for path in paths:
        if on or path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, timeout=10)


@pytest.fixture
def can_make_immutable(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    try:
        _immutable([probe], True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available here (needs root on ext4/xfs/btrfs)")
    _immutable([probe], False)


@pytest.mark.parametrize("how", ["locked", "read_only"])
@pytest.mark.sim(enrollments=3000)
def test_unwritable_state_store_then_recovery(
    sim, broker, tmp_path: Path, how: str, request: pytest.FixtureRequest
) -> None:
    if how == "read_only":
        request.getfixturevalue("can_make_immutable")
    config = base_config(sim, broker.bootstrap, tmp_path)
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    files = [db, db.with_name("state.db-wal")]  # never -shm: it is mmapped (SIGBUS)
    sim.add_fault(delay_ms=40, count=100_000, connector="acme")  # a scan of ~2 s
    daemon = Daemon(path, "run")
    lock = None
    try:
        wait_until(lambda: scan_pages(db) >= 5, 60, "5 pages")
        broken = time.monotonic()
        if how == "locked":
            lock = sqlite3.connect(db, isolation_level=None, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")
        else:
            _immutable(files, True)
        try:
            stuck_at = scan_pages(db)
            failed = daemon.wait_for("scan_failed", timeout=60, since=broken)
            stuck = stream_state(db, "acme")
            assert daemon.proc.poll() is None
            if how == "read_only":
                # A restart while the file is unwritable refuses with one clear line.
                refused = subprocess.run(
                    [sys.executable, "-m", "daemon", "poll", "--config", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
        finally:
            if lock is not None:
                lock.execute("ROLLBACK")
                lock.close()
            else:
                _immutable(files, False)
        fixed = time.monotonic()
        finished = daemon.wait_for("scan_finished", timeout=120, since=fixed)
    finally:
        assert daemon.stop() == 0
        if lock is None and how == "read_only":
            _immutable(files, False)
    assert "StateStoreError" in failed["error"] and str(db) in failed["error"], failed
    assert stuck is not None and stuck["scan_pages"] >= stuck_at  # nothing committed undone
    if how == "read_only":
        assert refused.returncode == 1, refused
        assert f"acme/enrollments: FAILED: state store {db}" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert not daemon.tracebacks()
    resumed = daemon.matching("scan_started", since=fixed)
    assert resumed and resumed[0]["resumed"], resumed
    report = check(broker.bootstrap, topic_of(config, "acme"), sim, "acme")
    report.assert_holds()
    # A page is committed (with its events in the outbox) before it is published, so a
    # failed write publishes nothing. Only a failure to clear the outbox after Kafka acked
    # sends that page again, on the next pass.
    failed_clears = [
        line for line in daemon.matching("scan_failed") if "clear outbox failed" in line["error"]
    ]
    if how == "read_only" and "clear outbox failed" in refused.stderr:
        failed_clears.append({})
    assert report.redeliveries <= PAGE * len(failed_clears), (report.redeliveries, failed_clears)
    figures(
        f"state_store[{how}]",
        failed_passes=len(daemon.matching("scan_failed")),
        failed_outbox_clears=len(failed_clears),
        error=failed["error"].rsplit(": ", 1)[-1],
        recovered_after_s=round(finished["_t"] - fixed, 2),
        redeliveries=report.redeliveries,
    )
