"""Faults, the API: 429/5xx/timeouts/malformed answers, changes behind the scan cursor, and a
revoked token (401). The invariant: a replayed topic equals the source's current data.

Real parts only: a tansu broker (a private one, ``own_broker``, wherever a test pauses or
stops it), the simulator over loopback, the daemon as a subprocess (`run` or `poll`) with its
SQLite file. Every scenario ends with ``invariant.check(...).assert_holds()``; figures
(redeliveries, recovery times, requests) are printed on one ``FIGURES`` line per test
(``pytest -s``). Shared drivers live in tests/harness.py and tests/invariant.py.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from bindbee_sim import SimServer
from tests.harness import (
    API_FAULTS,
    FAILURE_LINES,
    Daemon,
    base_config,
    each_at_once,
    figures,
    marked_through,
    metric_value,
    ok_requests,
    poll,
    scan_pages,
    stream_state,
    topic_of,
    wait_fresh_full_scan,
    wait_until,
    write_config,
)
from tests.helpers import new_enrollment
from tests.invariant import check, read_replay, source_records, unpublished_below
from tests.kafka_read import read_topic

# -- 4. API faults ---------------------------------------------------------------------------


def mutate(sim: SimServer, connector: str, rng: random.Random, n: int = 10) -> None:
    """Half updates, a third creates, the rest deletes."""
    ids = rng.sample(sim.ids(connector, "enrollments"), n)
    updates, creates = n // 2, n // 3
    for rid in ids[:updates]:
        day = rng.randrange(1, 28)
        sim.update(connector, "enrollments", rid, {"start_date": f"2032-03-{day:02d}T00:00:00Z"})
    for _ in range(creates):
        sim.create(connector, "enrollments", new_enrollment(sim, connector))
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
        dead_topic = topic_of(config, "acme", "deadletter")
        config["kafka"]["dead_letter_topic"] = dead_topic
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
        # Both topics read at once (each read as before, on its own thread).
        reads = each_at_once(
            ["acme", "globex"],
            lambda c: check(
                broker.bootstrap,
                topic_of(config, c),
                sim,
                c,
                through=marked_through(daemon, broker.bootstrap, config, c),
            ),
        )
        after, globex_after = reads["acme"], reads["globex"]
        after.assert_holds()
        source = source_records(sim, "acme", "enrollments")
        assert unpublished_below(state["watermark"], after, source) == []
        assert state["last_error"] is None
        globex_after.assert_holds()

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
    rejected = [line for line in daemon.lines if line.get("event") == "item_rejected"]
    if fault.get("malformed") == "item_without_id":
        # The item stayed bad for every try: dead-lettered once, the pass went on, and
        # its stored row (found by remote_id) counted as seen: the invariant above holds.
        assert not [line for line in acme if line["event"] == "scan_failed"], acme
        (line,) = rejected
        assert line["reason"] == "no_id" and line["record_id"] is not None, line
        letters = read_topic(broker.bootstrap, dead_topic, expected=1, quiet_seconds=1.0)
        assert len(letters) == 1
        letter = orjson.loads(letters[0].value)
        assert letter["subject"] == line["record_id"]
        assert "id" not in letter["data"]["item"] and letter["data"]["item"]["remote_id"]
    else:
        assert not rejected, rejected
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


# 15 pages: the request held back after 5 committed ones (with pages fetched ahead, one of
# pages 6 to 10) leaves at least five, the last one among them, to fetch after both changes.
@pytest.mark.sim(enrollments=1500, honor_modified_after=True)
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
    report = read_replay(
        broker.bootstrap, topic, through=marked_through(run, broker.bootstrap, config, "acme")
    )
    source = source_records(sim, "acme", "enrollments")
    # The scan published `ahead` as changed and `behind` as it was before.
    assert report.replica[ahead]["start_date"] == source[ahead]["start_date"]
    assert report.replica[behind]["start_date"] != source[behind]["start_date"]
    assert unpublished_below(watermark, report, source) == []
    # And the next (incremental) pass picks the change up.
    done = poll(path)
    assert done.wait_for("scan_finished")["kind"] == "incremental"
    through = marked_through(done, broker.bootstrap, config, "acme")
    check(broker.bootstrap, topic, sim, "acme", through=through).assert_holds()


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
    done = poll(path)
    assert done.wait_for("scan_finished")["kind"] == "incremental"
    through = marked_through(done, broker.bootstrap, config, "acme")
    check(broker.bootstrap, topic_of(config, "acme"), sim, "acme", through=through).assert_holds()


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
        through = marked_through(daemon, broker.bootstrap, config, "acme")
        topic = topic_of(config, "acme")
        check(broker.bootstrap, topic, sim, "acme", through=through).assert_holds()

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
