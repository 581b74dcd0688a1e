"""Bug 11 end to end: records with the nulls the API documents, made in the real simulator,
go through a real pass onto tansu, and every event read back validates against the schema
its ``dataschema`` names (jsonschema and jsonschema-rs, formats asserted)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.runtime import Runtime
from daemon.settings import LMS_MODELS, Settings, load_settings
from daemon.sink import schemas
from tests.helpers import feed_config, new_enrollment
from tests.kafka_read import read_topic
from tests.schema_check import validate_event

NULL_ENROLLMENT = {
    "remote_id": None,
    "user": None,
    "course": None,
    "start_date": None,
    "end_date": None,
    "completion": None,
    "custom_fields": None,
}


def _poll(settings: Settings, models: list[str], *, full: bool = False) -> None:
    runtime = Runtime.open(settings)
    try:
        for stream_pass in runtime.passes(["acme"], models):
            assert stream_pass.run(force_full=full).completed
    finally:
        runtime.close()


def _read(broker, topic: str, expected: int, *, exact: bool = True) -> list[dict[str, Any]]:
    """The topic's events, each validated against the schema its dataschema names."""
    records = read_topic(broker.bootstrap, topic, expected=expected)  # validates them too
    assert len(records) == expected if exact else len(records) >= expected
    events = []
    for record in records:
        validate_event(record.value)
        event = orjson.loads(record.value)
        model, kind = event["type"].split(".")[2:]
        assert event["dataschema"] == schemas.data_schema_id(model, kind)
        events.append(event)
    return events


@pytest.mark.sim(enrollments=30)
@pytest.mark.parametrize(
    "params",
    [
        {"include_custom_fields": True, "include_raw_data": True},
        {"expand": "user,course,completion"},
    ],
    ids=["plain", "expanded"],
)
def test_enrollments_with_null_relations_make_valid_events(
    sim, broker, tmp_path: Path, params: dict[str, Any]
) -> None:
    settings = load_settings(None, **feed_config(sim, broker, tmp_path, params=params))
    topic = settings.kafka.topic_for("acme", "enrollments")
    _poll(settings, ["enrollments"])
    user, course = sim.ids("acme", "users")[0], sim.ids("acme", "courses")[0]
    made = [
        sim.create("acme", "enrollments", NULL_ENROLLMENT)["id"],
        sim.create("acme", "enrollments", {"user": user, "course": None})["id"],
        sim.create("acme", "enrollments", {"user": None, "course": course})["id"],
    ]
    made += [sim.create("acme", "enrollments", new_enrollment(sim))["id"] for _ in range(4)]
    emptied = sim.ids("acme", "enrollments")[0]
    sim.update("acme", "enrollments", emptied, NULL_ENROLLMENT)
    _poll(settings, ["enrollments"], full=True)

    events = _read(broker, topic, expected=30 + len(made) + 1)
    later = [e for e in events if not e["data"]["initial_sync"]]
    assert Counter(e["type"].rsplit(".", 1)[1] for e in later) == {"created": 7, "updated": 1}
    records = {e["subject"]: e["data"]["record"] for e in later}
    assert set(made) | {emptied} == set(records)
    both_null = records[made[0]]
    assert all(both_null.get(field) is None for field in NULL_ENROLLMENT), both_null
    assert both_null["user"] is None and both_null["course"] is None
    assert records[made[1]]["course"] is None and records[made[2]]["user"] is None
    assert records[made[1]]["user"] is not None and records[made[2]]["course"] is not None
    # new_enrollment goes round ids and nulls: both kinds reached Kafka.
    helper_users = [records[rid]["user"] for rid in made[3:]]
    assert None in helper_users and any(u is not None for u in helper_users)
    (updated,) = [e for e in later if e["type"].endswith(".updated")]
    assert updated["subject"] == emptied
    assert updated["data"]["changes"]["user"]["new"] is None
    assert updated["data"]["changes"]["course"]["new"] is None


@pytest.mark.sim(enrollments=30)
def test_null_fields_of_every_other_model_make_valid_events(sim, broker, tmp_path: Path) -> None:
    config = feed_config(sim, broker, tmp_path)
    others = [m for m in LMS_MODELS if m != "enrollments"]
    config["models"] = {
        model: {"poll_interval_seconds": 1, "lookback_seconds": 0, "params": {}} for model in others
    }
    config["models"]["completions"]["params"] = {"expand": "user,course,content"}
    config["models"]["users"]["params"] = {"include_custom_fields": True}
    settings = load_settings(None, **config)
    _poll(settings, others)
    before = {model: len(sim.ids("acme", model)) for model in others}
    made: dict[str, list[str]] = {}
    for model in others:
        # A blank record: every field of the model null but id, modified_at and raw_data.
        blank = sim.create("acme", model, {})
        assert all(
            v is None for k, v in blank.items() if k not in ("id", "modified_at", "raw_data")
        )
        made[model] = [blank["id"]]
        emptied = sim.ids("acme", model)[0]
        sim.update("acme", model, emptied, {k: None for k in _nullable_fields(blank)})
        made[model].append(emptied)
    _poll(settings, others, full=True)

    for model in others:
        topic = settings.kafka.topic_for("acme", model)
        # Expanded completions change too when the user, course or content they inline does.
        exact = model != "completions"
        events = _read(broker, topic, expected=before[model] + 2, exact=exact)
        later = {e["subject"]: e for e in events if not e["data"]["initial_sync"]}
        assert set(later) == set(made[model]) if exact else set(later) >= set(made[model])
        blank_id, emptied = made[model]
        assert later[blank_id]["type"] == f"bindbee.lms.{model}.created"
        assert later[emptied]["type"] == f"bindbee.lms.{model}.updated"
        record = later[blank_id]["data"]["record"]
        assert all(record[f] is None for f in _nullable_fields(record)), record


def _nullable_fields(record: dict[str, Any]) -> list[str]:
    return [f for f in record if f not in ("id", "modified_at", "raw_data")]
