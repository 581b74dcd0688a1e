"""The consumers' promise as a test helper: replay a topic, compare it with the source.

The promise: replay every event of a topic in order, applying ``created``/``updated`` as
"put ``data.record``" and ``deleted`` as "remove", and you get exactly the source's current
data (minus ``ignore_fields``). Nothing lost, nothing invented, duplicates only as
redeliveries carrying the same event id.

``check(...)`` reads a whole topic (assign + seek, no consumer group), replays it and
returns a ``Report`` listing every difference; ``report.assert_holds()`` fails with all of
them. Per-key order is what Kafka guarantees (a key always lands in the same partition), so
the replay goes partition by partition in offset order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from daemon.timestamps import normalize_time
from tests.kafka_read import read_topic

# What the list endpoint leaves out unless asked (include_custom_fields / include_raw_data).
_OPTIONAL_FIELDS = {"custom_fields": "include_custom_fields", "raw_data": "include_raw_data"}
_SHOWN = 5  # examples per kind of problem in a failure message


@dataclass
class Report:
    """What a replay of one topic shows, compared with the source's current data."""

    topic: str
    messages: int = 0
    events: int = 0
    tombstones: int = 0
    types: Counter[str] = field(default_factory=Counter)
    redeliveries: int = 0
    """Events whose id was already seen, with identical bytes (allowed)."""
    replica: dict[str, dict[str, Any]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    """Event ids seen twice with different bytes (never allowed)."""
    invented: list[str] = field(default_factory=list)
    """Events that cannot be right: updates/deletes of unknown ids, updates that change
    nothing (a duplicate under a new event id), one key in two partitions."""
    misplaced: list[str] = field(default_factory=list)
    """Records whose replay differs when consumers drop redeliveries by id."""
    missing: list[str] = field(default_factory=list)
    """In the source, absent from the replay (lost)."""
    extra: list[str] = field(default_factory=list)
    """In the replay, absent from the source (a phantom)."""
    different: dict[str, list[str]] = field(default_factory=dict)
    """Id -> fields whose values differ between the replay and the source."""

    @property
    def problems(self) -> list[str]:
        """Every violation, one line each (empty when the promise holds)."""
        out: list[str] = []

        def add(kind: str, items: Sequence[str]) -> None:
            if items:
                shown = ", ".join(items[:_SHOWN]) + (" ..." if len(items) > _SHOWN else "")
                out.append(f"{len(items)} {kind}: {shown}")

        add("event ids with different contents", self.conflicts)
        add("invented events", self.invented)
        add("records a deduplicating consumer gets differently", self.misplaced)
        add("records lost (in the source, not in the replay)", self.missing)
        add("phantom records (in the replay, not in the source)", self.extra)
        add(
            "records with different content",
            [f"{rid} {fields}" for rid, fields in sorted(self.different.items())],
        )
        return out

    @property
    def ok(self) -> bool:
        """True when nothing was lost, invented or changed."""
        return not self.problems

    def assert_holds(self) -> None:
        """Fail with every problem found."""
        assert self.ok, f"invariant broken on {self.topic} ({self.summary()}):\n" + "\n".join(
            self.problems
        )

    def summary(self) -> str:
        """Counts, for logs and reports."""
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.types.items()))
        return (
            f"{self.events} events ({types}), {self.redeliveries} redeliveries, "
            f"{len(self.replica)} records replayed"
        )


def without(record: Mapping[str, Any], ignore_fields: Iterable[str]) -> dict[str, Any]:
    """``record`` minus the ignored fields."""
    ignored = set(ignore_fields)
    return {k: v for k, v in record.items() if k not in ignored}


def source_records(
    sim: Any, connector: str, model: str, params: Mapping[str, object] | None = None
) -> dict[str, dict[str, Any]]:
    """The simulator's current records as the list endpoint shows them, by id."""
    params = params or {}
    hidden = [name for name, flag in _OPTIONAL_FIELDS.items() if not params.get(flag)]
    out = {}
    for record in sim.records(connector, model):
        for name in hidden:
            record.pop(name, None)
        out[record["id"]] = record
    return out


def replay(records: Iterable[Any], topic: str = "", ignore_fields: Iterable[str] = ()) -> Report:
    """Replay ConsumerRecords of one topic; records of each partition in offset order."""
    ignore = tuple(ignore_fields)
    report = Report(topic)
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    seen: dict[str, bytes] = {}
    partition_of: dict[str, int] = {}
    dedup: dict[str, dict[str, Any]] = {}
    replica = report.replica
    for message in ordered:
        report.messages += 1
        key = message.key.decode() if message.key is not None else ""
        if partition_of.setdefault(key, message.partition) != message.partition:
            report.invented.append(
                f"key {key} in partitions {partition_of[key]} and {message.partition}"
            )
        if message.value is None:
            report.tombstones += 1
            continue
        event = orjson.loads(message.value)
        report.events += 1
        kind = event["type"].rsplit(".", 1)[1]
        report.types[kind] += 1
        rid = event["subject"]
        record = event["data"]["record"]
        if rid != key or record.get("id") != rid:
            report.invented.append(f"event {event['id']}: key {key}, subject {rid}")
        previous = seen.get(event["id"])
        redelivery = previous is not None
        if redelivery:
            if previous != message.value:
                report.conflicts.append(event["id"])
            report.redeliveries += 1
        else:
            seen[event["id"]] = message.value
            current = replica.get(rid)
            if kind == "updated" and current is None:
                report.invented.append(f"update of unknown id {rid} (event {event['id']})")
            elif (
                kind != "deleted"
                and current is not None
                and without(current, ignore) == without(record, ignore)
            ):
                report.invented.append(
                    f"{kind} of {rid} that changes nothing: a duplicate under a new event id "
                    f"({event['id']})"
                )
            elif kind == "deleted" and rid not in replica:
                report.invented.append(f"delete of unknown id {rid} (event {event['id']})")
        _apply(replica, kind, rid, record)
        if not redelivery:
            _apply(dedup, kind, rid, record)
    report.misplaced = sorted(
        rid for rid in replica.keys() | dedup.keys() if replica.get(rid) != dedup.get(rid)
    )
    return report


def _apply(replica: dict[str, dict[str, Any]], kind: str, rid: str, record: dict) -> None:
    if kind == "deleted":
        replica.pop(rid, None)
    else:
        replica[rid] = record


def compare(
    report: Report, source: Mapping[str, Mapping[str, Any]], ignore_fields: Iterable[str]
) -> Report:
    """Fill ``missing``/``extra``/``different`` of ``report`` against ``source``."""
    ignore = tuple(ignore_fields)
    replica = report.replica
    report.missing = sorted(source.keys() - replica.keys())
    report.extra = sorted(replica.keys() - source.keys())
    for rid in sorted(source.keys() & replica.keys()):
        got, want = without(replica[rid], ignore), without(source[rid], ignore)
        if got != want:
            report.different[rid] = sorted(
                name for name in got.keys() | want.keys() if got.get(name) != want.get(name)
            )
    return report


def read_replay(
    bootstrap: str,
    topic: str,
    *,
    ignore_fields: Iterable[str] = ("modified_at",),
    expected: int | None = None,
    quiet_seconds: float = 1.5,
    through: Mapping[int, int] | None = None,
) -> Report:
    """Read the whole topic (``through`` a scan's end: ``kafka_read.scan_end``) and replay
    it (no comparison)."""
    records = read_topic(
        bootstrap, topic, expected=expected, quiet_seconds=quiet_seconds, through=through
    )
    return replay(records, topic, ignore_fields)


def check(
    bootstrap: str,
    topic: str,
    sim: Any,
    connector: str,
    model: str = "enrollments",
    *,
    ignore_fields: Iterable[str] = ("modified_at",),
    params: Mapping[str, object] | None = None,
    expected: int | None = None,
    quiet_seconds: float = 1.5,
    through: Mapping[int, int] | None = None,
) -> Report:
    """Read ``topic`` from the beginning, replay it, compare with the simulator's data.

    Call it once the daemon acknowledged everything of interest. ``through`` (the offsets
    of a completed scan, ``kafka_read.scan_end``) reads exactly what that scan and those
    before it published; else ``expected``, a lower bound of the message count, ends the
    read sooner than the topic going quiet.
    """
    source = source_records(sim, connector, model, params)
    report = read_replay(
        bootstrap,
        topic,
        ignore_fields=ignore_fields,
        expected=expected,
        quiet_seconds=quiet_seconds,
        through=through,
    )
    return compare(report, source, ignore_fields)


def unpublished_below(
    watermark: str | None,
    report: Report,
    source: Mapping[str, Mapping[str, Any]],
    ignore_fields: Iterable[str] = ("modified_at",),
) -> list[str]:
    """Ids the watermark has passed although the topic does not carry their content.

    A record with ``modified_at`` at or below the watermark must already be in the replay
    as it is now; anything else means an incremental pass would never look at it again.
    """
    if watermark is None:
        return []
    ignore = tuple(ignore_fields)
    behind = []
    for rid, record in source.items():
        if normalize_time(record["modified_at"]) > watermark:
            continue
        got = report.replica.get(rid)
        if got is None or without(got, ignore) != without(record, ignore):
            behind.append(rid)
    return sorted(behind)
