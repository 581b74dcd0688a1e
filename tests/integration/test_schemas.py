"""The event schemas: valid JSON Schema, committed as generated, and true of real events."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, ValidationError

from daemon.diff import content_hash, deleted_events, diff_page
from daemon.models import RejectedItem, StoredRow, StreamKey
from daemon.runtime import Runtime
from daemon.settings import LMS_MODELS, load_settings
from daemon.sink import schemas
from daemon.sink.events import (
    ScanMarker,
    cloudevent,
    event_id,
    fingerprint,
    rejected_message,
    scan_completed_message,
    to_messages,
)
from tests.helpers import feed_config
from tests.kafka_read import read_topic
from tests.schema_check import validate_event, validator

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REGENERATE = ".venv/bin/python -m daemon.sink.schemas --write docs/schemas"
BASE = "https://schemas.example.com/lms-changefeed/v1"
KEY = StreamKey("acme", "enrollments")
RID = "018cc35f-2800-7db9-82dc-10ed7b71f42c"
USER = "01961c73-ff5e-7526-bd6e-6364c6b54233"
COURSE = "0193024e-87f0-7769-a6e3-0a6deff58635"


def rec(modified_at: str = "2025-01-01T00:00:00Z", **fields: Any) -> dict[str, Any]:
    return {"id": RID, "modified_at": modified_at, "user": USER, "course": COURSE, **fields}


def change_events() -> dict[str, Any]:
    """A created, an updated and a deleted event, built by the daemon's own code."""
    (created,) = diff_page(KEY, [rec(start_date=None)], {}).events
    old = _stored(rec(start_date=None))
    new = rec("2025-01-02T00:00:00Z", start_date="2030-01-01T00:00:00Z")
    (updated,) = diff_page(KEY, [new], {RID: old}).events
    (deleted,) = deleted_events(KEY, [old])
    return {"created": created, "updated": updated, "deleted": deleted}


def _stored(record: dict[str, Any]) -> StoredRow:
    return StoredRow(record["id"], record["modified_at"], content_hash(record, ()), record)


# ---- the schemas themselves ------------------------------------------------------------


@pytest.mark.parametrize("base_uri", [None, BASE])
def test_every_schema_is_a_valid_draft_2020_12_schema(base_uri: str | None) -> None:
    generated = schemas.all_schemas(base_uri)
    assert len(generated) == len(LMS_MODELS) * (1 + 2 * len(schemas.EVENT_KINDS))
    ids = set()
    for name, value in generated.items():
        Draft202012Validator.check_schema(value)
        assert value["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        ids.add(value["$id"])
        if base_uri is not None:
            assert value["$id"] == f"{BASE}/{name}"
    assert len(ids) == len(generated)
    # Every $ref resolves to a generated schema.
    refs = {ref for value in generated.values() for ref in _refs(value)}
    assert refs and refs <= ids


def _refs(value: Any):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_ids_are_urns_or_under_the_base_uri() -> None:
    assert (
        schemas.event_schema("enrollments", "updated")["$id"]
        == "urn:lms-changefeed:schema:enrollments.updated:1"
    )
    assert (
        schemas.data_schema_id("enrollments", "updated")
        == "urn:lms-changefeed:schema:enrollments.updated.data:1"
    )
    assert schemas.data_schema_id("users", "created", BASE + "/") == (
        f"{BASE}/users.created.data.json"
    )
    assert (
        schemas.schema("courses", "record")["$id"] == "urn:lms-changefeed:schema:courses.record:1"
    )
    assert schemas.schema("courses", "deleted.data") == schemas.data_schema("courses", "deleted")
    with pytest.raises(ValueError, match="unknown model 'grades'"):
        schemas.schema("grades", "created")
    with pytest.raises(ValueError, match="unknown event kind 'moved'"):
        schemas.schema("users", "moved")


def test_reserved_kinds_say_so() -> None:
    for model in LMS_MODELS:
        for kind in schemas.RESERVED_KINDS:
            for value in (schemas.event_schema(model, kind), schemas.data_schema(model, kind)):
                assert "Reserved, not yet emitted" in value["description"]
        emitted = schemas.CHANGE_KINDS + schemas.DEAD_LETTER_KINDS + schemas.CONTROL_KINDS
        for kind in emitted:
            for value in (schemas.event_schema(model, kind), schemas.data_schema(model, kind)):
                assert "Reserved" not in value["description"], (model, kind)
    assert "scan_completed" in schemas.CONTROL_KINDS
    assert "not yet emitted" not in schemas.index()


def test_docs_schemas_are_what_the_code_generates(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    want = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.iterdir()}
    have = {p.name: p.read_text(encoding="utf-8") for p in DOCS.iterdir() if p.is_file()}
    stale = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have))
    differ = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    assert not (stale or missing or differ), (
        f"docs/schemas is out of date (missing {missing}, stale {stale}, differ {differ}): "
        f"regenerate with `{REGENERATE}` and commit the result"
    )


def test_output_is_deterministic() -> None:
    text = schemas.render()
    assert text == schemas.render() and text.endswith("}\n") and not text.endswith("\n\n")
    parsed = json.loads(text)
    assert list(parsed) == sorted(parsed)
    assert text == json.dumps(parsed, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    one = json.loads(schemas.render("enrollments"))
    assert set(one) == {n for n in parsed if n.startswith("enrollments.")}
    assert len(one) == 1 + 2 * len(schemas.EVENT_KINDS)


def test_write_drops_stale_files(tmp_path: Path) -> None:
    (tmp_path / "enrollments.moved.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("kept")
    schemas.write(tmp_path)
    assert not (tmp_path / "enrollments.moved.json").exists()
    assert (tmp_path / "notes.txt").exists()
    assert "enrollments.updated.data.json" in (tmp_path / "README.md").read_text()


def test_main_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--model", "users"]) == 0
    assert json.loads(capsys.readouterr().out) == schemas.all_schemas(model="users")
    assert schemas.main(["--write", str(tmp_path)]) == 0
    assert (tmp_path / "users.record.json").read_text() == schemas.dumps(
        schemas.record_schema("users")
    )


# ---- events and the schemas --------------------------------------------------------------


def test_dataschema_is_the_only_new_attribute() -> None:
    events = change_events()
    for kind, event in events.items():
        body = cloudevent(event)
        assert body["dataschema"] == f"urn:lms-changefeed:schema:enrollments.{kind}.data:1"
        # Everything else as before, in the same order (the bytes consumers already see).
        assert list(body) == [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "dataschema",
            "data",
        ]
        assert body["id"] == event_id(event)
        with_base = cloudevent(event, BASE)
        assert with_base.pop("dataschema") == f"{BASE}/enrollments.{kind}.data.json"
        body.pop("dataschema")
        assert with_base == body
        validate_event(to_messages(event, "t")[0].value)
        validate_event(to_messages(event, "t", schema_base_uri=BASE)[0].value, base_uri=BASE)


def test_event_ids_and_other_bytes_did_not_change() -> None:
    # Pinned from the code before dataschema existed: the id hash must never move.
    pinned = {
        "created": "44cd642b96138e57f70f04dce7b2d2f6",
        "updated": "539095ee1c908031c6a1e602fb3a4918",
        "deleted": "5ef096403a320761c024f0337eb89631",
    }
    for kind, event in change_events().items():
        assert event_id(event) == pinned[kind]
        value = to_messages(event, "t")[0].value
        attribute = f',"dataschema":"urn:lms-changefeed:schema:enrollments.{kind}.data:1"'
        body = cloudevent(event)
        del body["dataschema"]
        assert value.replace(attribute.encode(), b"") == orjson.dumps(body)


def _good(kind: str = "updated") -> dict[str, Any]:
    return orjson.loads(to_messages(change_events()[kind], "t")[0].value)


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        ("created", lambda e: e["data"]["record"].pop("id"), "'id' is a required property"),
        ("updated", lambda e: e["data"]["record"].pop("modified_at"), "'modified_at' is a req"),
        ("updated", lambda e: e["data"]["record"].update(modified_at=17), "is not of type"),
        ("created", lambda e: e["data"].update(changes={}), "False schema"),
        ("deleted", lambda e: e["data"].update(changes={}), "False schema"),
        ("updated", lambda e: e["data"].pop("changes"), "'changes' is a required property"),
        ("updated", lambda e: e["data"].update(changes={"a": {"old": 1}}), "'new' is a req"),
        ("created", lambda e: e["data"].update(initial_sync="no"), "is not of type 'boolean'"),
        ("created", lambda e: e["data"].update(model="users"), "was expected"),
        ("created", lambda e: e["data"]["record"].update(user=3), "is not valid under any"),
        ("created", lambda e: e["data"]["record"].update(start_date=3), "is not valid under any"),
        ("created", lambda e: e["data"]["record"].update(user="not-a-uuid"), "not valid under"),
        ("created", lambda e: e["data"]["record"].update(raw_data=[]), "is not valid under any"),
        ("created", lambda e: e.update(id="xyz"), "does not match"),
        ("created", lambda e: e.update(dataschema="urn:x"), "was expected"),
        ("updated", lambda e: e.update(time="2025-01-02T00:00:00+01:00"), "does not match"),
        ("deleted", lambda e: e.update(specversion="0.3"), "was expected"),
        ("deleted", lambda e: e.pop("subject"), "'subject' is a required property"),
        ("deleted", lambda e: e.update(type="bindbee.lms.grades.deleted"), "no schema has"),
        ("deleted", lambda e: e.update(type="lms.deleted"), "is not bindbee.lms"),
    ],
)
def test_broken_events_fail(kind: str, mutate, message: str) -> None:
    event = _good(kind)
    validate_event(copy.deepcopy(event))
    mutate(event)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        validate_event(event)


def test_records_allow_unknown_fields_and_expanded_relations() -> None:
    event = _good("created")
    event["data"]["record"]["brand_new_field"] = {"any": ["thing"]}
    event["data"]["record"]["user"] = {"id": USER, "first_name": "Ada"}
    event["data"]["record"]["course"] = {"name": "picked by rel[name]"}
    event["data"]["record"]["completion"] = None
    event["data"]["record"]["custom_fields"] = None
    event["extension_attribute"] = "allowed by CloudEvents"
    validate_event(event)
    validate_event(None)  # a tombstone


def test_hand_written_rejected_events_validate() -> None:
    base = {
        "specversion": "1.0",
        "id": "0" * 32,
        "source": "bindbee/lms/acme",
        "time": "2025-01-01T00:00:00Z",
        "datacontenttype": "application/json",
    }
    rejected = {
        **base,
        "type": "bindbee.lms.enrollments.rejected",
        "dataschema": schemas.data_schema_id("enrollments", "rejected"),
        "data": {
            "connector": "acme",
            "model": "enrollments",
            "reason": "no modified_at",
            "page": 3,
            "scan": 12,
            "item": ["anything", {"at": "all"}],
        },
    }
    validate_event(rejected)
    rejected["data"].pop("item")
    with pytest.raises(ValidationError, match="'item' is a required property"):
        validate_event(rejected)


def _marker(**overrides: Any) -> ScanMarker:
    values: dict[str, Any] = {
        "stream": KEY,
        "data_topic": "bindbee.lms.enrollments",
        "scan": 4,
        "kind": "full",
        "started_at": 1.7e9,
        "finished_at": 1.7e9 + 12.5,
        "modified_since": None,
        "counts": dict.fromkeys(
            ("created", "updated", "deleted", "unchanged", "stale", "rejected"), 0
        ),
        "delete_guard": None,
        "partitions": {0: 41, 1: 7},
        "partial": False,
        "initial_sync": False,
        "consistent": True,
    }
    return ScanMarker(**(values | overrides))


def test_the_daemons_scan_markers_validate() -> None:
    complete = _marker()
    incremental = _marker(
        kind="incremental",
        modified_since="2025-01-01T00:00:00.000000Z",
        partitions={},
        consistent=False,
    )
    guarded = _marker(delete_guard="3 of 4 records vanished", consistent=False, partial=True)
    for marker in (complete, incremental, guarded):
        message = scan_completed_message("control", marker)
        validate_event(message.value)
        validate_event(
            scan_completed_message("control", marker, schema_base_uri=BASE).value, base_uri=BASE
        )
        assert message.key == b"acme/enrollments" and message.topic == "control"
    body = orjson.loads(scan_completed_message("control", complete).value)
    assert body["type"] == "bindbee.lms.enrollments.scan_completed"
    assert body["subject"] == "acme/enrollments"
    assert body["dataschema"] == schemas.data_schema_id("enrollments", "scan_completed")
    data = body["data"]
    assert data["partitions"] == {"0": 41, "1": 7}
    assert data["consistent_as_of"] == data["started_at"] == "2023-11-14T22:13:20.000000Z"
    assert body["time"] == data["finished_at"] == "2023-11-14T22:13:32.500000Z"
    assert (data["covers"], data["modified_since"]) == ("all_records", None)
    inc = orjson.loads(scan_completed_message("control", incremental).value)["data"]
    assert "consistent_as_of" not in inc
    assert (inc["covers"], inc["modified_since"]) == (
        "modified_since",
        "2025-01-01T00:00:00.000000Z",
    )
    held = orjson.loads(scan_completed_message("control", guarded).value)["data"]
    assert held["deletes_withheld"] and held["partial"] and "consistent_as_of" not in held
    # A redelivery has the same id; the same scan number after a reset does not.
    again = orjson.loads(scan_completed_message("control", _marker()).value)
    assert again["id"] == body["id"]
    after_reset = orjson.loads(scan_completed_message("control", _marker(started_at=1.8e9)).value)
    assert after_reset["id"] != body["id"]
    for mutate, message in (
        (lambda d: d["partitions"].update({"zero": 1}), "does not match"),
        (lambda d: d["partitions"].update({"2": -1}), "less than the minimum"),
        (lambda d: d.pop("partial"), "'partial' is a required property"),
        (lambda d: d.update(kind="partial"), "is not one of"),
    ):
        broken = copy.deepcopy(body)
        mutate(broken["data"])
        with pytest.raises(ValidationError, match=message):
            validate_event(broken)


def test_rejected_is_real_now_and_the_daemons_dead_letters_validate() -> None:
    for model in LMS_MODELS:
        for value in (
            schemas.event_schema(model, "rejected"),
            schemas.data_schema(model, "rejected"),
        ):
            assert "Reserved" not in value["description"]
    assert "rejected" not in schemas.RESERVED_KINDS and "rejected" in schemas.EVENT_KINDS
    named = RejectedItem(3, {"id": RID, "modified_at": "garbage"}, "bad_modified_at", "x", RID)
    nameless = RejectedItem(0, ["junk"], "not_an_object", "item 0 is a JSON array")
    for item, record_id in ((named, RID), (nameless, None)):
        digest = fingerprint(item.raw)
        message = rejected_message(
            "dlq", KEY, item, digest=digest, page=2, scan=7, record_id=record_id, now=1.5e9
        )
        validate_event(message.value)
        validate_event(
            rejected_message(
                "dlq", KEY, item, digest=digest, page=2, scan=7, record_id=record_id,
                now=1.5e9, schema_base_uri=BASE,
            ).value,
            base_uri=BASE,
        )  # fmt: skip
        body = orjson.loads(message.value)
        assert body["type"] == "bindbee.lms.enrollments.rejected"
        assert body.get("subject") == record_id and body["data"]["item"] == item.raw
        assert message.key == (record_id or digest).encode()
        # The same content: the same event id, whenever it is sent.
        again = rejected_message(
            "dlq", KEY, item, digest=digest, page=5, scan=9, record_id=record_id, now=2e9
        )
        assert orjson.loads(again.value)["id"] == body["id"]
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
    broken = orjson.loads(message.value)
    broken["data"]["fingerprint"] = "nope"
    with pytest.raises(ValidationError, match="does not match"):
        validate_event(broken)


def test_validator_reports_unknown_ids() -> None:
    with pytest.raises(ValidationError, match="no schema has"):
        validator("urn:lms-changefeed:schema:nothing:1")


# ---- real events: simulator → daemon → tansu ---------------------------------------------


def _poll(settings, models: list[str], *, full: bool = False) -> None:
    runtime = Runtime.open(settings)
    try:
        for stream_pass in runtime.passes(["acme"], models):
            assert stream_pass.run(force_full=full).completed
    finally:
        runtime.close()


def _validated(broker, topic: str, expected: int) -> list[dict[str, Any]]:
    records = read_topic(broker.bootstrap, topic, expected=expected)
    assert len(records) == expected
    for record in records:
        validate_event(record.value)
    return [orjson.loads(r.value) for r in records if r.value is not None]


@pytest.mark.sim(enrollments=120)
@pytest.mark.parametrize(
    "params",
    [{}, {"expand": "user,course,completion"}],
    ids=["plain", "expanded"],
)
def test_real_created_updated_deleted_events_validate(sim, broker, tmp_path, params) -> None:
    config = feed_config(sim, broker, tmp_path, params=params, emit_tombstones=True)
    settings = load_settings(None, **config)
    topic = settings.kafka.topic_for("acme", "enrollments")
    _poll(settings, ["enrollments"])
    ids = sim.ids("acme", "enrollments")
    for n, rid in enumerate(ids[:4]):
        sim.update("acme", "enrollments", rid, {"start_date": f"2030-01-{n + 1:02d}T00:00:00Z"})
    for rid in ids[4:6]:
        sim.delete("acme", "enrollments", rid)
    user, course = sim.ids("acme", "users")[0], sim.ids("acme", "courses")[0]
    for _ in range(3):
        sim.create("acme", "enrollments", {"user": user, "course": course})
    _poll(settings, ["enrollments"], full=True)
    # 120 created + 4 updated + 2 deleted (each with its tombstone) + 3 created.
    events = _validated(broker, topic, expected=120 + 4 + 2 * 2 + 3)
    kinds = Counter(e["type"].rsplit(".", 1)[1] for e in events)
    assert kinds == {"created": 123, "updated": 4, "deleted": 2}
    relation = events[0]["data"]["record"]["user"]
    assert isinstance(relation, dict if params else str)


@pytest.mark.sim(enrollments=100)
def test_real_events_of_every_model_validate(sim, broker, tmp_path) -> None:
    config = feed_config(sim, broker, tmp_path)
    others = [m for m in LMS_MODELS if m != "enrollments"]
    config["models"] = {
        model: {"poll_interval_seconds": 1, "lookback_seconds": 0} for model in others
    }
    config["models"]["completions"]["params"] = {"expand": "user,course,content"}
    settings = load_settings(None, **config)
    _poll(settings, others)
    for model in others:
        expected = len(sim.ids("acme", model))
        events = _validated(broker, settings.kafka.topic_for("acme", model), expected)
        assert {e["type"] for e in events} == {f"bindbee.lms.{model}.created"}
