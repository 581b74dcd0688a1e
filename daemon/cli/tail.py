"""``tail``: read topics and print their CloudEvents, one line each.

Used by ``lms-changefeed tail`` (an operator command: it needs only the ``kafka`` section)
and by the ``dev`` stack's live view (which also folds each stream's initial sync into one
summary line).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from rich.console import Console
from rich.text import Text

from daemon import log as logsetup
from daemon.cli.common import interrupted_or
from daemon.errors import SinkError
from daemon.service import StopOnSignal
from daemon.settings import load_kafka_settings
from daemon.sink.kafka_clients import BOOTSTRAP_TIMEOUT_MS

_POLL_MS = 500
# tansu reports end offsets wrongly (last batch's base + 1), so "the end of what exists" is
# found by reading: a poll that brings nothing for this long after the last record.
_END_QUIET_MS = 3000
# Offsets are still good as a lower bound (tansu reports ends short, never long): while
# fewer records than that were read, a quiet poll is a slow start, not the end, up to this.
_END_PATIENCE_SECONDS = 20.0
_VALUE_WIDTH = 40
_COLOURS = {"created": "green", "updated": "yellow", "deleted": "red"}


@dataclass
class EventView:
    """Renders events as single lines on ``console``.

    With ``summarise_initial``, events marked ``initial_sync`` are counted per stream, not
    printed: the count is shown once the stream's initial events stop for ``quiet``
    seconds (or a live event of the stream arrives).
    """

    console: Console
    summarise_initial: bool = False
    show_time: bool = True
    quiet: float = 2.0
    shown: int = 0
    _initial: dict[str, list[float]] = field(default_factory=dict)  # stream: [count, last]

    def show(self, key: bytes | None, value: bytes | None) -> None:
        """One record of a topic."""
        self.shown += 1
        if value is None:
            self._print(Text(f"tombstone {key.decode() if key else ''}", style="dim"))
            return
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            self._print(Text(f"not JSON {value[:200]!r}", style="red"))
            return
        if not isinstance(event, dict):
            self._print(Text(f"not a CloudEvent {value[:200]!r}", style="red"))
            return
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        stream = f"{data.get('connector')}/{data.get('model')}"
        if self.summarise_initial and data.get("initial_sync"):
            entry = self._initial.setdefault(stream, [0, 0.0])
            entry[0] += 1
            entry[1] = time.monotonic()
            return
        self._flush(stream)
        self._print(self.line(event, data, stream))

    def idle(self) -> None:
        """Called between reads: prints the summaries of initial syncs gone quiet."""
        now = time.monotonic()
        for stream, (_, last) in list(self._initial.items()):
            if now - last >= self.quiet:
                self._flush(stream)

    def close(self) -> None:
        """Prints what is still counted."""
        for stream in list(self._initial):
            self._flush(stream)

    def line(self, event: Mapping[str, Any], data: Mapping[str, Any], stream: str) -> Text:
        """``kind connector/model [id] [changes | scan summary] [time]``: the stream once
        (a scan marker's subject is the stream itself)."""
        kind = str(event.get("type", "")).rsplit(".", 1)[-1]
        text = Text()
        text.append(f"{kind:8}", style=_COLOURS.get(kind, "white"))
        text.append(f" {stream}")
        subject = event.get("subject")
        if subject is not None and str(subject) != stream:
            text.append(f" {subject}")
        changes = data.get("changes")
        if isinstance(changes, dict) and changes:
            text.append(
                " "
                + ", ".join(
                    f"{name}: {_short(change, 'old')} → {_short(change, 'new')}"
                    for name, change in changes.items()
                )
            )
        if kind == "scan_completed":
            text.append(f" {_scan_summary(data)}")
        elif kind == "rejected" and data.get("reason"):
            text.append(f" {data.get('reason')}")
        if self.show_time and event.get("time"):
            text.append(f"  {event.get('time')}", style="dim")
        return text

    def note(self, message: str, style: str = "dim") -> None:
        """A line of the dev stack's own (a mutation, a hint)."""
        self._print(Text(message, style=style))

    def _flush(self, stream: str) -> None:
        entry = self._initial.pop(stream, None)
        if entry:
            self._print(
                Text.assemble(
                    ("initial sync", "cyan"),
                    f" {stream}: {int(entry[0])} created event(s) (--verbose shows each)",
                )
            )

    def _print(self, text: Text) -> None:
        # soft_wrap: one event is one line, however narrow the terminal.
        self.console.print(text, soft_wrap=True, highlight=False)


def _scan_summary(data: Mapping[str, Any]) -> str:
    """``full scan #3: 250 created, 0 updated`` (+ withheld deletes)."""
    counts = data.get("counts")
    counted = (
        ", ".join(f"{value} {name}" for name, value in counts.items())
        if isinstance(counts, dict)
        else ""
    )
    summary = f"{data.get('kind')} scan #{data.get('scan')}" + (f": {counted}" if counted else "")
    return summary + ("; deletes withheld" if data.get("deletes_withheld") else "")


def _short(change: object, side: str) -> str:
    value = change.get(side) if isinstance(change, dict) else change
    text = repr(value)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


def open_consumer(configs: Mapping[str, Any]) -> KafkaConsumer:
    """A consumer without a group (assign(): no join delay, no offsets committed).

    Raises SinkError, naming the servers, when the cluster does not answer within 5 s.
    """
    servers = configs.get("bootstrap_servers")
    try:
        return KafkaConsumer(
            **{k: v for k, v in configs.items() if v is not None},
            enable_auto_commit=False,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
    except (KafkaError, OSError) as exc:
        raise SinkError(
            f"Kafka at {servers} is not reachable (no answer within "
            f"{BOOTSTRAP_TIMEOUT_MS / 1000:g}s): {type(exc).__name__}"
        ) from None


def _assign(consumer: KafkaConsumer, topics: Sequence[str], servers: object) -> list[Any]:
    assigned: list[TopicPartition] = []
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise SinkError(f"topic {topic} does not exist (yet) at {servers}")
        assigned += [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    return assigned


def _known_records(consumer: KafkaConsumer, assigned: list[Any]) -> int:
    """How many records the partitions hold at least (0 when the broker will not say)."""
    try:
        begin = consumer.beginning_offsets(assigned)
        end = consumer.end_offsets(assigned)
    except KafkaError:
        return 0
    return sum(max(0, (end.get(tp) or 0) - (begin.get(tp) or 0)) for tp in assigned)


def tail(
    configs: Mapping[str, Any],
    topics: Sequence[str],
    *,
    from_beginning: bool,
    limit: int | None = None,
    stop: threading.Event | None = None,
    view: EventView | None = None,
    note: Callable[[str], None] | None = None,
) -> int:
    """Print events until ``stop``, Ctrl-C or ``limit`` events; returns the exit code.

    With ``from_beginning`` and ``limit``, it stops at the end of what the topics hold
    when that comes first. ``note`` hears, once each, that it is waiting for events and
    that it reached the end. Raises SinkError when Kafka is unreachable, or a topic does
    not exist.
    """
    stop = stop or threading.Event()
    view = view or EventView(Console())
    servers = configs.get("bootstrap_servers")
    stops_at_end = from_beginning and limit is not None
    consumer = open_consumer(configs)
    try:
        assigned = _assign(consumer, topics, servers)
        known = _known_records(consumer, assigned) if stops_at_end else 0
        patience = time.monotonic() + _END_PATIENCE_SECONDS
        if from_beginning:
            consumer.seek_to_beginning(*assigned)
        else:
            consumer.seek_to_end(*assigned)
        waiting_said = False
        while (limit is None or view.shown < limit) and not stop.is_set():
            batch = consumer.poll(timeout_ms=_END_QUIET_MS if stops_at_end else _POLL_MS)
            if not batch and stops_at_end:
                if view.shown < min(known, limit or 0) and time.monotonic() < patience:
                    continue  # records known to exist have not come yet
                if note is not None:
                    note(f"end of {', '.join(topics)}: {view.shown} event(s), fewer than {limit}")
                break
            if not batch and not waiting_said and note is not None:
                waiting_said = True
                note(f"waiting for events on {', '.join(topics)} (Ctrl-C stops)")
            for records in batch.values():
                for record in records:
                    if limit is not None and view.shown >= limit:
                        break
                    view.show(record.key, record.value)
            view.idle()
        return 0
    except KeyboardInterrupt:
        return 130
    except KafkaError as exc:
        raise SinkError(
            f"reading from Kafka at {servers} failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        view.close()
        consumer.close()


def _stderr_note(message: str) -> None:
    print(f"tail: {message}", file=sys.stderr, flush=True)


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the events of topics, one line each: 0 at ``--limit`` (or the end of what
    exists, with ``--from-beginning``), 130 on Ctrl-C."""
    from daemon.sink.kafka_clients import client_configs

    kafka = load_kafka_settings(args.config, bootstrap=args.bootstrap)
    logsetup.configure("WARNING", "auto")
    # tail says itself, in one line, when Kafka cannot be reached.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stop = threading.Event()
    signals = StopOnSignal(stop)
    code = tail(
        client_configs(kafka),
        args.topic,
        from_beginning=args.from_beginning,
        limit=args.limit,
        stop=stop,
        note=_stderr_note,
    )
    return interrupted_or(code, signals.received)
