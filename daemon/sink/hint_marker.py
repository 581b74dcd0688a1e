"""The ``bindbee.lms.{model}.hints_read`` marker: a targeted read of a stream completed.

On the control topic, keyed by stream like ``scan_completed``; its shape is declared in
``shape.HintsReadCloudEvent``. Its id is deterministic (the stream and the hints read), so
a resend from the outbox has the same id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import orjson

from daemon.models import Message, StreamKey
from daemon.sink.schemas import data_schema_id
from daemon.sink.shape import HintsReadCloudEvent, HintsReadCounts, HintsReadData
from daemon.timestamps import format_epoch

_HEADERS = (("content-type", b"application/cloudevents+json"),)
HINT_COUNTS = ("asked", "found", "created", "updated", "deleted", "unchanged", "not_found",
               "rejected", "requests")  # fmt: skip
"""The counts a ``hints_read`` marker carries (``HintsReadCounts``)."""


@dataclass(frozen=True, slots=True)
class HintsReadMarker:
    """What one targeted read of a stream did: ``hints`` are the store's hint numbers."""

    stream: StreamKey
    data_topic: str
    hints: Sequence[int]
    sync_ids: Sequence[str]
    started_at: float
    finished_at: float
    counts: Mapping[str, int]
    deletes_withheld: bool
    partitions: Mapping[int, int]


def hints_read_id(marker: HintsReadMarker) -> str:
    stream = marker.stream
    parts = (stream.connector, stream.model, "hints_read", *map(str, sorted(marker.hints)))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def hints_read_cloudevent(
    marker: HintsReadMarker, schema_base_uri: str | None = None
) -> HintsReadCloudEvent:
    connector, model = marker.stream.connector, marker.stream.model
    data: HintsReadData = {
        "connector": connector,
        "model": model,
        "topic": marker.data_topic,
        "sync_ids": list(marker.sync_ids),
        "started_at": format_epoch(marker.started_at),
        "finished_at": format_epoch(marker.finished_at),
        "counts": cast(HintsReadCounts, {k: int(marker.counts.get(k, 0)) for k in HINT_COUNTS}),
        "deletes_withheld": marker.deletes_withheld,
        "partitions": {str(p): marker.partitions[p] for p in sorted(marker.partitions)},
    }
    return {
        "specversion": "1.0",
        "id": hints_read_id(marker),
        "source": f"bindbee/lms/{connector}",
        "type": f"bindbee.lms.{model}.hints_read",
        "subject": str(marker.stream),
        "time": data["finished_at"],
        "datacontenttype": "application/json",
        "dataschema": data_schema_id(model, "hints_read", schema_base_uri),
        "data": data,
    }


def hints_read_message(
    topic: str, marker: HintsReadMarker, *, schema_base_uri: str | None = None
) -> Message:
    """The marker's message on the control topic, keyed by stream."""
    value = orjson.dumps(hints_read_cloudevent(marker, schema_base_uri))
    return Message(topic, str(marker.stream).encode(), value, _HEADERS)
