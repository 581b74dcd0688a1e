"""``tail``: read a topic and pretty-print its CloudEvents."""

from __future__ import annotations

import threading

import orjson
from kafka import KafkaConsumer, TopicPartition
from rich.console import Console


def tail(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool,
    limit: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print events until Ctrl-C, ``stop`` or ``limit`` events; returns the exit code."""
    stop = stop or threading.Event()
    console = Console()
    # assign() instead of a consumer group: no join delay, no offsets committed.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            console.print(f"[red]topic {topic} does not exist (yet)[/red]")
            return 1
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        shown = 0
        while (limit is None or shown < limit) and not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    shown += 1
                    _show(console, record.key, record.value)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()


def _show(console: Console, key: bytes | None, value: bytes | None) -> None:
    if value is None:
        console.print(f"[dim]tombstone {key.decode() if key else ''}[/dim]")
        return
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        console.print(f"[red]not JSON[/red] {value[:200]!r}")
        return
    kind = str(event.get("type", "")).rsplit(".", 1)[-1]
    colour = {"created": "green", "updated": "yellow", "deleted": "red"}.get(kind, "white")
    data = event.get("data") or {}
    line = f"[{colour}]{kind:8}[/{colour}] {event.get('subject')} {event.get('time')}"
    if data.get("changes"):
        line += " " + ", ".join(
            f"{name}: {change.get('old')!r} → {change.get('new')!r}"
            for name, change in data["changes"].items()
        )
    console.print(f"{data.get('connector')}/{data.get('model')} {line}")
