"""KafkaSink against a real tansu broker: round trips, topics, and the failure paths."""

from __future__ import annotations

import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2 as kafka_murmur2
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from daemon.errors import SinkError
from daemon.models import Message
from daemon.settings import KafkaSettings
from daemon.sink.kafka import KafkaSink
from devtools.tansu import TansuBroker
from tests.kafka_read import read_topic

pytestmark = pytest.mark.timeout(60)

PASSWORD = "hunter2-do-not-print"


def settings_for(bootstrap: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "tests",
        "partitions": 3,
        "request_timeout_ms": 5000,
        "delivery_timeout_ms": 10000,
    }
    return KafkaSettings(**(values | overrides))


@pytest.fixture
def sink(broker: TansuBroker) -> Iterator[KafkaSink]:
    made = KafkaSink(settings_for(broker.bootstrap))
    yield made
    made.close()


@pytest.fixture
def own_broker() -> Iterator[TansuBroker]:
    """A broker this test may pause or stop without disturbing the shared one."""
    with TansuBroker() as started:
        yield started


@pytest.fixture
def closed_port() -> int:
    """A local port with nothing listening on it (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def page(topic: str, start: int, count: int, keys: int = 7) -> list[Message]:
    return [
        Message(
            topic=topic,
            key=f"rec-{i % keys}".encode(),
            value=orjson.dumps({"seq": i, "pad": "x" * 500}),
            headers=(("ce_id", f"id-{i}".encode()), ("ce_type", b"lms.enrollment.updated")),
        )
        for i in range(start, start + count)
    ]


def seqs(records: list[Any]) -> list[int]:
    return [orjson.loads(r.value)["seq"] for r in records]


def partition_count(bootstrap: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        (described,) = admin.describe_topics([topic])
        return len(described["partitions"])
    finally:
        admin.close()


def topic_names(bootstrap: str) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        return admin.list_topics()
    finally:
        admin.close()


def test_publish_round_trip_keeps_bytes_headers_and_per_key_order(
    broker: TansuBroker, sink: KafkaSink, topic: str
) -> None:
    sent = page(topic, 0, 300) + page(topic, 300, 300)
    sink.publish(sent[:300])
    sink.publish(sent[300:])

    records = read_topic(broker.bootstrap, topic, expected=len(sent))

    assert len(records) == len(sent)
    got = sorted((r.key, r.value, tuple(r.headers)) for r in records)
    assert got == sorted((m.key, m.value, m.headers) for m in sent)
    by_key: dict[bytes, list[Any]] = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)
    for key, key_records in by_key.items():
        assert len({r.partition for r in key_records}) == 1, key
        # Where any Kafka client puts the key (kafka-python's own partitioner, 3 partitions).
        assert key_records[0].partition == (kafka_murmur2(key) & 0x7FFFFFFF) % 3, key
        in_log_order = sorted(key_records, key=lambda r: r.offset)
        assert seqs(in_log_order) == sorted(seqs(key_records)), key


def test_tombstone_has_a_null_value(broker: TansuBroker, sink: KafkaSink, topic: str) -> None:
    sink.publish([Message(topic, b"rec-1", b'{"a":1}'), Message(topic, b"rec-1", None)])

    records = read_topic(broker.bootstrap, topic, expected=2)

    assert [(r.key, r.value) for r in sorted(records, key=lambda r: r.offset)] == [
        (b"rec-1", b'{"a":1}'),
        (b"rec-1", None),
    ]


def test_publish_of_nothing_does_no_io(closed_port: int) -> None:
    sink = KafkaSink(settings_for(f"127.0.0.1:{closed_port}"))
    sink.publish([])
    sink.close()


def test_concurrent_publishers_share_one_sink(
    broker: TansuBroker, sink: KafkaSink, topic: str
) -> None:
    pages = [page(topic, n * 200, 200) for n in range(4)]
    errors: list[BaseException] = []

    def publish(messages: list[Message]) -> None:
        try:
            sink.publish(messages)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(p,)) for p in pages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    records = read_topic(broker.bootstrap, topic, expected=800)
    assert sorted(seqs(records)) == list(range(800))


def test_ensure_topics_creates_with_configured_partitions_once(
    broker: TansuBroker, topic: str
) -> None:
    settings = settings_for(broker.bootstrap, partitions=4)
    first, second = KafkaSink(settings), KafkaSink(settings)
    with capture_logs() as logs:
        first.ensure_topics([topic])
        first.ensure_topics([topic])  # remembered: no admin round trip
        second.ensure_topics([topic])  # already exists: fine
    assert partition_count(broker.bootstrap, topic) == 4
    created = [entry for entry in logs if entry["event"] == "kafka_topics_created"]
    assert [entry["topics"] for entry in created] == [[topic]]


def test_ensure_topics_does_nothing_when_creation_is_off(broker: TansuBroker, topic: str) -> None:
    sink = KafkaSink(settings_for(broker.bootstrap, create_topics=False))
    sink.ensure_topics([topic])
    assert topic not in topic_names(broker.bootstrap)


def test_publish_creates_its_topic_with_configured_partitions(
    broker: TansuBroker, topic: str
) -> None:
    sink = KafkaSink(settings_for(broker.bootstrap, partitions=5))
    try:
        sink.publish(page(topic, 0, 10))
    finally:
        sink.close()
    assert partition_count(broker.bootstrap, topic) == 5


def test_unreachable_broker_raises_sink_error_without_the_password(closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    settings = settings_for(
        address,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="changefeed",
        sasl_plain_password=SecretStr(PASSWORD),
        request_timeout_ms=500,
        delivery_timeout_ms=1000,
    )
    sink = KafkaSink(settings)

    with capture_logs() as logs, pytest.raises(SinkError) as info:
        sink.publish(page("bindbee.lms.enrollments", 0, 3))
    with pytest.raises(SinkError) as ready:
        sink.check_ready(timeout_seconds=0.5)
    sink.close()

    assert address in str(info.value)
    assert "bindbee.lms.enrollments" in str(info.value)
    assert address in str(ready.value)
    for text in (str(info.value), str(ready.value), repr(sink), repr(settings), str(logs)):
        assert PASSWORD not in text


def test_paused_broker_fails_the_page_and_the_next_publish_recovers(
    own_broker: TansuBroker, topic: str
) -> None:
    settings = settings_for(own_broker.bootstrap, request_timeout_ms=1000, delivery_timeout_ms=2000)
    sink = KafkaSink(settings)
    try:
        with capture_logs() as logs:
            sink.publish(page(topic, 0, 50))
            own_broker.pause()
            try:
                with pytest.raises(SinkError) as info:
                    sink.publish(page(topic, 50, 50))
            finally:
                own_broker.resume()
            sink.publish(page(topic, 100, 50))
    finally:
        sink.close()

    message = str(info.value)
    assert own_broker.bootstrap in message
    assert topic in message
    producers = [entry for entry in logs if entry["event"] == "kafka_producer_created"]
    assert len(producers) == 2  # the failed producer was replaced
    # The failed page may have partly landed after the resume (at-least-once); the pages
    # reported as published must be there in full.
    got = set(seqs(read_topic(own_broker.bootstrap, topic, quiet_seconds=1.0)))
    assert set(range(50)) | set(range(100, 150)) <= got <= set(range(150))


def test_check_ready_follows_the_broker(own_broker: TansuBroker) -> None:
    sink = KafkaSink(settings_for(own_broker.bootstrap))
    sink.check_ready(timeout_seconds=2)
    own_broker.stop()
    with pytest.raises(SinkError, match=own_broker.bootstrap.replace(".", r"\.")):
        sink.check_ready(timeout_seconds=0.5)


def test_timeouts_kafka_python_would_refuse_are_a_config_error() -> None:
    with pytest.raises(ValidationError, match="delivery_timeout_ms"):
        settings_for("127.0.0.1:9", request_timeout_ms=5000, delivery_timeout_ms=4000)


# ---- acknowledged offsets, and when the shared producer is replaced ------------------------


def read_at(bootstrap: str, topic: str, partition: int, offset: int) -> Any:
    """The record at ``offset`` of one partition, by assign() and seek (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        where = TopicPartition(topic, partition)
        consumer.assign([where])
        consumer.seek(where, offset)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.offset == offset:
                        return record
                    raise AssertionError(f"seek to {offset} read offset {record.offset} first")
        raise AssertionError(f"nothing at {topic}[{partition}]@{offset}")
    finally:
        consumer.close()


def test_publish_returns_the_acknowledged_offset_of_each_partitions_last_message(
    broker: TansuBroker, sink: KafkaSink, topic: str
) -> None:
    first = sink.publish(page(topic, 0, 40))
    second = sink.publish(page(topic, 40, 40))

    records = read_topic(broker.bootstrap, topic, expected=80)
    last: dict[tuple[str, int], Any] = {}
    for record in records:
        where = (record.topic, record.partition)
        if where not in last or record.offset > last[where].offset:
            last[where] = record
    # The second page is the latest on every partition it used; seeking there finds it.
    assert second == {where: record.offset for where, record in last.items()}
    for (name, partition), offset in second.items():
        assert seqs([read_at(broker.bootstrap, name, partition, offset)])[0] >= 40
    for where, offset in first.items():
        assert offset < second[where]


def test_a_page_kafka_refuses_keeps_the_producer_for_the_other_streams(
    broker: TansuBroker, sink: KafkaSink, topic: str
) -> None:
    oversize = Message(topic, b"rec-big", b"x" * (2 * 1024 * 1024))  # > max_request_size
    with capture_logs() as logs:
        sink.publish(page(topic, 0, 10))
        with pytest.raises(SinkError, match="MessageSizeTooLargeError") as info:
            sink.publish([*page(topic, 10, 5), oversize])
        sink.publish(page(topic, 15, 10))

    assert "new producer" not in str(info.value)
    events = [entry["event"] for entry in logs]
    assert events.count("kafka_producer_created") == 1
    assert "kafka_producer_kept" in events and "kafka_producer_discarded" not in events
    # What the refused page sent before the refusal may land (at-least-once); the rest did.
    got = set(seqs(read_topic(broker.bootstrap, topic, quiet_seconds=1.0)))
    assert set(range(10)) | set(range(15, 25)) <= got <= set(range(25))


def test_a_producer_whose_idempotent_state_failed_is_replaced(
    broker: TansuBroker, sink: KafkaSink, topic: str
) -> None:
    # tansu cannot be made to answer a produce with a non-retriable error, the one way
    # kafka-python 3.0.12 puts an idempotent producer in this state; so the state is set
    # as the sender sets it, and the producer and broker are real.
    sink.publish(page(topic, 0, 5))
    producer = sink._producer
    assert producer is not None
    producer._transaction_manager.transition_to_fatal_error(KafkaError("poisoned for the test"))
    with capture_logs() as logs:
        with pytest.raises(SinkError, match="new producer"):
            sink.publish(page(topic, 5, 5))
        sink.publish(page(topic, 10, 5))

    events = [entry["event"] for entry in logs]
    assert events.count("kafka_producer_discarded") == 1
    assert events.count("kafka_producer_created") == 1
    assert sink._producer is not producer
    got = set(seqs(read_topic(broker.bootstrap, topic, quiet_seconds=1.0)))
    assert set(range(5)) | set(range(10, 15)) <= got
