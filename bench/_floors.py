"""The I/O floors: a bare httpx page walk, and a bare kafka-python producer.

Both do only what cannot be avoided: the walk fetches the same pages with the same
page size and parameters and parses each body (to find the cursor); the producer sends
the very bytes the daemon sends, with the sink's settings (acks, idempotence,
compression, linger, batch size), and flushes once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import orjson
from _harness import DATA_PATH, PAGE_SIZE, api_headers
from kafka import KafkaProducer

from daemon.diff import diff_page
from daemon.models import Message, Record, StreamKey
from daemon.settings import KafkaSettings
from daemon.sink.events import to_messages
from daemon.sink.kafka import KafkaSink
from daemon.sink.kafka_clients import producer_configs


@dataclass
class Walk:
    seconds: float
    requests: int
    items: int
    pages: list[list[Record]]


def raw_walk(base_url: str, params: dict[str, str] | None = None, keep: bool = False) -> Walk:
    """Fetch every page with a bare keep-alive httpx client; optionally keep the items."""
    pages: list[list[Record]] = []
    requests = items = 0
    with httpx.Client(base_url=base_url, headers=api_headers(), timeout=60) as client:
        cursor: str | None = None
        started = time.perf_counter()
        while True:
            query: dict[str, str | int] = {"page_size": PAGE_SIZE, **(params or {})}
            if cursor is not None:
                query["cursor"] = cursor
            body = orjson.loads(client.get(DATA_PATH, params=query).content)
            requests += 1
            items += len(body["items"])
            if keep:
                pages.append(body["items"])
            cursor = body["cursor"]
            if cursor is None:
                break
        seconds = time.perf_counter() - started
    return Walk(seconds, requests, items, pages)


def initial_sync_messages(
    key: StreamKey, topic: str, pages: Sequence[list[Record]]
) -> list[Message]:
    """The messages an initial sync of ``pages`` publishes, byte for byte (events are pure)."""
    messages: list[Message] = []
    for items in pages:
        for event in diff_page(key, items, {}, initial_sync=True).events:
            messages.extend(to_messages(event, topic))
    return messages


def raw_produce(settings: KafkaSettings, topic: str, messages: Sequence[Message]) -> float:
    """Seconds for one bare producer to send ``messages`` and have every one acknowledged.

    The topic is created first (as the daemon does, outside the timing); the producer is
    connected before the clock starts; one flush at the end.
    """
    KafkaSink(settings).ensure_topics([topic])
    producer = KafkaProducer(**{**producer_configs(settings), "client_id": "bench-floor"})
    try:
        producer.partitions_for(topic)  # metadata, outside the timing
        started = time.perf_counter()
        send = producer.send
        futures = [send(topic, value=m.value, key=m.key, headers=list(m.headers)) for m in messages]
        producer.flush()
        seconds = time.perf_counter() - started
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise RuntimeError(f"floor producer: {len(failed)} sends failed: {failed[0].exception}")
        return seconds
    finally:
        producer.close()
