"""Hinted syncs end to end: the simulator in scheduled mode sends each sync's changed ids
(``connector_data_modified``) to a real ``lms-changefeed run``, which reads them by id
instead of walking every page; tansu, SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest

from tests.e2e.hinted_support import (
    SECRET,
    control_events,
    data_requests,
    delivered,
    deliveries_lost,
    hinted_config,
    hinted_sim,
    running,
    stage_changes,
)
from tests.harness import PAGE, cli, free_port, metric_value, topic_of, wait_until
from tests.invariant import check

RECORDS = 5000


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_hinted_sync_is_read_by_id_and_not_walked(broker, tmp_path, request, store) -> None:
    port = free_port()
    with hinted_sim(port, RECORDS) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        if store == "postgres":
            config["state"] = {"url": request.getfixturevalue("pg_schema")}
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            walked = data_requests(sim)
            assert walked == math.ceil(RECORDS / PAGE)
            touched = stage_changes(sim, updates=6, creates=2, deletes=2)
            sim.sync("acme")
            report = check(broker.bootstrap, topic, sim, "acme", expected=RECORDS + 10)
            report.assert_holds()
            wait_until(lambda: daemon.matching("hints_read"), 30, "the targeted read's log")
            # The hint-only passes are done once the stream is released; no walk follows.
            daemon.wait_for("sync_covered_by_hints", timeout=30)
            assert daemon.matching("hints_read")[0]["asked"] == 10
        assert data_requests(sim) - walked <= 12, sim.stats()
        assert len(daemon.matching("scan_started")) == 1, "a walk followed the hinted sync"
        markers = control_events(broker.bootstrap, config["kafka"]["control_topic"], "hints_read")
        assert len(markers) == 1
        counts = markers[0]["data"]["counts"]
        assert counts["asked"] == 10 and counts["requests"] <= 12
        assert (counts["created"], counts["updated"], counts["deleted"]) == (2, 6, 2)
        assert len(touched) == 10


def test_a_lost_hint_waits_for_the_third_sync_and_is_counted(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            # Sync 1: hinted, read by id.
            stage_changes(sim, updates=2, creates=0, deletes=0)
            sim.sync("acme")
            wait_until(lambda: delivered(sim) >= 1, 15, "the first hint")
            check(broker.bootstrap, topic, sim, "acme", expected=1002).assert_holds()
            # Sync 2: its deliveries are lost; its 2 changes wait for the next walk.
            lost = stage_changes(sim, updates=2, creates=0, deletes=0, offset=10)
            with deliveries_lost(sim):
                sim.sync("acme")
            daemon.wait_for("sync_counted", syncs=2, timeout=30)
            # Sync 3 (no changes of its own) is the third since the walk: walked.
            sim.sync("acme")
            finished = daemon.wait_for("scan_finished", since=daemon.started + 0.0, hint_missed=2,
                                       timeout=60)  # fmt: skip
            assert finished["updated"] == 2
            check(broker.bootstrap, topic, sim, "acme", expected=1004).assert_holds()
            metrics = daemon.http("/metrics").text
        missed = metric_value(metrics, "changefeed_hint_missed_total", connector="acme",
                              model="enrollments")  # fmt: skip
        assert missed == 2
        markers = control_events(
            broker.bootstrap, config["kafka"]["control_topic"], "scan_completed"
        )
        assert markers[-1]["data"]["hint_missed"] == 2
        assert len(lost) == 2
        # `status` shows the spacing and the misses (the config file `running` wrote).
        shown = cli("status", "--config", str(tmp_path / "config.yaml"),
                    env={"CHANGEFEED_WEBHOOK__SECRET": SECRET, "COLUMNS": "300"})  # fmt: skip
        # (The table may wrap the cell: its words, in order.)
        assert "every 3 syncs (0 since), missed 2" in shown.stdout, shown.stdout
        assert "(total 2)" in shown.stdout, shown.stdout
