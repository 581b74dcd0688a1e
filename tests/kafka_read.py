"""Read a whole topic back from the broker, for assertions.

tansu 0.6.0 misreports end offsets (last batch's base offset + 1), so "read up to the end"
is not available. The end of a scan is its ``scan_completed`` marker on the control topic
(docs/consumers.md): ``scan_end`` waits for it and gives the data topic's offsets it
covers, and ``read_topic(..., through=offsets)`` reads exactly that far. Otherwise: read
until the expected count arrived, or until the topic stays quiet (where "nothing more was
published" is itself the assertion). No consumer group: joining one costs
~session_timeout/2 on tansu.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from tests.schema_check import validate_event

_POLL_MS = 200
# After the expected count arrived, keep listening this long to catch extras.
_EXTRA_QUIET_SECONDS = 0.5


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int | None = None,
    quiet_seconds: float = 2.0,
    timeout: float = 60.0,
    validate: bool = True,
    through: Mapping[int, int] | None = None,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """All records of ``topic`` from the beginning, in arrival order.

    With ``through`` (partition → offset, e.g. from ``scan_end``): stops as soon as every
    listed partition was read up to its offset (fails at ``timeout``); records past those
    offsets are left out. With ``until``: stops as soon as ``until(records)`` holds. Otherwise stops
    once ``expected`` records arrived and nothing more came for a short while (to catch
    extras), or when nothing arrived for ``quiet_seconds``, or at ``timeout``.
    Returns kafka-python ConsumerRecords (topic, partition, offset, key, value, headers);
    the caller asserts on the count, so a short read shows up as a clear diff. Every
    CloudEvent read is checked against its JSON Schema (docs/schemas) unless ``validate``
    is false.
    """
    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="tests-read-topic",
    )
    try:
        partitions = _partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        last_arrival = time.monotonic()
        reached: dict[int, int] = {}
        while True:
            now = time.monotonic()
            if through is not None or until is not None:
                if (through is not None and _covers(reached, through)) or (
                    until is not None and until(records)
                ):
                    if through is not None:  # not what a later scan added meanwhile
                        records = [r for r in records if r.offset <= through.get(r.partition, -1)]
                    if validate:
                        _validate(records)
                    return records
                if now >= deadline:
                    raise AssertionError(
                        f"{topic}: read {len(records)} records, up to {reached}, "
                        f"not through {through} within {timeout:g}s"
                    )
                for partition_records in consumer.poll(timeout_ms=_POLL_MS).values():
                    records.extend(partition_records)
                    for record in partition_records:
                        reached[record.partition] = record.offset
                continue
            done = expected is not None and len(records) >= expected
            quiet_for = min(_EXTRA_QUIET_SECONDS, quiet_seconds) if done else quiet_seconds
            if now >= deadline or now - last_arrival >= quiet_for:
                if validate:
                    _validate(records)
                return records
            batch = consumer.poll(timeout_ms=_POLL_MS)
            for partition_records in batch.values():
                records.extend(partition_records)
                last_arrival = time.monotonic()
    finally:
        consumer.close()


def _covers(reached: Mapping[int, int], through: Mapping[int, int]) -> bool:
    return all(reached.get(int(p), -1) >= offset for p, offset in through.items())


def scan_markers(
    bootstrap: str,
    control_topic: str,
    subject: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """The ``data`` of stream ``subject``'s (``connector/model``) ``scan_completed``
    markers, in scan order, read until ``until(markers)`` holds (fails at ``timeout``)."""

    def of_subject(records: list[Any]) -> list[dict[str, Any]]:
        return [
            event["data"]
            for event in (orjson.loads(r.value) for r in records if r.value is not None)
            if event.get("subject") == subject and event["type"].endswith(".scan_completed")
        ]

    records = read_topic(
        bootstrap, control_topic, timeout=timeout, until=lambda got: until(of_subject(got))
    )
    return of_subject(records)


def marked_offsets(markers: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """Partition → the last offset these scans wrote there (the highest any marker lists)."""
    offsets: dict[int, int] = {}
    for marker in markers:
        for partition, offset in marker["partitions"].items():
            offsets[int(partition)] = max(offset, offsets.get(int(partition), -1))
    return offsets


def scan_end(
    bootstrap: str,
    control_topic: str,
    subject: str,
    scan: int | None = None,
    *,
    scans: int = 1,
    timeout: float = 60.0,
) -> dict[int, int]:
    """Wait for a completed scan of ``subject`` (scan number ``scan``, else the
    ``scans``-th marker) and return the data topic's offsets that it and the scans before
    it wrote: ``read_topic(..., through=scan_end(...))`` reads exactly what they published.
    """

    def done(markers: list[dict[str, Any]]) -> bool:
        if scan is not None:
            return any(m["scan"] >= scan for m in markers)
        return len(markers) >= scans

    markers = scan_markers(bootstrap, control_topic, subject, done, timeout)
    covered = [m for m in markers if m["scan"] <= scan] if scan is not None else markers[:scans]
    return marked_offsets(covered)


def _partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return [TopicPartition(topic, p) for p in sorted(ids)]
        if time.monotonic() >= deadline:
            raise AssertionError(f"topic {topic!r} has no partitions in broker metadata")
        time.sleep(_POLL_MS / 1000)  # back-off between metadata fetches, under the deadline


def _validate(records: list[Any]) -> None:
    for record in records:
        if dict(record.headers or ()).get("content-type") == b"application/cloudevents+json":
            validate_event(record.value)
