"""The shape of every event, defined once: ``events.py`` builds these dicts, ``schemas.py``
turns the same definitions into the JSON Schemas (docs/schemas).

Each event is a ``TypedDict``; a field's type says what JSON it holds (``str | None`` is a
string or null, ``Literal`` an enum, ``NotRequired`` an optional key) and ``Doc`` adds its
description and any further JSON Schema keywords. A few values depend on the event's model
and kind (its ``type``, ``dataschema``, ...): ``Doc(slot=...)`` names them and the schema
generator fills them in. Building an event stays a plain dict literal on the hot path: the
TypedDicts cost nothing at run time (a unit test checks that what is built has the keys
declared here).

This module does not use ``from __future__ import annotations``: TypedDict reads
``NotRequired`` from real annotations.
"""

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypedDict, get_args

from daemon.models import Record, RejectReason, ScanKind

HEX32 = "^[0-9a-f]{32}$"
UTC_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"


@dataclass(frozen=True)
class Doc:
    """A field's description and extra JSON Schema keywords (``pattern``, ``minimum``, ...).

    ``slot`` names a value that depends on the event's model and kind, filled by the schema
    generator: ``type``, ``dataschema``, ``data``, ``model``, ``record``. ``only_on``: the
    kinds whose ``data`` carries the field (required there, forbidden on the others).
    """

    description: str = ""
    keywords: dict[str, Any] = field(default_factory=dict)
    slot: str | None = None
    only_on: tuple[str, ...] = ()

    def __hash__(self) -> int:  # typing caches Annotated[...] by its metadata
        return hash((self.description, self.slot, self.only_on, repr(self.keywords)))


def doc(description: str = "", *, slot: str | None = None, only_on: tuple[str, ...] = (),
        **keywords: Any) -> Doc:  # fmt: skip
    return Doc(description, keywords, slot, only_on)


def _date_time(description: str) -> Doc:
    return doc(description + " (ISO 8601).", format="date-time")


# ---- the envelope (CloudEvents 1.0, structured mode) -----------------------------------


class Envelope(TypedDict):
    """What every event carries; the kinds below add ``subject``, ``time`` and ``data``."""

    specversion: Literal["1.0"]
    id: Annotated[
        str,
        doc("Deterministic: a redelivery has the same id; consumers drop duplicates by it.",
            pattern=HEX32),
    ]  # fmt: skip
    source: Annotated[str, doc("bindbee/lms/{connector}.", pattern="^bindbee/lms/.+$")]
    type: Annotated[str, doc(slot="type")]
    datacontenttype: Literal["application/json"]
    # Not required: events written before 0.2 (e.g. sent from an upgraded store's outbox)
    # lack it, and CloudEvents makes it optional. Every new event has it.
    dataschema: NotRequired[
        Annotated[
            str, doc("The schema of data; present on every event since 0.2.", slot="dataschema")
        ]
    ]


# ---- change events (the data topic) ----------------------------------------------------


class FieldChange(TypedDict):
    old: Any
    new: Any


class ChangeData(TypedDict):
    connector: Annotated[str, doc("The connector.", minLength=1)]
    model: Annotated[str, doc(slot="model")]
    record: Annotated[Record, doc(slot="record")]
    changes: NotRequired[
        Annotated[
            dict[str, FieldChange],
            doc("The changed top-level fields (ignored fields left out).", only_on=("updated",)),
        ]
    ]
    initial_sync: Annotated[bool, doc("True for the events of a stream's first full scan.")]


class ChangeCloudEvent(Envelope):
    subject: Annotated[str, doc("The record id (the Kafka key).", minLength=1)]
    time: Annotated[
        str,
        doc("The record's modified_at, normalised to UTC (ISO 8601).", format="date-time",
            pattern=UTC_TIME),
    ]  # fmt: skip
    data: Annotated[ChangeData, doc(slot="data")]


# ---- dead letters (the dead-letter topic) ----------------------------------------------


class RejectedData(TypedDict):
    connector: Annotated[str, doc("The connector.", minLength=1)]
    model: Annotated[str, doc(slot="model")]
    reason: Annotated[
        str,
        doc("Why the item was rejected (a code; open list).",
            examples=list(get_args(RejectReason))),
    ]  # fmt: skip
    detail: NotRequired[Annotated[str, doc("The reason in words (which item, which field).")]]
    page: Annotated[int, doc("Page number.", minimum=0)]
    scan: Annotated[int, doc("Scan number.", minimum=0)]
    position: NotRequired[Annotated[int, doc("The item's index in its page's `items`.", minimum=0)]]
    record_id: NotRequired[
        Annotated[
            str,
            doc("The record the item stands for, when known: its id, or the stored record "
                "with its remote_id (also the event's subject)."),
        ]
        | None
    ]  # fmt: skip
    remote_id: NotRequired[Annotated[str, doc("The item's remote_id, when it has one.")] | None]
    fingerprint: NotRequired[
        Annotated[
            str,
            doc("Hash of the item's canonical JSON: the same content is dead-lettered once.",
                pattern=HEX32),
        ]
    ]  # fmt: skip
    item: Annotated[Any, doc("The item as the API returned it (any JSON).")]


class RejectedCloudEvent(Envelope):
    subject: NotRequired[Annotated[str, doc("The record id, when known.")]]
    time: NotRequired[Annotated[str, _date_time("When the event was made")]]
    data: Annotated[RejectedData, doc(slot="data")]


# ---- scan markers (the control topic) --------------------------------------------------

Count = Annotated[int, doc(minimum=0)]


class ScanCounts(TypedDict):
    created: Count
    updated: Count
    deleted: Count
    unchanged: Count
    stale: Count
    rejected: Count
    dead_lettered: NotRequired[Count]


class ScanCompletedData(TypedDict):
    connector: Annotated[str, doc("The connector.", minLength=1)]
    model: Annotated[str, doc(slot="model")]
    topic: Annotated[str, doc("The data topic the scan's events went to.", minLength=1)]
    scan: Annotated[
        int, doc("The stream's scan number (counts from 1 again after `reset`).", minimum=1)
    ]
    kind: Annotated[
        ScanKind,
        doc("full: every record was listed (deletes are found only so); incremental: only "
            "records changed since `modified_since`."),
    ]  # fmt: skip
    started_at: Annotated[str, _date_time("When the scan started")]
    finished_at: Annotated[str, _date_time("When the scan completed (also the event's time)")]
    covers: Annotated[
        Literal["all_records", "modified_since"],
        doc("all_records (a full scan) or the records modified since `modified_since` (an "
            "incremental scan)."),
    ]  # fmt: skip
    modified_since: (
        Annotated[str, _date_time("An incremental scan asked for changes since this time")] | None
    )
    initial_sync: NotRequired[Annotated[bool, doc("True for the stream's first full scan.")]]
    counts: Annotated[
        ScanCounts, doc("What the scan found (only this process's part when `partial`).")
    ]
    delete_guard: Annotated[str, doc("Why the scan withheld its deletes (full scans only).")] | None
    deletes_withheld: Annotated[
        bool, doc("True when the delete guard held the scan's deletes back.")
    ]
    partitions: Annotated[
        dict[Annotated[str, doc(pattern="^[0-9]+$")], Count],
        doc("Partition of `topic` -> offset of the scan's last message there, as Kafka "
            "acknowledged it; only partitions the scan wrote to."),
    ]  # fmt: skip
    partial: Annotated[
        bool,
        doc("True when an earlier process (before a restart, or another replica) published "
            "part of the scan: `counts` and `partitions` cover only this process's part, so "
            "a partition not listed may still hold earlier events of the scan."),
    ]  # fmt: skip
    consistent_as_of: NotRequired[
        Annotated[
            str,
            _date_time(
                "Only on a full scan that withheld no deletes (and was not a silent "
                "baseline): every change of the stream's records made before this time "
                "(the scan's start) is on `topic`, at or before `partitions`' offsets or "
                "in earlier scans"
            ),
        ]
    ]
    hint_missed: NotRequired[
        Annotated[
            int,
            doc("Full scans while webhook hints are read: changes this walk found whose ids "
                "no `connector_data_modified` hint received since the previous walk named "
                "(this process's part when `partial`).", minimum=0),
        ]
    ]  # fmt: skip


class ScanCompletedCloudEvent(Envelope):
    subject: Annotated[str, doc("The stream, connector/model (the Kafka key).", minLength=3)]
    time: Annotated[str, _date_time("When the scan completed")]
    data: Annotated[ScanCompletedData, doc(slot="data")]


# ---- targeted reads (the control topic) ------------------------------------------------


class HintsReadCounts(TypedDict):
    asked: Annotated[int, doc("Hinted ids this stream read by id.", minimum=0)]
    found: Annotated[int, doc("Of those, ids the API returned a record for.", minimum=0)]
    created: Count
    updated: Count
    deleted: Count
    unchanged: Count
    not_found: Annotated[int, doc("Ids the API answered 404 for.", minimum=0)]
    rejected: Annotated[int, doc("Malformed records, sent to the dead-letter topic.", minimum=0)]
    requests: Annotated[int, doc("Data requests the reads took.", minimum=0)]


class HintsReadData(TypedDict):
    connector: Annotated[str, doc("The connector.", minLength=1)]
    model: Annotated[str, doc(slot="model")]
    topic: Annotated[str, doc("The data topic the reads' events went to.", minLength=1)]
    sync_ids: Annotated[
        list[str], doc("Bindbee's sync ids of the hints read (when the deliveries named them).")
    ]
    started_at: Annotated[str, _date_time("When the reads started")]
    finished_at: Annotated[str, _date_time("When the reads finished (also the event's time)")]
    counts: Annotated[HintsReadCounts, doc("What the reads found.")]
    deletes_withheld: Annotated[
        bool, doc("True when the delete guard held back the deletes the reads found.")
    ]
    partitions: Annotated[
        dict[Annotated[str, doc(pattern="^[0-9]+$")], Count],
        doc("Partition of `topic` -> offset of the reads' last message there, as Kafka "
            "acknowledged it; only partitions they wrote to."),
    ]  # fmt: skip


class HintsReadCloudEvent(Envelope):
    subject: Annotated[str, doc("The stream, connector/model (the Kafka key).", minLength=3)]
    time: Annotated[str, _date_time("When the reads finished")]
    data: Annotated[HintsReadData, doc(slot="data")]
