"""CloudEvents 1.0 (structured mode) for change events, dead letters and scan markers, with
deterministic ids.

Their shape is declared once, in ``shape.py`` (which the schemas are generated from); the
builders here stay plain dict literals, per event on the hot path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson

from daemon.models import ChangeEvent, Message, RejectedItem, ScanKind, StreamKey
from daemon.sink.schemas import data_schema_id
from daemon.sink.shape import (
    ChangeCloudEvent,
    ChangeData,
    RejectedCloudEvent,
    RejectedData,
    ScanCompletedCloudEvent,
    ScanCompletedData,
    ScanCounts,
)
from daemon.timestamps import format_epoch

CONTENT_TYPE = b"application/cloudevents+json"
_HEADERS = (("content-type", CONTENT_TYPE),)


def event_id(event: ChangeEvent) -> str:
    """First 32 hex of sha256 over what makes the event's bytes.

    Connector, model, record id, type and content hash, plus the record's
    ``modified_at`` and the previous content hash: a redelivery of the same
    event has the same id, and two events with different bytes never do.
    """
    parts = (
        event.stream.connector,
        event.stream.model,
        event.record_id,
        event.type,
        event.content_hash,
        event.modified_at,
        event.previous_hash or "",
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def cloudevent(event: ChangeEvent, schema_base_uri: str | None = None) -> ChangeCloudEvent:
    """The CloudEvent as a dict (structured mode).

    ``dataschema`` names the schema of ``data`` (daemon/sink/schemas.py, docs/schemas): a
    URN, or under ``schema_base_uri`` (``kafka.schema_base_uri``) where they are served.
    """
    connector, model = event.stream.connector, event.stream.model
    data: ChangeData = {"connector": connector, "model": model, "record": event.record}
    if event.type == "updated":
        data["changes"] = event.changes or {}
    data["initial_sync"] = event.initial_sync
    return {
        "specversion": "1.0",
        "id": event_id(event),
        "source": f"bindbee/lms/{connector}",
        "type": f"bindbee.lms.{model}.{event.type}",
        "subject": event.record_id,
        "time": event.modified_at,
        "datacontenttype": "application/json",
        "dataschema": data_schema_id(model, event.type, schema_base_uri),
        "data": data,
    }


def to_messages(
    event: ChangeEvent,
    topic: str,
    *,
    tombstone: bool = False,
    schema_base_uri: str | None = None,
) -> list[Message]:
    """Kafka messages for one event: the CloudEvent, plus a null tombstone after a delete."""
    key = event.record_id.encode()
    value = orjson.dumps(cloudevent(event, schema_base_uri))
    messages = [Message(topic, key, value, _HEADERS)]
    if tombstone and event.type == "deleted":
        messages.append(Message(topic, key, None, ()))
    return messages


# ---- dead letters (poison records) ---------------------------------------------------------


def raw_bytes(raw: Any) -> bytes:
    """An item's canonical JSON (sorted keys), whatever it holds.

    orjson refuses what the differ cannot hash either (nesting past its limit, say), so
    those items fall back to the standard library's encoder.
    """
    try:
        return orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(raw).encode(errors="replace")


def fingerprint(raw: Any) -> str:
    """What identifies a bad item's content: 32 hex of blake2b over ``raw_bytes``."""
    return hashlib.blake2b(raw_bytes(raw), digest_size=16).hexdigest()


def rejected_event_id(stream: StreamKey, digest: str) -> str:
    """Deterministic: the same bad content of the same stream always has the same id."""
    parts = (stream.connector, stream.model, "rejected", digest)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def rejected_cloudevent(
    stream: StreamKey,
    item: RejectedItem,
    *,
    digest: str,
    page: int,
    scan: int,
    record_id: str | None,
    now: float,
    schema_base_uri: str | None = None,
) -> RejectedCloudEvent:
    """The ``bindbee.lms.{model}.rejected`` CloudEvent of one poison item (the dead letter).

    ``record_id`` is the record the item stands for, when known (its id, or the stored
    row with its ``remote_id``): the event's ``subject``.
    """
    connector, model = stream.connector, stream.model
    body: RejectedCloudEvent = {
        "specversion": "1.0",
        "id": rejected_event_id(stream, digest),
        "source": f"bindbee/lms/{connector}",
        "type": f"bindbee.lms.{model}.rejected",
    }
    if record_id is not None:
        body["subject"] = record_id
    body["time"] = format_epoch(now)
    body["datacontenttype"] = "application/json"
    body["dataschema"] = data_schema_id(model, "rejected", schema_base_uri)
    data: RejectedData = {
        "connector": connector,
        "model": model,
        "reason": item.reason,
        "detail": item.detail,
        "page": page,
        "scan": scan,
        "position": item.position,
        "record_id": record_id,
        "remote_id": item.remote_id,
        "fingerprint": digest,
        "item": item.raw,
    }
    body["data"] = data
    return body


def rejected_message(
    topic: str,
    stream: StreamKey,
    item: RejectedItem,
    *,
    digest: str,
    page: int,
    scan: int,
    record_id: str | None,
    now: float,
    schema_base_uri: str | None = None,
) -> Message:
    """The dead-letter Kafka message: keyed by the record id, or the fingerprint."""
    body = rejected_cloudevent(
        stream,
        item,
        digest=digest,
        page=page,
        scan=scan,
        record_id=record_id,
        now=now,
        schema_base_uri=schema_base_uri,
    )
    try:
        value = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        try:
            value = json.dumps(body, ensure_ascii=False).encode()
        except (TypeError, ValueError, RecursionError):
            # Past what any encoder nests: the item goes as its text, nothing is lost.
            body["data"]["item"] = raw_bytes(item.raw).decode(errors="replace")
            value = json.dumps(body, ensure_ascii=False).encode()
    return Message(topic, (record_id or digest).encode(), value, _HEADERS)


# ---- scan markers (the control topic) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanMarker:
    """What one completed scan of a stream put on its data topic, for consumers.

    ``partitions`` maps a partition of ``data_topic`` to the acknowledged offset of the
    scan's last message there (only partitions the scan wrote to). ``partial``: an earlier
    process published part of the scan (a restart), so ``counts`` and ``partitions`` cover
    only this process's part. ``consistent`` is set by the caller only for a complete full
    scan that withheld no deletes: the marker then carries ``consistent_as_of``.
    """

    stream: StreamKey
    data_topic: str
    scan: int
    kind: ScanKind
    started_at: float
    finished_at: float
    modified_since: str | None
    counts: Mapping[str, int]
    delete_guard: str | None
    partitions: Mapping[int, int]
    partial: bool
    initial_sync: bool
    consistent: bool
    hint_missed: int | None = None  # measured walks only: changes no hint named


def scan_marker_id(marker: ScanMarker) -> str:
    """Deterministic: a redelivery from the outbox has the same id. The start time is in
    it because a ``reset`` numbers scans from 1 again."""
    stream = marker.stream
    parts = (stream.connector, stream.model, "scan_completed", str(marker.scan),
             repr(marker.started_at))  # fmt: skip
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def scan_completed_cloudevent(
    marker: ScanMarker, schema_base_uri: str | None = None
) -> ScanCompletedCloudEvent:
    """The ``bindbee.lms.{model}.scan_completed`` CloudEvent of one completed scan."""
    connector, model = marker.stream.connector, marker.stream.model
    full = marker.kind == "full"
    data: ScanCompletedData = {
        "connector": connector,
        "model": model,
        "topic": marker.data_topic,
        "scan": marker.scan,
        "kind": marker.kind,
        "started_at": format_epoch(marker.started_at),
        "finished_at": format_epoch(marker.finished_at),
        "covers": "all_records" if full else "modified_since",
        "modified_since": marker.modified_since,
        "initial_sync": marker.initial_sync,
        "counts": cast(ScanCounts, dict(marker.counts)),
        "delete_guard": marker.delete_guard,
        "deletes_withheld": marker.delete_guard is not None,
        "partitions": {str(p): marker.partitions[p] for p in sorted(marker.partitions)},
        "partial": marker.partial,
    }
    if marker.consistent:
        data["consistent_as_of"] = data["started_at"]
    if marker.hint_missed is not None:
        data["hint_missed"] = marker.hint_missed
    return {
        "specversion": "1.0",
        "id": scan_marker_id(marker),
        "source": f"bindbee/lms/{connector}",
        "type": f"bindbee.lms.{model}.scan_completed",
        "subject": str(marker.stream),
        "time": data["finished_at"],
        "datacontenttype": "application/json",
        "dataschema": data_schema_id(model, "scan_completed", schema_base_uri),
        "data": data,
    }


def scan_completed_message(
    topic: str, marker: ScanMarker, *, schema_base_uri: str | None = None
) -> Message:
    """The marker's Kafka message on the control topic, keyed by stream (connector/model):
    one partition holds a stream's markers in order."""
    value = orjson.dumps(scan_completed_cloudevent(marker, schema_base_uri))
    return Message(topic, str(marker.stream).encode(), value, _HEADERS)
