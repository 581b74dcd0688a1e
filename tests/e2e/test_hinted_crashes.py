"""Hinted syncs under SIGKILL and with replicas: a hint answered 200 is durable work, a
killed targeted read is read again, and one read per hint is made fleet-wide."""

from __future__ import annotations

import time
from typing import Any

from daemon.models import Message, StreamKey
from daemon.state import open_store
from tests.e2e.hinted_support import (
    data_requests,
    delivered,
    deliveries,
    deliveries_lost,
    hinted_config,
    hinted_sim,
    ids_delivery,
    running,
    stage_changes,
    start,
)
from tests.harness import free_port, post_webhook, topic_of, wait_until
from tests.invariant import check

KEY = StreamKey("acme", "enrollments")
RECORDS = 3000


def test_sigkill_in_the_middle_of_a_targeted_read(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, RECORDS) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        daemon = start(config, tmp_path)
        try:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            walked = data_requests(sim)
            stage_changes(sim, updates=20, creates=3, deletes=2)
            sim.add_fault(delay_ms=200, count=100_000)  # reads by id take a while
            sim.sync("acme")
            wait_until(lambda: data_requests(sim) >= walked + 8, 30, "reads under way")
        finally:
            daemon.kill()
        assert not daemon.matching("hints_read")  # killed mid-read
        sim.clear_faults()
        with open_store(tmp_path / "state.db") as store:
            walk_started = store.state(KEY).last_full_scan_started_at
        with running(config, tmp_path) as again:
            wait_until(lambda: again.matching("hints_read"), 60, "the read, once more")
            check(broker.bootstrap, topic, sim, "acme", expected=None).assert_holds()
            with open_store(tmp_path / "state.db") as store:

                def released() -> bool:
                    state = store.state(KEY)
                    due = state.due_at
                    return not state.in_progress and due is not None and due > time.time() + 60

                wait_until(released, 60, "the turn over, the stream due at its safety net")
                # The batch the kill left in the outbox is sent, not taken for a walk.
                assert store.state(KEY).last_full_scan_started_at == walk_started
        assert deliveries(sim, "connector_data_modified", ("delivered",)) == 1  # no redelivery


def test_sigkill_between_answering_a_hint_and_reading_it(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, RECORDS) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        daemon = start(config, tmp_path)
        try:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
            stage_changes(sim, updates=4, creates=1, deletes=1)
            sim.add_fault(delay_ms=30_000, count=1)  # the first read hangs
            sim.sync("acme")
            wait_until(lambda: delivered(sim) == 1, 30, "the hint answered 200")
        finally:
            daemon.kill()
        assert not daemon.matching("hints_read")
        sim.clear_faults()
        with running(config, tmp_path) as again:
            wait_until(lambda: again.matching("hints_read"), 60, "the stored hint's read")
            check(broker.bootstrap, topic, sim, "acme", expected=RECORDS + 5).assert_holds()
        # Bindbee delivered once and never again: the hint came from the store.
        attempts = [d for d in sim.webhooks() if d["event"] == "connector_data_modified"]
        assert len(attempts) == 1


def test_an_outbox_left_by_a_read_is_sent_without_a_walk(broker, tmp_path) -> None:
    port = free_port()
    with hinted_sim(port, 1000) as sim:
        config = hinted_config(sim, broker, tmp_path, port, every=3)
        topic = topic_of(config, "acme")
        with running(config, tmp_path) as daemon:
            daemon.wait_for("scan_finished", connector="acme", timeout=120)
        with open_store(tmp_path / "state.db") as store:
            walk_started = store.state(KEY).last_full_scan_started_at
            assert store.claim(KEY)
            # What a hints_read marker whose send failed (or a read killed after a batch's
            # commit) leaves behind: rows in the outbox, and nothing else to do.
            store.commit_reads(KEY, [], [], [Message(topic, b"left-behind", b"{}")])
            store.release(KEY, next_due=time.time())
        with running(config, tmp_path) as again:
            again.wait_for("outbox_only", timeout=60)
            with open_store(tmp_path / "state.db") as store:
                assert not store.pending(KEY)
                assert store.state(KEY).last_full_scan_started_at == walk_started
        assert not again.matching("scan_started")  # sent, not taken for a walk


def _replica_config(base: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    config = {**base, "webhook": {**base["webhook"], "port": port}}
    config["scheduler"] = {**base["scheduler"], "replica_id": name}
    return config


def test_replicas_read_a_hint_once_and_the_count_survives_a_restart(
    broker, tmp_path, pg_schema
) -> None:
    port_a, port_b = free_port(), free_port()
    with hinted_sim(port_a, 1000) as sim:
        base = hinted_config(sim, broker, tmp_path, port_a, every=3)
        base["state"] = {"url": pg_schema, "lease_seconds": 5}
        topic = topic_of(base, "acme")
        configs = {"a": _replica_config(base, "a", port_a), "b": _replica_config(base, "b", port_b)}

        def both() -> dict[str, Any]:
            return {n: start(c, tmp_path, f"{n}.yaml") for n, c in configs.items()}

        def stop(daemons: dict[str, Any]) -> None:
            for daemon in daemons.values():
                assert daemon.stop() == 0, daemon.lines[-10:]

        def walk_syncs() -> int:
            with open_store(pg_schema) as store:
                return store.walk_state(KEY).syncs

        daemons = both()
        try:
            wait_until(lambda: any(d.matching("scan_finished") for d in daemons.values()),
                       120, "the initial sync, by either replica")  # fmt: skip
            before = data_requests(sim)
            touched = sorted(stage_changes(sim, updates=3, creates=0, deletes=0))
            with deliveries_lost(sim):  # the test delivers the sync's ids itself, below
                sim.sync("acme")
            # The delivery reaches ONE replica (twice: a replay), the watcher's leader: the
            # other one learned the connector's Bindbee id from its own read at start, so
            # whichever claims the stream reads the hint instead of walking or covering.
            leader = next((n for n, d in daemons.items() if d.matching("sync_watcher_leader")), "a")
            port = port_a if leader == "a" else port_b
            body, signature = ids_delivery(sim.connector("acme")["id"], touched, "sync-1")
            for _ in range(2):
                assert post_webhook(port, body, signature).status_code == 200
            check(broker.bootstrap, topic, sim, "acme", expected=1003).assert_holds()
            wait_until(lambda: walk_syncs() == 1, 30, "the sync counted once")
        finally:
            stop(daemons)
        reads = sum(len(d.matching("hints_read")) for d in daemons.values())
        assert data_requests(sim) - before <= 3 and reads >= 1, sim.stats()
        daemons = both()
        try:
            wait_until(lambda: all(d.matching("scheduler_started") for d in daemons.values()),
                       60, "both replicas")  # fmt: skip
            stage_changes(sim, updates=1, creates=0, deletes=0, offset=5)
            sim.sync("acme")
            wait_until(lambda: walk_syncs() == 2, 30, "the second sync counted after a restart")
            sim.sync("acme")  # the third since the walk: walked, by whichever replica
            wait_until(lambda: walk_syncs() == 0, 60, "the walk of the third sync")
            check(broker.bootstrap, topic, sim, "acme", expected=1004).assert_holds()
        finally:
            stop(daemons)
