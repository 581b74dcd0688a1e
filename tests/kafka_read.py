"""Read a whole topic back from the broker, for assertions.

tansu 0.6.0 misreports end offsets (last batch's base offset + 1), so "read up to the end"
is not available: read until the expected count arrived, or until the topic stays quiet.
No consumer group either: joining one costs ~session_timeout/2 on tansu.
"""

from __future__ import annotations

import time
from typing import Any

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
) -> list[Any]:
    """All records of ``topic`` from the beginning, in arrival order.

    Stops once ``expected`` records arrived and nothing more came for a short while (to
    catch extras), or when nothing arrived for ``quiet_seconds``, or at ``timeout``.
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
        while True:
            now = time.monotonic()
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
