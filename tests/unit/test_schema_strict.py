"""Bug 11: every event the daemon can publish validates against the schema its
``dataschema`` names, for every value the API documents (nulls included), and the schemas
compile in strict mode. Pure: the daemon's own event builders, no broker."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, get_type_hints

import jsonschema_rs
import orjson
import pytest
from jsonschema import ValidationError

from daemon.diff import content_hash, deleted_events, diff_page
from daemon.models import RejectedItem, StoredRow, StreamKey
from daemon.settings import LMS_MODELS
from daemon.sink import schemas, shape
from daemon.sink.events import (
    ScanMarker,
    cloudevent,
    rejected_cloudevent,
    scan_completed_cloudevent,
    to_messages,
)
from daemon.sink.records import RECORD_FIELDS
from daemon.timestamps import format_epoch, normalize_time, parse_time
from tests.schema_check import validate_event
from tests.strict_schema import known_keywords, rs_registry, rs_validator, strict_compile
from tests.strict_schema import strict_problems as problems

BASE = "https://schemas.example.com/lms-changefeed/v1"
RID = "018cc35f-2800-7db9-82dc-10ed7b71f42c"
OTHER = "01961c73-ff5e-7526-bd6e-6364c6b54233"
MODIFIED = "2025-01-01T00:00:00Z"

# ---- the schemas compile in strict mode ------------------------------------------------


@pytest.mark.parametrize("base_uri", [None, BASE], ids=["urn", "base-uri"])
def test_every_schema_compiles_in_strict_mode(base_uri: str | None) -> None:
    generated = schemas.all_schemas(base_uri)
    assert len(generated) == len(LMS_MODELS) * (1 + 2 * len(schemas.EVENT_KINDS))
    assert strict_compile(generated) == []


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        # What an independent validator refused in 0.2's envelopes.
        ({"const": "urn:x", "format": "uri"}, "'format' without a type"),
        ({"anyOf": [{"pattern": "^a"}, {"type": "null"}]}, "anyOf/0: 'pattern' without a type"),
        ({"type": "object", "properties": {"a": {"minimum": 0}}}, "'minimum' without a type"),
        ({"required": ["a"]}, "'required' without a type"),
        ({"type": "string", "maxlength": 3}, "unknown keyword 'maxlength'"),
        ({"type": "object", "definitions": {}}, "unknown keyword 'definitions'"),
        ({"type": ["string", "null"]}, "union type"),
        ({"type": "object", "anyOf": [{"type": "string"}]}, "contradicts"),
    ],
)
def test_the_strict_rules_refuse(schema: dict[str, Any], problem: str) -> None:
    found = problems(schema)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 0},
        {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}},
        {"type": "string", "anyOf": [{"format": "uuid"}, {"pattern": "^x"}]},
        {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        {"const": "1.0", "description": "no type needed", "examples": ["1.0"]},
    ],
)
def test_the_strict_rules_accept(schema: dict[str, Any]) -> None:
    assert problems(schema) == []


def test_the_known_keywords_come_from_the_2020_12_vocabularies() -> None:
    keywords = known_keywords()
    expected = {"$id", "$ref", "anyOf", "prefixItems", "format", "examples", "contentSchema"}
    assert expected <= keywords
    assert not {"definitions", "dependencies", "$recursiveRef", "nullable"} & keywords


def test_jsonschema_rs_refuses_unknown_formats_and_asserts_known_ones() -> None:
    registry = rs_registry({"x.json": {"$id": "urn:x:1", "type": "string"}})
    with pytest.raises(ValueError, match="Unknown format"):
        rs_validator({"type": "string", "format": "no-such-format"}, registry)
    marker = rs_validator(schemas.data_schema("users", "scan_completed"), _all_rs())
    body = scan_completed_cloudevent(_marker())["data"]
    marker.validate(dict(body))
    with pytest.raises(jsonschema_rs.ValidationError):
        marker.validate({**body, "started_at": "yesterday"})


def test_the_envelope_names_what_strict_checks_refused_before() -> None:
    envelope = schemas.event_schema("enrollments", "created")["properties"]["dataschema"]
    assert envelope["type"] == "string" and envelope["format"] == "uri"
    marker = schemas.data_schema("enrollments", "scan_completed")["properties"]["partitions"]
    assert marker["propertyNames"]["type"] == "string"


def _all_rs() -> jsonschema_rs.Registry:
    return rs_registry(schemas.all_schemas())


# ---- every documented value, nulls included --------------------------------------------

UUIDS = [RID, OTHER.upper()]
ISO_TIMES = [
    "2026-11-26T10:00:00Z",
    "2026-11-26T10:00:00.123456+02:00",
    "2026-11-26T10:00:00",  # ISO 8601 without an offset: not RFC 3339
]


def _relation(*fields: str) -> list[Any]:
    expanded = {"id": OTHER, "remote_id": "X-1", "modified_at": MODIFIED}
    return [*UUIDS, expanded, {f: expanded.get(f) for f in fields}, {}, None]


# What shared/bindbee-api.md documents for each model's fields (the values, not the schema
# code): every type it names, and null wherever it allows one or names no type.
COMMON: dict[str, list[Any]] = {
    "remote_id": ["ENR-1", "", None],
    "custom_fields": [{}, {"cost_center": "A", "mandatory": True}, None],
    "raw_data": [{}, {"anything": [1, None, {"deep": "x"}]}],
}
DOCUMENTED: dict[str, dict[str, list[Any]]] = {
    "enrollments": {
        "user": _relation("id", "first_name"),
        "course": _relation("name"),
        "start_date": [*ISO_TIMES, None],
        "end_date": [*ISO_TIMES, None],
        "completion": _relation("score"),
    },
    "users": {
        "first_name": ["Ada", "", None],
        "last_name": ["Lovelace", None],
        "email_address": ["ada@example.com", "not an address", "", None],
        "status": ["ACTIVE", "PENDING", "INACTIVE", "SUSPENDED_BY_LMS", None],
    },
    "courses": {
        "name": ["Safety 101", None],
        "description": ["A course.", "", None],
        "url": ["https://lms.example/c/1", "relative/path", None],
        "duration": ["PT1H30M", None],
        "languages": [["en", "de"], [], None],
        "status": ["ACTIVE", "ARCHIVED", None],
    },
    "contents": {},
    "completions": {
        "user": _relation("id"),
        "course": _relation("id"),
        "content": _relation("id"),
        "score": [87.5, 100, 0, None],
        "grade": ["A", "PASS", None],
        "started_at": [*ISO_TIMES, None],
        "completed_at": [*ISO_TIMES, None],
        "time_duration": ["PT600S", None],
    },
}


def test_the_table_covers_every_field_the_schemas_describe() -> None:
    for model in LMS_MODELS:
        described = set(RECORD_FIELDS[model]) - {"id", "modified_at"}
        assert described == set(COMMON) | set(DOCUMENTED[model]), model


def _cases() -> list[tuple[str, str, Any]]:
    cases = []
    for model in LMS_MODELS:
        for field, values in {**COMMON, **DOCUMENTED[model]}.items():
            cases += [(model, field, value) for value in values]
        cases += [(model, "modified_at", value) for value in ISO_TIMES]
        cases += [(model, "id", value) for value in UUIDS]
    return cases


def _stored(record: dict[str, Any]) -> StoredRow:
    return StoredRow(
        record["id"], normalize_time(record["modified_at"]), content_hash(record, ()), record
    )


@pytest.mark.parametrize(("model", "field", "value"), _cases())
def test_every_documented_value_validates_in_every_event(model: str, field: str, value) -> None:
    key = StreamKey("acme", model)
    record = {"id": RID, "modified_at": MODIFIED, field: value}
    record_id = record["id"]
    old = {"id": record_id, "modified_at": "2024-06-01T00:00:00Z", field: "previous"}
    if field in ("id", "modified_at"):
        old = {**record, "modified_at": "2024-06-01T00:00:00Z", "remote_id": "before"}
    (created,) = diff_page(key, [record], {}).events
    (updated,) = diff_page(key, [record], {record_id: _stored(old)}).events
    (deleted,) = deleted_events(key, [_stored(record)])
    assert (created.type, updated.type) == ("created", "updated")
    for event in (created, updated, deleted):
        for base_uri in (None, BASE):
            for message in to_messages(event, "t", tombstone=True, schema_base_uri=base_uri):
                validate_event(message.value, base_uri=base_uri)
    data = orjson.loads(to_messages(created, "t")[0].value)["data"]
    assert data["record"][field] == value


def test_records_still_refuse_what_the_api_never_sends() -> None:
    (event,) = diff_page(
        StreamKey("acme", "enrollments"), [{"id": RID, "modified_at": MODIFIED}], {}
    ).events
    good = orjson.loads(to_messages(event, "t")[0].value)
    validate_event(copy.deepcopy(good))
    for field, value in (
        ("user", 7),
        ("start_date", 3),
        ("custom_fields", []),
        ("raw_data", "text"),
        ("user", "not-a-uuid"),
        ("modified_at", None),
    ):
        broken = copy.deepcopy(good)
        broken["data"]["record"][field] = value
        with pytest.raises(ValidationError):
            validate_event(broken)


# ---- the shape is defined once ---------------------------------------------------------


def _marker(**overrides: Any) -> ScanMarker:
    values: dict[str, Any] = {
        "stream": StreamKey("acme", "users"),
        "data_topic": "bindbee.lms.users",
        "scan": 3,
        "kind": "full",
        "started_at": 1.7e9,
        "finished_at": 1.7e9 + 12.5,
        "modified_since": None,
        "counts": dict.fromkeys(
            ("created", "updated", "deleted", "unchanged", "stale", "rejected", "dead_lettered"), 0
        ),
        "delete_guard": None,
        "partitions": {0: 41, 1: 7},
        "partial": False,
        "initial_sync": False,
        "consistent": True,
    }
    return ScanMarker(**(values | overrides))


def _keys(typed: type) -> tuple[set[str], set[str]]:
    """(every key, the required keys) of a shape.py TypedDict."""
    hints = get_type_hints(typed, include_extras=True)
    return set(hints), set(typed.__required_keys__)  # type: ignore[attr-defined]


def _built() -> list[tuple[dict[str, Any], type, type]]:
    key = StreamKey("acme", "enrollments")
    record = {"id": RID, "modified_at": MODIFIED, "user": None}
    (created,) = diff_page(key, [record], {}).events
    changed = {**record, "user": OTHER, "modified_at": "2025-02-01T00:00:00Z"}
    (updated,) = diff_page(key, [changed], {RID: _stored(record)}).events
    item = RejectedItem(2, {"id": 5}, "bad_id", "item 2 has an id that is not a string")
    rejected = rejected_cloudevent(
        key, item, digest="0" * 32, page=1, scan=2, record_id=None, now=1.7e9
    )
    change = (shape.ChangeCloudEvent, shape.ChangeData)
    return [
        (dict(cloudevent(created)), *change),
        (dict(cloudevent(updated)), *change),
        (dict(rejected), shape.RejectedCloudEvent, shape.RejectedData),
        (
            dict(scan_completed_cloudevent(_marker())),
            shape.ScanCompletedCloudEvent,
            shape.ScanCompletedData,
        ),
        (
            dict(
                scan_completed_cloudevent(
                    _marker(consistent=False, kind="incremental", modified_since=MODIFIED)
                )
            ),
            shape.ScanCompletedCloudEvent,
            shape.ScanCompletedData,
        ),
    ]


def test_what_events_py_builds_is_what_shape_py_declares() -> None:
    for body, envelope, data in _built():
        for value, typed in ((body, envelope), (body["data"], data)):
            every, required = _keys(typed)
            assert required <= set(value) <= every, (typed.__name__, set(value) ^ every)
        validate_event(body)


def test_the_schemas_list_the_shapes_fields() -> None:
    for kind, (envelope, data) in {
        "created": (shape.ChangeCloudEvent, shape.ChangeData),
        "rejected": (shape.RejectedCloudEvent, shape.RejectedData),
        "scan_completed": (shape.ScanCompletedCloudEvent, shape.ScanCompletedData),
    }.items():
        for generated, typed in (
            (schemas.event_schema("courses", kind), envelope),
            (schemas.data_schema("courses", kind), data),
        ):
            every, required = _keys(typed)
            assert set(generated["properties"]) == every
            assert set(generated["required"]) == required, (kind, typed.__name__)
    updated = schemas.data_schema("courses", "updated")
    assert "changes" in updated["required"]
    assert schemas.data_schema("courses", "created")["properties"]["changes"] is False


# ---- one time format ---------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.0, 1.5e9, 1_700_000_000.123456, 253402300799.0])
def test_format_epoch_is_the_stores_normal_form(seconds: float) -> None:
    text = format_epoch(seconds)
    assert text == datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert normalize_time(text) == text
    assert parse_time(text) == datetime.fromtimestamp(seconds, UTC)
