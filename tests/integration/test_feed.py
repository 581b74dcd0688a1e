"""The change feed end to end: simulator → daemon → tansu broker, SQLite state on disk."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import yaml
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat
from structlog.testing import capture_logs

from bindbee_sim import SimServer
from daemon.diff import content_hash
from daemon.models import RowWrite, StreamKey
from daemon.runtime import Runtime
from daemon.settings import Settings, load_settings
from daemon.state import open_store
from daemon.timestamps import normalize_time
from tests.harness import Daemon, cli, scan_pages, wait_until
from tests.harness import poll as poll_to_the_end
from tests.helpers import feed_config, new_enrollment
from tests.kafka_read import read_topic, scan_end

KEY = StreamKey("acme", "enrollments")


def settings_of(config: dict) -> Settings:
    return load_settings(None, **config)


def poll(settings: Settings, *, full: bool = False, connector: str = "acme"):
    runtime = Runtime.open(settings)
    try:
        (stream_pass,) = runtime.passes([connector], ["enrollments"])
        return stream_pass.run(force_full=full)
    finally:
        runtime.close()


def scans_end(settings: Settings, scans: int, connector: str = "acme") -> dict[int, int]:
    """The data topic's offsets through the stream's first ``scans`` completed scans."""
    return scan_end(
        settings.kafka.bootstrap_servers,
        settings.kafka.control_topic,
        f"{connector}/enrollments",
        scans=scans,
    )


def events_of(records) -> list[dict]:
    return [orjson.loads(r.value) for r in records if r.value is not None]


@pytest.mark.sim(enrollments=1000)
def test_initial_sync_then_changes_then_quiet(sim, broker, tmp_path: Path) -> None:
    settings = settings_of(feed_config(sim, broker, tmp_path))
    topic = settings.kafka.topic_for("acme", "enrollments")

    result = poll(settings)
    assert result.kind == "full" and result.completed
    records = read_topic(broker.bootstrap, topic, expected=1000)
    assert len(records) == 1000
    ids = sim.ids("acme", "enrollments")
    assert sorted(r.key.decode() for r in records) == sorted(ids)
    for record in records:
        message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        event = from_kafka(message, JSONFormat())
        assert event.get_type() == "bindbee.lms.enrollments.created"
        assert event.get_subject() == record.key.decode()
        assert event.get_data()["initial_sync"] is True

    updated = ids[:10]
    for n, rid in enumerate(updated):
        sim.update("acme", "enrollments", rid, {"start_date": f"2030-01-{n + 1:02d}T00:00:00Z"})
    before = {rid: sim.get("acme", "enrollments", rid) for rid in ids[10:13]}
    for rid in before:
        sim.delete("acme", "enrollments", rid)
    created = [sim.create("acme", "enrollments", new_enrollment(sim))["id"] for _ in range(5)]
    result = poll(settings, full=True)
    assert (result.stats.created, result.stats.updated, result.stats.deleted) == (5, 10, 3)
    # Two partitions: arrival order mixes them, so select the second scan's events by flag.
    events = [
        e
        for e in events_of(read_topic(broker.bootstrap, topic, expected=1018))
        if not e["data"]["initial_sync"]
    ]
    kinds = Counter(e["type"].rsplit(".", 1)[1] for e in events)
    assert kinds == {"updated": 10, "created": 5, "deleted": 3}
    by_subject = {e["subject"]: e for e in events}
    for n, rid in enumerate(updated):
        changes = by_subject[rid]["data"]["changes"]
        assert set(changes) == {"start_date"}
        new = normalize_time(changes["start_date"]["new"])
        assert new == normalize_time(f"2030-01-{n + 1:02d}T00:00:00Z")
        assert by_subject[rid]["data"]["initial_sync"] is False
    assert {rid for rid in created} <= set(by_subject)
    for rid in before:
        deleted = by_subject[rid]
        assert deleted["type"].endswith(".deleted")
        assert deleted["data"]["record"]["id"] == rid

    again = poll(settings, full=True)
    assert again.stats.created == again.stats.updated == again.stats.deleted == 0
    # Everything the three scans published: through the third one's scan_completed marker.
    assert len(read_topic(broker.bootstrap, topic, through=scans_end(settings, 3))) == 1018


@pytest.mark.sim(enrollments=250)
def test_initial_sync_meets_a_row_stored_before_it(sim, broker, tmp_path: Path) -> None:
    """An initial sync diffs its pages without loading their rows (none is stored yet)
    and commits them as new rows only. A page holding a stored row after all (here a
    targeted read's, written before the walk) is loaded and diffed again: its record is
    `updated`, not `created` a second time, and every later page is loaded too."""
    config = feed_config(sim, broker, tmp_path)
    settings = settings_of(config)
    topic = settings.kafka.topic_for("acme", "enrollments")
    ids = sim.ids("acme", "enrollments")
    stored = ids[150]  # on page 2 of 3
    old = {**sim.get("acme", "enrollments", stored), "start_date": "1999-01-01T00:00:00Z"}
    with open_store(config["state"]["path"]) as store:
        digest = content_hash(old, ("modified_at",))
        store.commit_reads(KEY, [RowWrite(stored, old["modified_at"], digest, old)], [], [])
    with capture_logs() as logs:
        result = poll(settings)
    assert result.completed
    assert (result.stats.created, result.stats.updated) == (249, 1)
    assert [line["page"] for line in logs if line["event"] == "stored_rows_found"] == [2]
    events = events_of(read_topic(broker.bootstrap, topic, through=scans_end(settings, 1)))
    assert Counter(e["subject"] for e in events) == Counter(ids)  # each record once
    (updated,) = [e for e in events if e["type"].endswith(".updated")]
    assert updated["subject"] == stored and "start_date" in updated["data"]["changes"]
    # What the store holds is the record the API listed (the event's), for every id.
    with open_store(config["state"]["path"]) as store:
        rows = store.load_rows(KEY, ids)
    assert len(rows) == 250 and rows[stored].record == updated["data"]["record"]


@pytest.mark.sim(enrollments=50)
def test_modified_at_bump_and_older_copy_make_no_event(sim, broker, tmp_path: Path) -> None:
    settings = settings_of(feed_config(sim, broker, tmp_path))
    topic = settings.kafka.topic_for("acme", "enrollments")
    poll(settings)
    a, b = sim.ids("acme", "enrollments")[:2]
    sim.update("acme", "enrollments", a, {})  # only modified_at moves
    old_b = sim.get("acme", "enrollments", b)
    sim.update(
        "acme",
        "enrollments",
        b,
        {"start_date": "2031-01-01T00:00:00Z", "modified_at": "2001-01-01T00:00:00Z"},
    )
    result = poll(settings, full=True)
    assert result.stats.updated == 0 and result.stats.stale == 1 and result.stats.unchanged == 49
    assert len(read_topic(broker.bootstrap, topic, through=scans_end(settings, 2))) == 50
    assert old_b["start_date"] != "2031-01-01T00:00:00Z"


@pytest.mark.sim(enrollments=500)
def test_incremental_poll_with_nothing_changed_costs_one_request(sim, broker, tmp_path) -> None:
    sim.set_honor_modified_after(True)
    settings = settings_of(feed_config(sim, broker, tmp_path))
    assert poll(settings).kind == "full"
    before = sim.stats()["acme"]["200"]
    result = poll(settings)
    assert result.kind == "incremental"
    assert sim.stats()["acme"]["200"] - before == 1
    rid = sim.ids("acme", "enrollments")[7]
    sim.update("acme", "enrollments", rid, {"start_date": "2032-02-02T00:00:00Z"})
    result = poll(settings)
    assert result.kind == "incremental" and result.stats.updated == 1


@pytest.mark.sim(enrollments=30)
def test_empty_answer_for_a_populated_stream_deletes_nothing(sim, broker, tmp_path) -> None:
    settings = settings_of(feed_config(sim, broker, tmp_path, max_delete_fraction=1.0))
    topic = settings.kafka.topic_for("acme", "enrollments")
    poll(settings)
    for rid in sim.ids("acme", "enrollments"):
        sim.delete("acme", "enrollments", rid)
    with capture_logs() as logs:
        result = poll(settings, full=True)
    assert result.stats.deleted == 0 and result.delete_guard
    assert any(e["event"] == "delete_guard_tripped" and e["log_level"] == "error" for e in logs)
    assert len(read_topic(broker.bootstrap, topic, through=scans_end(settings, 2))) == 30
    runtime = Runtime.open(settings)
    state = runtime.store.state(KEY)
    runtime.close()
    assert state.records == 30 and state.delete_guard


@pytest.mark.sim(enrollments=20)
def test_delete_guard_over_fraction(sim, broker, tmp_path) -> None:
    settings = settings_of(feed_config(sim, broker, tmp_path, max_delete_fraction=0.25))
    poll(settings)
    for rid in sim.ids("acme", "enrollments")[:6]:  # 30 % > 25 %
        sim.delete("acme", "enrollments", rid)
    assert poll(settings, full=True).delete_guard
    relaxed = settings_of(
        {
            **feed_config(sim, broker, tmp_path, max_delete_fraction=0.5),
            "kafka": settings.kafka.model_dump(),
        }
    )
    result = poll(relaxed, full=True)
    assert result.delete_guard is None and result.stats.deleted == 6


@pytest.mark.sim(enrollments=40)
def test_baseline_initial_sync_publishes_nothing_until_changes(sim, broker, tmp_path) -> None:
    settings = settings_of(feed_config(sim, broker, tmp_path, initial_sync="baseline"))
    topic = settings.kafka.topic_for("acme", "enrollments")
    assert poll(settings).stats.created == 0
    rid = sim.ids("acme", "enrollments")[3]
    sim.update("acme", "enrollments", rid, {"end_date": "2033-03-03T00:00:00Z"})
    assert poll(settings, full=True).stats.updated == 1
    (only,) = events_of(read_topic(broker.bootstrap, topic, expected=1))
    assert only["subject"] == rid and only["type"].endswith(".updated")


def test_two_connectors_have_independent_streams(broker, tmp_path) -> None:
    with SimServer(
        connectors={"acme": "tok_a", "globex": "tok_g"}, enrollments=120, seed=3, rate_limit=0
    ) as sim:
        config = feed_config(sim, broker, tmp_path, connectors=("acme", "globex"))
        config["kafka"]["topic_template"] = config["kafka"]["topic_template"].replace(
            ".{model}", ".{connector}.{model}"
        )
        settings = settings_of(config)
        poll(settings, connector="acme")
        poll(settings, connector="globex")
        rid = sim.ids("globex", "enrollments")[0]
        # Newer than every generated record, older than the scan (the watermark's ceiling).
        recent = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        sim.update(
            "globex",
            "enrollments",
            rid,
            {"start_date": "2034-01-01T00:00:00Z", "modified_at": recent},
        )
        poll(settings, connector="globex", full=True)
        runtime = Runtime.open(settings)
        acme = runtime.store.state(StreamKey("acme", "enrollments"))
        globex = runtime.store.state(StreamKey("globex", "enrollments"))
        runtime.close()
        assert globex.watermark == recent
        assert acme.watermark is not None and acme.watermark < globex.watermark
        a_events = read_topic(
            broker.bootstrap, settings.kafka.topic_for("acme", "enrollments"), expected=120
        )
        g_events = read_topic(
            broker.bootstrap, settings.kafka.topic_for("globex", "enrollments"), expected=121
        )
        assert len(a_events) == 120 and len(g_events) == 121


@pytest.mark.sim(enrollments=5000)
def test_sigkilled_poll_resumes_from_its_checkpoint(sim, broker, tmp_path: Path) -> None:
    config = feed_config(sim, broker, tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = settings_of(config)
    topic = settings.kafka.topic_for("acme", "enrollments")
    # Slow pages down so the kill lands mid-scan, wherever the machine's speed.
    sim.add_fault(delay_ms=60, count=100_000, connector="acme")
    proc = Daemon(path, "poll")
    wait_until(
        lambda: scan_pages(tmp_path / "state.db") >= 15 or proc.proc.poll() is not None,
        60,
        "15 committed pages",
    )
    assert proc.proc.poll() is None, "poll finished before it could be killed"
    proc.kill()
    first_run_requests = sim.stats()["acme"]["200"]
    sim.clear_faults()
    poll_to_the_end(path, timeout=120)
    second_run_requests = sim.stats()["acme"]["200"] - first_run_requests
    assert second_run_requests < 50  # a fresh start needs 50 pages
    records = read_topic(broker.bootstrap, topic, expected=5000)
    events = events_of(records)
    by_subject: dict[str, set[str]] = {}
    for event in events:
        by_subject.setdefault(event["subject"], set()).add(event["id"])
    assert set(by_subject) == set(sim.ids("acme", "enrollments"))
    assert all(len(ids) == 1 for ids in by_subject.values())  # duplicates share the id
    assert len(events) - 5000 <= 100  # at most the page in flight came twice


@pytest.mark.sim(enrollments=10)
@pytest.mark.parametrize("initial", ["emit"])
def test_status_and_reset_commands(sim, broker, tmp_path: Path, initial: str) -> None:
    config = feed_config(sim, broker, tmp_path, initial_sync=initial)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    poll(settings_of(config))
    status = cli("status", "--config", str(path))
    assert status.returncode == 0, status.stderr
    assert "acme/enrollments" in status.stdout and "10" in status.stdout
    reset = cli(
        "reset", "--config", str(path), "--connector", "acme", "--model", "enrollments", "--yes"
    )
    assert reset.returncode == 0
    runtime = Runtime.open(settings_of(config))
    assert runtime.store.state(KEY).records == 0
    runtime.close()
