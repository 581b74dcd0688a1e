"""The pure core: diff tables and a replay property (no network, no database)."""

from __future__ import annotations

import orjson
import pytest

from daemon.diff import content_hash, deleted_events, diff_page, field_changes
from daemon.models import StoredRow, StreamKey
from daemon.sink.events import cloudevent, event_id, to_messages
from daemon.timestamps import normalize_time

KEY = StreamKey("acme", "enrollments")


def rec(rid: str, modified: str = "2025-01-01T00:00:00Z", **fields: object) -> dict:
    return {"id": rid, "modified_at": modified, **fields}


def stored(record: dict) -> StoredRow:
    return StoredRow(
        record["id"],
        normalize_time(record["modified_at"]),
        content_hash(record, ("modified_at",)),
        record,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-04T05:06:07Z", "2025-03-04T05:06:07.000000Z"),
        ("2025-03-04T05:06:07.5Z", "2025-03-04T05:06:07.500000Z"),
        ("2025-03-04T07:06:07.123456+02:00", "2025-03-04T05:06:07.123456Z"),
        ("2025-03-04T05:06:07", "2025-03-04T05:06:07.000000Z"),
        ("2025-03-03T23:06:07-06:00", "2025-03-04T05:06:07.000000Z"),
    ],
)
def test_normalize_time_to_utc(value: str, expected: str) -> None:
    assert normalize_time(value) == expected


@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-02:00", "yesterday", ""]
)
def test_a_time_that_has_no_utc_form_is_a_value_error(value: str) -> None:
    # Year 1 east of UTC parses, then overflows on conversion: callers catch ValueError.
    with pytest.raises(ValueError):
        normalize_time(value)


def test_new_id_is_created() -> None:
    result = diff_page(KEY, [rec("a", grade=1)], {})
    assert [e.type for e in result.events] == ["created"]
    assert result.writes[0].id == "a"
    assert result.seen_ids == ["a"]


def test_changed_content_is_updated_with_changes() -> None:
    old = rec("a", "2025-01-01T00:00:00Z", grade=1, status="x")
    new = rec("a", "2025-01-02T00:00:00Z", grade=2, status="x")
    result = diff_page(KEY, [new], {"a": stored(old)})
    (event,) = result.events
    assert event.type == "updated"
    assert event.changes == {"grade": {"old": 1, "new": 2}}
    assert event.previous_hash == stored(old).content_hash


def test_modified_at_only_bump_makes_no_event_but_moves_the_stored_time() -> None:
    old = rec("a", "2025-01-01T00:00:00Z", grade=1)
    new = rec("a", "2025-01-05T00:00:00Z", grade=1)
    result = diff_page(KEY, [new], {"a": stored(old)})
    assert result.events == []
    assert result.unchanged == 1
    (write,) = result.writes
    assert write.modified_at == "2025-01-05T00:00:00.000000Z"
    assert write.record == old  # the last *published* record is kept


def test_older_copy_is_stale_and_silent() -> None:
    current = rec("a", "2025-01-05T00:00:00Z", grade=2)
    older = rec("a", "2025-01-01T00:00:00Z", grade=1)
    result = diff_page(KEY, [older], {"a": stored(current)})
    assert result.events == [] and result.writes == []
    assert result.stale == 1
    assert result.seen_ids == ["a"]  # seen, so a full scan does not delete it


def test_the_stored_bytes_again_are_unchanged_whatever_the_stored_hash() -> None:
    # The shortcut: a record encoded as stored is the record stored. Even a hash taken
    # under other ignore_fields (the config changed since) must not invent an update.
    old = rec("a", grade=1, synced="x")
    row = StoredRow("a", normalize_time(old["modified_at"]), "hash-of-another-config", old)
    result = diff_page(KEY, [dict(old)], {"a": row})
    assert result.events == [] and result.writes == [] and result.unchanged == 1


def test_the_same_fields_in_another_order_are_unchanged_by_their_hash() -> None:
    old = rec("a", grade=1, status="x")
    reordered = {"status": "x", "grade": 1, "modified_at": old["modified_at"], "id": "a"}
    assert orjson.dumps(reordered) != stored(old).blob
    result = diff_page(KEY, [reordered], {"a": stored(old)})
    assert result.events == [] and result.writes == [] and result.unchanged == 1


def test_the_record_kept_under_a_newer_time_is_stale_when_it_comes_again() -> None:
    # A time-only bump stores the newer time with the last published record: that
    # record's bytes come back older than the row's time, so they are stale.
    old = rec("a", "2025-01-01T00:00:00Z", grade=1)
    bumped = diff_page(KEY, [rec("a", "2025-01-05T00:00:00Z", grade=1)], {"a": stored(old)})
    (write,) = bumped.writes
    row = StoredRow(write.id, write.modified_at, write.content_hash, write.record)
    result = diff_page(KEY, [dict(old)], {"a": row})
    assert result.stale == 1 and result.unchanged == 0 and result.writes == []


def test_baseline_initial_sync_stores_without_events() -> None:
    result = diff_page(KEY, [rec("a"), rec("b")], {}, initial_sync=True, emit_created=False)
    assert result.events == []
    assert [w.id for w in result.writes] == ["a", "b"]


def test_duplicate_id_in_one_page_counts_once() -> None:
    result = diff_page(KEY, [rec("a", grade=1), rec("a", grade=2)], {})
    assert len(result.events) == 1 and result.seen_ids == ["a"]


def test_ignore_fields_hide_changes() -> None:
    old = rec("a", grade=1, synced="x")
    new = rec("a", "2025-02-01T00:00:00Z", grade=1, synced="y")
    row = StoredRow(
        "a", normalize_time(old["modified_at"]), content_hash(old, ("modified_at", "synced")), old
    )
    result = diff_page(KEY, [new], {"a": row}, ignore_fields=("modified_at", "synced"))
    assert result.events == []
    assert field_changes(old, new, ("modified_at",)) == {"synced": {"old": "x", "new": "y"}}


def test_max_modified_at_is_the_newest_in_the_page() -> None:
    result = diff_page(
        KEY, [rec("a", "2025-01-02T00:00:00+01:00"), rec("b", "2025-01-01T23:30:00Z")], {}
    )
    assert result.max_modified_at == "2025-01-01T23:30:00.000000Z"


def test_event_ids_are_stable_and_distinct() -> None:
    a1 = diff_page(KEY, [rec("a", grade=1)], {}).events[0]
    a2 = diff_page(KEY, [rec("a", grade=1)], {}).events[0]
    b = diff_page(KEY, [rec("a", grade=2)], {}).events[0]
    bumped = diff_page(KEY, [rec("a", "2025-06-01T00:00:00Z", grade=1)], {}).events[0]
    assert event_id(a1) == event_id(a2)
    assert len({event_id(a1), event_id(b), event_id(bumped)}) == 3
    assert len(event_id(a1)) == 32 and int(event_id(a1), 16) >= 0
    assert to_messages(a1, "t")[0].value == to_messages(a2, "t")[0].value


def test_cloudevent_shape() -> None:
    old = rec("a", grade=1)
    event = diff_page(
        KEY, [rec("a", "2025-01-02T00:00:00+00:00", grade=2)], {"a": stored(old)}
    ).events[0]
    body = cloudevent(event)
    assert body["specversion"] == "1.0"
    assert body["type"] == "bindbee.lms.enrollments.updated"
    assert body["source"] == "bindbee/lms/acme"
    assert body["subject"] == "a"
    assert body["time"] == "2025-01-02T00:00:00.000000Z"
    assert body["data"]["changes"] == {"grade": {"old": 1, "new": 2}}
    assert body["data"]["record"]["modified_at"] == "2025-01-02T00:00:00+00:00"
    (deleted,) = deleted_events(KEY, [stored(old)])
    message, tombstone = to_messages(deleted, "topic", tombstone=True)
    assert orjson.loads(message.value)["type"].endswith(".deleted")
    assert "changes" not in orjson.loads(message.value)["data"]
    assert tombstone.value is None and tombstone.key == b"a"
    assert dict(message.headers)["content-type"] == b"application/cloudevents+json"


# The replay property (consecutive full scans, replayed, equal the last snapshot) lives in
# tests/unit/test_replay_property.py.
