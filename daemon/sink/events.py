"""CloudEvents 1.0 (structured mode) for change events, with deterministic ids."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from daemon.models import ChangeEvent, Message
from daemon.sink.schemas import data_schema_id

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


def cloudevent(event: ChangeEvent, schema_base_uri: str | None = None) -> dict[str, Any]:
    """The CloudEvent as a dict (structured mode).

    ``dataschema`` names the schema of ``data`` (daemon/sink/schemas.py, docs/schemas): a
    URN, or under ``schema_base_uri`` (``kafka.schema_base_uri``) where they are served.
    """
    connector, model = event.stream.connector, event.stream.model
    data: dict[str, Any] = {"connector": connector, "model": model, "record": event.record}
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
