"""Hinted syncs at their edges: replayed deliveries, a hint dearer than a walk, ``auto``
spacing, and the grace a walk gives its sync's ids (``full_scan_every_syncs: 1``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bindbee_sim import SimServer
from daemon.models import StreamKey
from daemon.state import open_store
from daemon.timestamps import normalize_time
from tests.e2e.hinted_support import (
    control_events,
    data_requests,
    delivered,
    deliveries_lost,
    hinted_config,
    hinted_sim,
    ids_delivery,
    running,
    stage_changes,
)
from tests.harness import (
    free_port,
    post_webhook,
    topic_of,
    wait_until,
)
from tests.invariant import check

KEY = StreamKey("acme", "enrollments")


def handled(sim: SimServer, tmp_path: Path) -> None:
    """Wait until the connector's last sync is counted (walked or covered by its reads):
    syncs closer together than a pass would count as one, as Bindbee's list shows only
    the last (real syncs are a day apart)."""
    last = normalize_time(sim.connector("acme")["last_sync_start_time"])
    with open_store(tmp_path / "state.db") as store:
        wait_until(lambda: store.state(KEY).sync_bookmark == last, 60, "the sync handled")


def spacing(tmp_path: Path) -> tuple[int, int]:
    """(walk spacing, syncs since the last walk) as the store has them."""
    with open_store(tmp_path / "state.db") as store:
        walk = store.walk_state(KEY)
    return walk.spacing, walk.syncs


def test_a_delivery_replayed_ten_times_reads_each_id_once(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            touched = sorted(stage_changes(sim, updates=3, creates=0, deletes=0))
            with deliveries_lost(sim):
                sim.sync("acme")
            daemon.wait_for("sync_covered_by_hints", timeout=30)
            before = data_requests(sim)
            body, signature = ids_delivery(sim.connector("acme")["id"], touched, "replayed")
            with ThreadPoolExecutor(5) as pool:
                answers = list(pool.map(lambda _: post_webhook(port, body, signature), range(10)))
            assert {a.status_code for a in answers} == {200}
            check(broker.bootstrap, topic, sim, "acme", expected=1003).assert_holds()
            wait_until(lambda: daemon.matching("hints_read"), 30, "the read")
            assert len(daemon.matching("hint_replayed")) == 9
        assert data_requests(sim) - before <= len(touched), sim.stats()


def test_a_hint_dearer_than_the_walk_leads_to_a_walk(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:  # a walk: 10 pages
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            walked = data_requests(sim)
            stage_changes(sim, updates=12, creates=0, deletes=0)
            sim.sync("acme")
            walk = daemon.wait_for("scan_finished", updated=12, timeout=60)
            assert walk["hint_missed"] == 0  # every change was named by the hint
            assert daemon.matching("hints_walked")
            check(broker.bootstrap, topic, sim, "acme", expected=1012).assert_holds()
        assert data_requests(sim) - walked == 10  # one walk, no read by id


def test_auto_backs_off_after_clean_walks_and_returns_at_a_miss(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 300) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every="auto", grace=1.0)
        topic = topic_of(config, "acme")
        expected = 300
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)

            def hinted_sync(offset: int, verify: bool = True) -> None:
                nonlocal expected
                hints, reads = delivered(sim), len(daemon.matching("hints_read"))
                stage_changes(sim, updates=1, creates=0, deletes=0, offset=offset)
                sim.sync("acme")
                expected += 1
                wait_until(lambda: delivered(sim) > hints, 15, "the sync's hint")
                wait_until(lambda: len(daemon.matching("hints_read")) > reads, 30, "its read")
                handled(sim, tmp_path)
                if verify:
                    check(broker.bootstrap, topic, sim, "acme", expected=expected).assert_holds()

            hinted_sync(0)  # walked (spacing 1), clean: spacing 2
            wait_until(lambda: spacing(tmp_path) == (2, 0), 30, "spacing 2 after a clean walk")
            hinted_sync(1)  # read only
            wait_until(lambda: spacing(tmp_path) == (2, 1), 30, "one sync counted")
            hinted_sync(2)  # walked, clean: spacing 4
            wait_until(lambda: spacing(tmp_path) == (4, 0), 30, "spacing 4")
            stage_changes(sim, updates=1, creates=0, deletes=0, offset=3)
            with deliveries_lost(sim):  # a lost hint: its change waits for the next walk
                sim.sync("acme")
            handled(sim, tmp_path)
            wait_until(lambda: spacing(tmp_path) == (4, 1), 30, "the lost sync counted")
            hinted_sync(4, verify=False)  # the lost change is still not published
            hinted_sync(5, verify=False)
            expected += 1  # the lost change, found by the next walk
            hinted_sync(6, verify=False)  # the fourth sync since the walk: walked
            wait_until(lambda: spacing(tmp_path) == (1, 0), 30, "back to every sync")
            missed = [line for line in daemon.matching("scan_finished") if line.get("hint_missed")]
            assert [line["hint_missed"] for line in missed] == [1]
            check(broker.bootstrap, topic, sim, "acme", expected=expected).assert_holds()


def test_at_every_sync_the_hinted_changes_come_before_the_walk_ends(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 3000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=1, grace=10.0)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            # A slow walk: every page answers after 50 ms (a read by id too).
            sim.add_fault(delay_ms=50, count=100_000)
            stage_changes(sim, updates=3, creates=1, deletes=1)
            sim.sync("acme")
            read = daemon.wait_for("hints_read", timeout=60)
            walk = daemon.wait_for("scan_finished", since=read["_t"], timeout=120)
            assert read["_t"] < walk["_t"]
            assert (read["updated"], read["created"], read["deleted"]) == (3, 1, 1)
            # The walk found them already published.
            assert (walk["updated"], walk["created"], walk["deleted"]) == (0, 0, 0)
            assert walk["hint_missed"] == 0
            check(broker.bootstrap, topic, sim, "acme", expected=3005).assert_holds()


def test_an_interval_stream_reads_a_hint_at_once_and_keeps_its_poll_time(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port)
        config["models"]["enrollments"].update(
            trigger="interval", poll_interval_seconds=3600, full_scan_every_syncs=1
        )
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            with open_store(tmp_path / "state.db") as store:
                due = wait_until(lambda: store.state(KEY).due_at, 30, "the next poll's time")
            walked = data_requests(sim)
            stage_changes(sim, updates=2, creates=1, deletes=1)
            sim.sync("acme")
            check(broker.bootstrap, topic, sim, "acme", expected=1004).assert_holds()
            wait_until(lambda: daemon.matching("hints_read"), 30, "the read")
            with open_store(tmp_path / "state.db") as store:
                wait_until(lambda: store.state(KEY).due_at == due, 30, "the poll time put back")
        assert data_requests(sim) - walked == 4
        assert len(daemon.matching("scan_started")) == 1


def test_a_malformed_record_read_by_id_is_dead_lettered_and_the_row_kept(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        config["kafka"]["dead_letter_topic"] = config["kafka"]["control_topic"] + ".dead"
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            [rid] = stage_changes(sim, updates=1, creates=0, deletes=0)
            with deliveries_lost(sim):
                sim.sync("acme")
            handled(sim, tmp_path)
            # Every try of the read answers the record without its id (max_attempts 3).
            sim.add_fault(malformed="item_without_id", count=3, model="enrollments")
            body, signature = ids_delivery(sim.connector("acme")["id"], [rid], "poison")
            assert post_webhook(port, body, signature).status_code == 200
            read = daemon.wait_for("hints_read", timeout=30)
            assert (read["rejected"], read["updated"]) == (1, 0)
            with open_store(tmp_path / "state.db") as store:
                assert rid in store.load_rows(KEY, [rid])  # kept as it was
        letters = control_events(broker.bootstrap, config["kafka"]["dead_letter_topic"], "rejected")
        assert len(letters) == 1 and letters[0]["data"]["reason"] == "no_id"


def _too_large(port: int) -> None:
    big = b"{" + b" " * (1 << 20) + b"}"
    assert post_webhook(port, big, None).status_code == 413


def test_a_413_walks_the_sync_it_refused_and_is_not_measured(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            stage_changes(sim, updates=4, creates=0, deletes=0)
            with deliveries_lost(sim):  # its ids never arrive: as if they were the 413
                sim.sync("acme")
            handled(sim, tmp_path)  # counted and covered (no hint) before the 413 came
            refused = time.monotonic()
            _too_large(port)
            # Walked now, not at the next sync; its changes were received (as the 413),
            # so the walk does not count them as missed by the hints.
            walk = daemon.wait_for("scan_finished", since=refused, timeout=60)
            assert walk["updated"] == 4
            assert walk.get("hint_missed") is None
            check(broker.bootstrap, topic, sim, "acme", expected=1000).assert_holds()
            with open_store(tmp_path / "state.db") as store:
                wait_until(lambda: not store.walk_state(KEY).forced, 30, "the force done")


def test_a_413_that_arrives_mid_walk_is_walked_right_after(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 3000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            sim.add_fault(delay_ms=100, count=100_000)  # a slow walk: 30 pages
            refused = time.monotonic()
            _too_large(port)  # starts a walk
            daemon.wait_for("scan_started", since=refused, timeout=30)
            # During it, another 413: the walk under way started before it, so its end
            # must neither clear the force nor leave the stream due an interval later.
            _too_large(port)
            sim.clear_faults()
            walk = daemon.wait_for("scan_finished", since=refused, timeout=60)
            daemon.wait_for("scan_finished", since=walk["_t"] + 1e-6, timeout=60)
            with open_store(tmp_path / "state.db") as store:
                wait_until(lambda: not store.walk_state(KEY).forced, 30, "the force done")
