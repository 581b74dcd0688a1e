"""Faults, the process: SIGKILL mid-sync, and the source changing under a page Kafka got
but did not acknowledge. The invariant: a replayed topic equals the source's current data.

Real parts only: a tansu broker (a private one, ``own_broker``, wherever a test pauses or
stops it), the simulator over loopback, the daemon as a subprocess (`run` or `poll`) with its
SQLite file. Every scenario ends with ``invariant.check(...).assert_holds()``; figures
(redeliveries, recovery times, requests) are printed on one ``FIGURES`` line per test
(``pytest -s``). Shared drivers live in tests/harness.py and tests/invariant.py.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from daemon.source.pagination import AHEAD
from tests.harness import (
    PAGE,
    Daemon,
    base_config,
    figures,
    kill_while_publishing,
    marked_through,
    ok_requests,
    poll,
    scan_pages,
    topic_of,
    wait_until,
    write_config,
)
from tests.invariant import check, read_replay
from tests.kafka_read import read_topic

# -- 1. SIGKILL during the initial sync -------------------------------------------------------


@pytest.mark.sim(enrollments=10_000)
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
    wait_until(lambda: scan_pages(db) >= 20, 120, "20 pages")
    sim.add_fault(delay_ms=3000, count=1, connector="acme")
    wait_until(lambda: not sim.state.pending_faults(), 60, "the slow request")
    kills.append({"where": "waiting for the API", "page": scan_pages(db) + 1})
    run.kill()
    redelivered.append(redeliveries())

    # 2: while a page is on the wire to Kafka and not acknowledged.
    run = Daemon(path, "poll")
    started = run.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    wait_until(lambda: scan_pages(db) >= 50, 120, "50 pages")
    in_flight = set(kill_while_publishing(run, broker, sim, db))
    kills.append({"where": "publishing (broker frozen)", "page": scan_pages(db) + 1})
    redelivered.append(redeliveries())
    # What of that page the frozen broker appended once resumed: the producer may have
    # split the page over several produce requests, and only those already sent arrive.
    appended = sum(
        1
        for record in read_topic(broker.bootstrap, topic, quiet_seconds=1.0)
        if record.key is not None and record.key.decode() in in_flight
    )
    assert 0 < appended <= len(in_flight) <= PAGE, (appended, len(in_flight))

    # 3: at full speed, wherever the pass happens to be.
    run = Daemon(path, "poll")
    started = run.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    wait_until(lambda: scan_pages(db) >= 80, 120, "80 pages")
    run.kill()
    kills.append({"where": "anywhere", "page": scan_pages(db) + 1})
    redelivered.append(redeliveries())

    final = poll(path)
    started = final.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    finished = final.wait_for("scan_finished")
    assert finished["kind"] == "full"
    through = marked_through(final, broker.bootstrap, config, "acme")
    report = check(broker.bootstrap, topic, sim, "acme", through=through)
    report.assert_holds()
    redelivered.append(report.redeliveries)

    per_kill = [b - a for a, b in pairwise(redelivered)]
    assert all(n <= PAGE for n in per_kill), per_kill
    # Kill 2 happened with a page on the wire: the broker appended (some of) it, the restart
    # sent the whole page again from the outbox (same ids): exactly those are redelivered.
    assert per_kill[1] == appended, (per_kill, appended)
    # Every restart resumed from its checkpoint: 100 pages in all, plus at most the page in
    # flight and the pages fetched ahead at each kill (and the slow request, if it finished
    # after its client died).
    requests = ok_requests(sim)
    assert 100 <= requests <= 100 + (1 + AHEAD) * 3 + 1, requests
    figures(
        "sigkill_initial_sync",
        kills=kills,
        redeliveries_per_kill=per_kill,
        appended_of_page_in_flight=appended,
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
    full = poll(path, "--full")
    through = marked_through(full, broker.bootstrap, config, "acme")
    check(broker.bootstrap, topic_of(config, "acme"), sim, "acme", through=through).assert_holds()
