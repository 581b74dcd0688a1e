"""Sync-aware polling against the simulator in scheduled mode: scan after a Bindbee sync
is Done, spend no data request otherwise (in-process scheduler, tansu, SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from bindbee_sim import SimServer
from daemon.models import StreamKey
from daemon.runtime import Runtime
from daemon.schedule.scheduler import Scheduler
from daemon.settings import load_settings
from daemon.timestamps import normalize_time
from tests.harness import base_config, wait_until, write_config
from tests.kafka_read import read_topic

CONNECTORS = {"acme": "tok_acme", "globex": "tok_globex"}
ENROLLMENTS = 150


@pytest.fixture
def scheduled_sim() -> Iterator[SimServer]:
    with SimServer(
        connectors=CONNECTORS,
        enrollments=ENROLLMENTS,
        seed=11,
        sync_mode="scheduled",
        sync_duration_seconds=0.2,
    ) as server:
        yield server


def sync_config(sim: SimServer, broker: Any, tmp_path: Path, **bindbee: Any) -> dict[str, Any]:
    config = base_config(sim, broker.bootstrap, tmp_path, tuple(CONNECTORS), in_process=True)
    config["bindbee"].update(sync_check_interval_seconds=0.2, sync_check_min_gap_seconds=0)
    config["bindbee"].update(bindbee)
    config["models"] = {"enrollments": {"trigger": "sync"}}  # the sync rule alone, no timer
    kafka = config["kafka"]
    kafka["topic_template"] = kafka["topic_template"].replace(".{model}", ".{connector}.{model}")
    config["scheduler"] = {"jitter_seconds": 0.0, "shutdown_timeout_seconds": 10}
    config["log"] = {"format": "json", "level": "INFO"}
    return config


@contextmanager
def running(config: dict[str, Any], tmp_path: Path) -> Iterator[Scheduler]:
    settings = load_settings(write_config(tmp_path, config, f"c{uuid.uuid4().hex[:6]}.yaml"))
    runtime = Runtime.open(settings)
    scheduler = Scheduler(runtime)
    try:
        scheduler.start()
        yield scheduler
    finally:
        assert scheduler.shutdown(15)
        runtime.close()


def data_requests(sim: SimServer, connector: str) -> int:
    return sum(sim.stats().get(connector, {}).values())


def org_requests(sim: SimServer) -> int:
    return sum(sim.stats().get("_org", {}).values())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def full_scans(connector: str) -> float:
    labels = {"connector": connector, "model": "enrollments", "kind": "full", "result": "ok"}
    return sample("changefeed_scans_total", **labels)


def listed_sync(sim: SimServer, connector: str) -> str:
    """The connector's last_sync_start_time as the daemon stores it."""
    return normalize_time(sim.connector(connector)["last_sync_start_time"])


def topic(config: dict[str, Any], connector: str) -> str:
    return str(config["kafka"]["topic_template"]).format(connector=connector, model="enrollments")


def wait_checks(scheduler: Scheduler, more: int, timeout: float = 30.0) -> None:
    assert scheduler.watcher is not None
    target = scheduler.watcher.checks + more
    wait_until(lambda: scheduler.watcher.checks >= target, timeout, f"{more} sync checks")


def wait_initial(
    scheduler: Scheduler, timeout: float = 60.0, keys: list[str] | None = None
) -> None:
    store = scheduler.runtime.store
    streams = [StreamKey(name, "enrollments") for name in keys or CONNECTORS]

    def done() -> bool:
        states = [store.state(key) for key in streams]
        return all(s.last_full_scan_at is not None and not s.in_progress for s in states)

    wait_until(done, timeout, "the initial scans")
    for key in streams:
        wait_until(lambda k=key: not scheduler.running(k), timeout, "idle")


def events(config: dict[str, Any], broker: Any, connector: str, expected: int) -> list[dict]:
    records = read_topic(broker.bootstrap, topic(config, connector), expected=expected)
    return [orjson.loads(r.value) for r in records if r.value is not None]


def test_no_data_requests_between_syncs(scheduled_sim, broker, tmp_path) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path)
    with running(config, tmp_path) as scheduler:
        wait_initial(scheduler)
        # The initial sync of each stream: ceil(150/100) pages, and it covers the seed sync.
        assert data_requests(scheduled_sim, "acme") == 2
        key = StreamKey("acme", "enrollments")
        assert scheduler.runtime.store.state(key).sync_bookmark is not None
        before = {name: data_requests(scheduled_sim, name) for name in CONNECTORS}
        org_before = org_requests(scheduled_sim)
        wait_checks(scheduler, 10)
        assert {name: data_requests(scheduled_sim, name) for name in CONNECTORS} == before
        assert org_requests(scheduled_sim) >= org_before + 10


def test_a_sync_brings_its_changes_and_only_to_its_connector(
    scheduled_sim, broker, tmp_path
) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path)
    with running(config, tmp_path) as scheduler:
        wait_initial(scheduler)
        ids = scheduled_sim.ids("acme", "enrollments")
        for rid in ids[:3]:
            scheduled_sim.update("acme", "enrollments", rid, {"start_date": "2041-01-01T00:00:00Z"})
        scheduled_sim.delete("acme", "enrollments", ids[3])
        wait_checks(scheduler, 3)
        assert scheduled_sim.staged()["acme"] == 4
        # Staged, not synced: nothing to read yet, so nothing is read.
        assert data_requests(scheduled_sim, "acme") == 2
        globex_before = data_requests(scheduled_sim, "globex")

        scheduled_sim.sync("acme")
        synced = listed_sync(scheduled_sim, "acme")
        published = events(config, broker, "acme", expected=ENROLLMENTS + 4)
        assert len(published) == ENROLLMENTS + 4
        # Two partitions: arrival order mixes them, so select the sync's events by flag.
        kinds = [e["type"].rsplit(".", 1)[1] for e in published if not e["data"]["initial_sync"]]
        assert sorted(kinds) == ["deleted", "updated", "updated", "updated"]
        wait_until(
            lambda: (
                scheduler.runtime.store.state(StreamKey("acme", "enrollments")).sync_bookmark
                == synced
            ),
            20,
            "acme's bookmark at the new sync",
        )
        assert data_requests(scheduled_sim, "acme") == 4  # one more full walk: 2 pages
        wait_checks(scheduler, 3)
        assert data_requests(scheduled_sim, "globex") == globex_before


def test_syncing_waits_and_failed_triggers_nothing(broker, tmp_path) -> None:
    with SimServer(
        connectors=CONNECTORS,
        enrollments=ENROLLMENTS,
        seed=12,
        sync_mode="scheduled",
        sync_duration_seconds=1.5,
    ) as sim:
        config = sync_config(sim, broker, tmp_path)
        with running(config, tmp_path) as scheduler:
            wait_initial(scheduler)
            before = data_requests(sim, "acme")
            rid = sim.ids("acme", "enrollments")[0]
            sim.update("acme", "enrollments", rid, {"start_date": "2042-01-01T00:00:00Z"})
            failed_before = sample("changefeed_sync_failed_total", connector="acme")
            sim.sync("acme", fail=True)
            wait_checks(scheduler, 4)
            assert data_requests(sim, "acme") == before
            assert sample("changefeed_sync_failed_total", connector="acme") == failed_before + 1

            sim.sync("acme", wait=False)
            wait_until(lambda: sim.connector("acme")["sync_status"] == "Syncing", 10, "Syncing")
            wait_checks(scheduler, 3)
            if sim.connector("acme")["sync_status"] == "Syncing":
                assert data_requests(sim, "acme") == before
            published = events(config, broker, "acme", expected=ENROLLMENTS + 1)
            assert published[-1]["type"].endswith(".updated")
            assert published[-1]["subject"] == rid


def test_a_restart_after_a_scanned_sync_does_not_scan_again(
    scheduled_sim, broker, tmp_path
) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path)
    with running(config, tmp_path) as scheduler:
        wait_initial(scheduler)
    before = {name: data_requests(scheduled_sim, name) for name in CONNECTORS}
    with running(config, tmp_path) as scheduler:
        wait_checks(scheduler, 5)
        assert {name: data_requests(scheduled_sim, name) for name in CONNECTORS} == before


def test_a_sync_done_during_a_scan_gets_a_scan_of_its_own(broker, tmp_path) -> None:
    with SimServer(
        connectors=CONNECTORS,
        enrollments=500,
        seed=13,
        sync_mode="scheduled",
        sync_duration_seconds=0.1,
    ) as sim:
        config = sync_config(sim, broker, tmp_path)
        with running(config, tmp_path) as scheduler:
            wait_initial(scheduler)
            key = StreamKey("acme", "enrollments")
            ids = sim.ids("acme", "enrollments")
            scans_before = full_scans("acme")
            sim.update("acme", "enrollments", ids[0], {"start_date": "2043-01-01T00:00:00Z"})
            # Every page of acme takes 0.3 s: a 5-page walk that the next sync overtakes.
            sim.add_fault(delay_ms=300, count=1000, connector="acme")
            sim.sync("acme")
            first = listed_sync(sim, "acme")
            wait_until(lambda: scheduler.runtime.store.state(key).in_progress, 20, "scan 1")
            assert scheduler.runtime.store.state(key).scan_sync == first
            sim.update("acme", "enrollments", ids[1], {"start_date": "2044-01-01T00:00:00Z"})
            sim.sync("acme")
            second = listed_sync(sim, "acme")
            assert second != first
            wait_until(
                lambda: scheduler.runtime.store.state(key).sync_bookmark == second,
                60,
                "the bookmark at the second sync",
            )
            sim.clear_faults()
            assert full_scans("acme") >= scans_before + 2
            published = events(config, broker, "acme", expected=500 + 2)
            updated = {e["subject"] for e in published if e["type"].endswith(".updated")}
            assert updated == {ids[0], ids[1]}


def test_relink_needed_blocks_scans_and_is_reported(scheduled_sim, broker, tmp_path) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path)
    with running(config, tmp_path) as scheduler:
        wait_initial(scheduler)
        scheduled_sim.set_connector("acme", status="RELINK_NEEDED")
        wait_checks(scheduler, 2)
        assert scheduler.follower.blocked("acme") is not None
        key = StreamKey("acme", "enrollments")
        held = scheduler.runtime.store.state(key).connector_state
        assert held is not None and "RELINK_NEEDED" in held  # what `status` shows
        assert sample("changefeed_connector_status", connector="acme", state="blocked") == 1
        before = data_requests(scheduled_sim, "acme")
        assert not scheduler.trigger(StreamKey("acme", "enrollments"), "interval")
        assert data_requests(scheduled_sim, "acme") == before
        scheduled_sim.set_connector("acme", status="COMPLETE")
        wait_checks(scheduler, 2)
        assert scheduler.follower.blocked("acme") is None
        assert scheduler.runtime.store.state(key).connector_state is None
        assert sample("changefeed_connector_status", connector="acme", state="ok") == 1


def test_discovery_follows_new_connectors_and_drops_inactive_ones(
    scheduled_sim, broker, tmp_path
) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path, discover_connectors=True)
    config["connectors"] = [{"name": "acme", "token": CONNECTORS["acme"]}]
    with running(config, tmp_path) as scheduler:
        # globex is found in the list; acme stays the configured entry (its name, its key).
        globex_id = scheduled_sim.connector("globex")["id"]
        wait_initial(scheduler, keys=["acme", globex_id])
        keys = set(scheduler.passes)
        assert StreamKey("acme", "enrollments") in keys
        assert StreamKey(globex_id, "enrollments") in keys
        # Named after its origin id: its events are on the {connector}=globex topic.
        assert len(events(config, broker, "globex", expected=ENROLLMENTS)) == ENROLLMENTS

        scheduled_sim.add_connector("initech", "tok_initech", enrollments=40)
        initech_id = scheduled_sim.connector("initech")["id"]
        wait_until(
            lambda: (
                scheduler.runtime.store.state(
                    StreamKey(initech_id, "enrollments")
                ).last_full_scan_at
                is not None
            ),
            30,
            "initech's initial sync",
        )
        assert len(events(config, broker, "initech", expected=40)) == 40

        scheduled_sim.set_connector("globex", is_active=False)
        wait_until(
            lambda: StreamKey(globex_id, "enrollments") not in scheduler.passes,
            30,
            "globex dropped",
        )
        # Its state is kept for when it comes back.
        assert scheduler.runtime.store.state(StreamKey(globex_id, "enrollments")).records == (
            ENROLLMENTS
        )


def test_interval_streams_keep_timer_polling(scheduled_sim, broker, tmp_path) -> None:
    config = sync_config(scheduled_sim, broker, tmp_path)
    config["models"] = {"enrollments": {"trigger": "interval", "poll_interval_seconds": 0.5}}
    config["connectors"] = config["connectors"][:1]
    with running(config, tmp_path):
        wait_until(lambda: data_requests(scheduled_sim, "acme") >= 6, 30, "three timer passes")
    # The passes came from the timer alone: no sync happened, none was needed.
    assert scheduled_sim.syncs() == []
