"""SIGKILL during a steady full scan: the resume bound G and no event sent twice.

A steady scan commits pages that change nothing G at a time (``COMMIT_EVERY_PAGES``),
so a process killed during one walks at most G pages again (plus the pages the walker
had fetched ahead, ``AHEAD``). A few records changed on pages spread over the scan: their
events are committed at once with their page, so a kill sends them again only as the
outbox's identical redelivery (same event id, same bytes). Real parts: the daemon as a
subprocess (``poll --full``), the simulator, the session's tansu broker, a SQLite file.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from daemon.source.pagination import AHEAD
from daemon.stream.pages import COMMIT_EVERY_PAGES
from tests.harness import (
    PAGE,
    Daemon,
    base_config,
    figures,
    ok_requests,
    poll,
    scan_pages,
    stream_state,
    topic_of,
    wait_until,
    write_config,
)
from tests.invariant import check
from tests.kafka_read import read_topic

RECORDS = 6_000  # 60 pages
CHANGED_PAGES = (7, 31, 55)  # 1-based pages holding one changed record each


@pytest.mark.sim(enrollments=RECORDS)
def test_sigkill_during_a_steady_scan_walks_at_most_g_pages_again(
    sim, broker, tmp_path: Path
) -> None:
    config = base_config(sim, broker.bootstrap, tmp_path)
    # 20 pages a second: the 60-page scan takes ~3 s, long enough to be killed mid-way.
    config["bindbee"]["rate_limit"] = {"requests": 20, "per_seconds": 1}
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    topic = topic_of(config, "acme")
    poll(path)  # the initial sync
    ids = sim.ids("acme", "enrollments")
    for page in CHANGED_PAGES:
        sim.update("acme", "enrollments", ids[(page - 1) * PAGE + 3], {"end_date": None})

    before = ok_requests(sim, "acme")
    run = Daemon(path, "poll", "--full")
    wait_until(
        lambda: (stream_state(db, "acme") or {}).get("scan_number") == 2 and scan_pages(db) >= 12,
        120,
        "the steady scan past page 12",
    )
    run.kill()
    committed = scan_pages(db)  # as the killed process left it
    fetched = ok_requests(sim, "acme") - before
    assert 0 < committed < RECORDS // PAGE, committed
    # The bound: pages the killed process fetched but had not committed.
    assert fetched - committed <= COMMIT_EVERY_PAGES + AHEAD, (fetched, committed)

    final = poll(path)
    started = final.wait_for("scan_started")
    assert started["resumed"] and started["cursor_set"], started
    finished = final.wait_for("scan_finished")
    assert finished["pages"] == RECORDS // PAGE - committed, (finished, committed)
    report = check(broker.bootstrap, topic, sim, "acme")
    report.assert_holds()
    figures(
        "sigkill_steady_scan",
        committed_at_kill=committed,
        fetched_by_killed=fetched,
        fetched_again=fetched - committed,
        redeliveries=report.redeliveries,
    )

    # Every event id stands for one event: a repeat is the same bytes (a redelivery).
    values: dict[str, set[bytes]] = defaultdict(set)
    for record in read_topic(broker.bootstrap, topic, quiet_seconds=1.0):
        if record.value is not None:
            values[orjson.loads(record.value)["id"]].add(record.value)
    assert all(len(v) == 1 for v in values.values())
    assert len(values) == RECORDS + len(CHANGED_PAGES)  # created + the 3 updates
