"""Scan-completed markers: after every completed scan, one ``scan_completed`` CloudEvent on
the control topic, whose offsets a consumer can seek to and find the scan's last event.

Real parts: a tansu broker, the simulator over loopback, the daemon's Runtime and
StreamPass (as `poll` runs them), SQLite state on disk. Every CloudEvent read is validated
against its schema (tests/kafka_read.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from structlog.testing import capture_logs

from daemon.errors import SinkError
from daemon.models import StreamKey
from daemon.runtime import Runtime
from daemon.settings import Settings, load_settings
from daemon.stream import PassResult
from daemon.timestamps import parse_time
from tests.helpers import feed_config
from tests.kafka_read import read_topic
from tests.schema_check import validate_event

pytestmark = pytest.mark.timeout(90)

ACME = StreamKey("acme", "enrollments")
TWO = {"acme": "tok_acme", "globex": "tok_globex"}


def settings_for(sim, broker, tmp_path: Path, **kafka: Any) -> Settings:
    config = feed_config(sim, broker, tmp_path, connectors=tuple(sim.tokens))
    # A control topic of its own: the default one is shared by every test on the broker.
    prefix = config["kafka"]["topic_template"].removesuffix(".{model}")
    config["kafka"]["control_topic"] = f"{prefix}.control"
    config["kafka"].update(kafka)
    return load_settings(None, **config)


def poll(
    settings: Settings,
    connector: str = "acme",
    *,
    full: bool = False,
    runtime: Runtime | None = None,
    on_page: Callable[[PassResult], None] | None = None,
) -> PassResult:
    own = runtime is None
    runtime = runtime or Runtime.open(settings)
    try:
        (stream_pass,) = runtime.passes([connector], ["enrollments"])
        return stream_pass.run(force_full=full, on_page=on_page)
    finally:
        if own:
            runtime.close()


def markers(broker, settings: Settings, expected: int) -> list[dict[str, Any]]:
    """The control topic's markers, in log order (one key, so one partition)."""
    records = read_topic(broker.bootstrap, settings.kafka.control_topic, expected=expected)
    assert len(records) == expected, [orjson.loads(r.value)["data"]["scan"] for r in records]
    for record in records:
        body = orjson.loads(record.value)
        assert record.key == body["subject"].encode()
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return [orjson.loads(r.value) for r in ordered]


def data_topic(broker, settings: Settings, expected: int) -> list[Any]:
    topic = settings.kafka.topic_for("acme", "enrollments")
    records = read_topic(broker.bootstrap, topic, expected=expected)
    assert len(records) == expected
    return records


def seek(bootstrap: str, topic: str, offsets: dict[str, int]) -> dict[int, Any]:
    """As a consumer would: assign() the partitions, seek to the marker's offsets, read."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        wanted = {int(p): offset for p, offset in offsets.items()}
        partitions = [TopicPartition(topic, p) for p in sorted(wanted)]
        consumer.assign(partitions)
        for where in partitions:
            consumer.seek(where, wanted[where.partition])
        found: dict[int, Any] = {}
        deadline = time.monotonic() + 20
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for where, records in consumer.poll(timeout_ms=200).items():
                if where.partition not in found and records:
                    found[where.partition] = records[0]
                    consumer.pause(where)
        assert set(found) == set(wanted), f"nothing read at {wanted} (got {sorted(found)})"
        return found
    finally:
        consumer.close()


def last_per_partition(records: list[Any], keep: Callable[[Any], bool]) -> dict[str, int]:
    last: dict[str, int] = {}
    for record in records:
        if keep(record):
            key = str(record.partition)
            last[key] = max(last.get(key, -1), record.offset)
    return last


def value(record: Any) -> dict[str, Any]:
    return orjson.loads(record.value)


# ---- full and incremental scans ------------------------------------------------------------


@pytest.mark.sim(connectors=TWO, enrollments=150)
def test_markers_after_full_and_incremental_scans_point_at_each_scans_last_event(
    sim, broker, tmp_path: Path
) -> None:
    settings = settings_for(sim, broker, tmp_path)
    topic = settings.kafka.topic_for("acme", "enrollments")
    acme_ids = set(sim.ids("acme", "enrollments"))

    first = poll(settings, "acme")
    poll(settings, "globex")  # another stream on the same data topic, after acme's scan
    for rid in sorted(acme_ids)[:3]:
        sim.update("acme", "enrollments", rid, {"start_date": "2031-02-03T00:00:00Z"})
    second = poll(settings, "acme")
    assert (first.kind, second.kind) == ("full", "incremental")

    records = data_topic(broker, settings, expected=150 + 150 + 3)
    controls = markers(broker, settings, expected=3)
    by_stream = defaultdict(list)
    for marker in controls:
        by_stream[marker["subject"]].append(marker["data"])
    full, incremental = by_stream["acme/enrollments"]
    (globex,) = by_stream["globex/enrollments"]

    # The full scan: every record, consistent as of its start, no deletes held.
    assert (full["kind"], full["scan"], full["covers"], full["modified_since"]) == (
        "full",
        1,
        "all_records",
        None,
    )
    assert full["topic"] == topic and full["connector"] == "acme"
    assert full["initial_sync"] is True and full["partial"] is False
    assert full["counts"] | {"dead_lettered": 0} == {
        "created": 150,
        "updated": 0,
        "deleted": 0,
        "unchanged": 0,
        "stale": 0,
        "rejected": 0,
        "dead_lettered": 0,
    }
    assert (full["delete_guard"], full["deletes_withheld"]) == (None, False)
    assert full["consistent_as_of"] == full["started_at"] <= full["finished_at"]
    # Offsets as the producer got them acknowledged: acme's own last event per partition,
    # although globex wrote after it.
    assert full["partitions"] == last_per_partition(
        records,
        lambda r: value(r)["data"]["connector"] == "acme" and value(r)["type"].endswith("created"),
    )
    assert len(full["partitions"]) == 2
    assert globex["partitions"] == last_per_partition(
        records, lambda r: value(r)["data"]["connector"] == "globex"
    )
    for partition, record in seek(broker.bootstrap, topic, full["partitions"]).items():
        assert record.offset == full["partitions"][str(partition)]
        event = value(record)
        assert event["data"]["connector"] == "acme" and event["subject"] in acme_ids
        assert event["type"] == "bindbee.lms.enrollments.created"

    # The incremental scan: only changes since its bookmark, no claim of consistency.
    assert (incremental["kind"], incremental["scan"], incremental["covers"]) == (
        "incremental",
        2,
        "modified_since",
    )
    assert parse_time(incremental["modified_since"]) <= parse_time(full["started_at"])
    assert "consistent_as_of" not in incremental
    assert incremental["counts"]["updated"] == 3 and incremental["counts"]["created"] == 0
    updates = [r for r in records if value(r)["type"].endswith(".updated")]
    assert incremental["partitions"] == last_per_partition(updates, lambda r: True)
    changed = set(sorted(acme_ids)[:3])
    for partition, record in seek(broker.bootstrap, topic, incremental["partitions"]).items():
        assert record.offset == incremental["partitions"][str(partition)]
        assert value(record)["type"] == "bindbee.lms.enrollments.updated"
        assert value(record)["subject"] in changed
    # Nothing of either scan lies past the marker's offsets.
    for partition, offset in incremental["partitions"].items():
        acme_later = [
            r
            for r in records
            if str(r.partition) == partition
            and r.offset > offset
            and value(r)["data"]["connector"] == "acme"
        ]
        assert acme_later == []


@pytest.mark.sim(enrollments=120)
def test_consistent_as_of_only_on_full_scans_that_withheld_no_deletes(
    sim, broker, tmp_path: Path
) -> None:
    settings = settings_for(sim, broker, tmp_path)
    ids = sim.ids("acme", "enrollments")
    poll(settings)
    for rid in ids[:80]:  # 80 of 120 gone: over max_delete_fraction (50%)
        sim.delete("acme", "enrollments", rid)
    held = poll(settings, full=True)
    assert held.delete_guard is not None
    sim.reset()  # the 80 are back
    sim.delete("acme", "enrollments", ids[0])
    poll(settings, full=True)

    records = data_topic(broker, settings, expected=120 + 1)
    first, withheld, deleted = (m["data"] for m in markers(broker, settings, expected=3))
    assert "consistent_as_of" in first
    assert withheld["deletes_withheld"] is True
    assert withheld["delete_guard"] == held.delete_guard
    assert "consistent_as_of" not in withheld
    assert withheld["partitions"] == {}  # it published nothing
    assert deleted["deletes_withheld"] is False and deleted["counts"]["deleted"] == 1
    assert deleted["consistent_as_of"] == deleted["started_at"]
    (where,) = [r for r in records if value(r)["type"].endswith(".deleted")]
    assert deleted["partitions"] == {str(where.partition): where.offset}


@pytest.mark.sim(enrollments=30)
def test_scan_markers_off_publishes_none(sim, broker, tmp_path: Path) -> None:
    off = settings_for(sim, broker, tmp_path, scan_markers=False)
    with capture_logs() as logs:
        assert poll(off).completed
    assert "scan_marker_published" not in [entry["event"] for entry in logs]
    on = settings_for(sim, broker, tmp_path / "on")
    poll(on)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, bootstrap_timeout_ms=5000)
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    # Not even created (kafka.create_topics is on): nothing was meant for it.
    assert off.kafka.control_topic not in topics
    assert on.kafka.control_topic in topics  # created up front, like the data topic
    assert len(markers(broker, on, expected=1)) == 1


# ---- resumed scans and a failed marker send ------------------------------------------------


def _stop_after_first_page(runtime: Runtime) -> Callable[[PassResult], None]:
    def on_page(result: PassResult) -> None:
        if result.stats.pages == 1:
            runtime.stop.set()

    return on_page


@pytest.mark.sim(enrollments=250)
def test_a_scan_resumed_in_the_same_process_knows_all_its_offsets(
    sim, broker, tmp_path: Path
) -> None:
    settings = settings_for(sim, broker, tmp_path)
    runtime = Runtime.open(settings)
    try:
        with pytest.raises(Exception, match="stop requested"):
            poll(settings, runtime=runtime, on_page=_stop_after_first_page(runtime))
        runtime.stop.clear()
        assert poll(settings, runtime=runtime).completed
    finally:
        runtime.close()

    records = data_topic(broker, settings, expected=250)
    (marker,) = (m["data"] for m in markers(broker, settings, expected=1))
    assert marker["partial"] is False
    assert marker["counts"]["created"] == 250
    assert marker["partitions"] == last_per_partition(records, lambda r: True)


@pytest.mark.sim(enrollments=250)
def test_a_scan_resumed_after_a_restart_says_its_offsets_are_partial(
    sim, broker, tmp_path: Path
) -> None:
    settings = settings_for(sim, broker, tmp_path)
    before = Runtime.open(settings)
    try:
        with pytest.raises(Exception, match="stop requested"):
            poll(settings, runtime=before, on_page=_stop_after_first_page(before))
    finally:
        before.close()
    assert poll(settings).completed  # a new process (Runtime) resumes at page 2

    records = data_topic(broker, settings, expected=250)
    (marker,) = (m["data"] for m in markers(broker, settings, expected=1))
    assert marker["partial"] is True
    assert marker["counts"]["created"] == 150  # this process's part: pages 2 and 3
    # Still the scan's last event where this process wrote; and still consistent.
    assert marker["partitions"] == last_per_partition(records, lambda r: True)
    assert marker["consistent_as_of"] == marker["started_at"]


@pytest.mark.sim(enrollments=150)
def test_a_marker_kafka_did_not_take_stays_in_the_outbox_and_goes_first(
    sim, own_broker, tmp_path: Path
) -> None:
    settings = settings_for(
        sim, own_broker, tmp_path, request_timeout_ms=1000, delivery_timeout_ms=2000
    )

    def pause_after_last_page(result: PassResult) -> None:
        if result.stats.pages == 2:  # published: only the marker is left to send
            own_broker.pause()

    try:
        with pytest.raises(SinkError, match="control"):
            poll(settings, on_page=pause_after_last_page)
        runtime = Runtime.open(settings)
        try:
            (pending,) = runtime.store.pending(ACME)
            state = runtime.store.state(ACME)
        finally:
            runtime.close()
        assert not state.in_progress and state.last_full_scan_at is not None  # scan closed
        assert pending.topic == settings.kafka.control_topic
        validate_event(pending.value)
    finally:
        own_broker.resume()
    with capture_logs() as logs:
        assert poll(settings).completed
    events = [entry["event"] for entry in logs]
    # The pending marker went before the new scan's first page.
    assert events.index("outbox_published") < events.index("scan_finished")
    # The send that failed may have landed after the resume too: a redelivery, the same
    # bytes and id (consumers drop duplicates by id), never a second, different marker.
    records = read_topic(own_broker.bootstrap, settings.kafka.control_topic, expected=2)
    values = [r.value for r in sorted(records, key=lambda r: (r.partition, r.offset))]
    assert values[0] == pending.value and set(values[1:-1]) <= {pending.value}
    assert [orjson.loads(v)["data"]["scan"] for v in dict.fromkeys(values)] == [1, 2]
