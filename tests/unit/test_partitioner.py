"""The sink's key partitioner against kafka-python's (the Java client's arithmetic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_murmur2

from daemon.sink.partitioner import murmur2, partition_for


@given(st.binary(max_size=300))
def test_murmur2_equals_kafka_pythons_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == kafka_murmur2(data)


@given(st.text(min_size=1, max_size=80), st.integers(min_value=1, max_value=64))
def test_a_key_gets_the_partition_the_default_partitioner_gives_it(
    record_id: str, partitions: int
) -> None:
    # kafka.partitioner.default.DefaultPartitioner.partition, for a key.
    key = record_id.encode()
    assert partition_for(key, partitions) == (kafka_murmur2(key) & 0x7FFFFFFF) % partitions


def test_every_tail_length_is_covered() -> None:
    # Lengths 0-3 past a word boundary take different branches at the end.
    for length in range(12):
        data = bytes(range(1, length + 1))
        assert murmur2(data) == kafka_murmur2(data), length
