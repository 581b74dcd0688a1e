"""The invariant checker itself: each kind of violation is reported (no broker needed)."""

from __future__ import annotations

from collections import namedtuple

import orjson
import pytest

from tests.invariant import compare, replay, unpublished_below

Msg = namedtuple("Msg", "partition offset key value")


def event(kind: str, rid: str, eid: str, modified: str = "2025-01-01T00:00:00.000000Z", **fields):
    record = {"id": rid, "modified_at": modified, **fields}
    body = {"id": eid, "type": f"bindbee.lms.enrollments.{kind}", "subject": rid}
    body["data"] = {"record": record}
    return body


def topic(*events: dict) -> list[Msg]:
    """One partition, offsets in the given order."""
    return [
        Msg(0, offset, body["subject"].encode(), orjson.dumps(body))
        for offset, body in enumerate(events)
    ]


SOURCE = {"a": {"id": "a", "modified_at": "2025-02-01T00:00:00.000000Z", "grade": 2}}


def check(messages: list[Msg], source: dict = SOURCE):
    return compare(replay(messages, "t", ("modified_at",)), source, ("modified_at",))


def test_a_clean_replay_with_a_redelivery_holds() -> None:
    created = event("created", "a", "e1", grade=1)
    report = check(
        topic(
            created,
            created,
            event("updated", "a", "e2", grade=2),
            event("created", "b", "e3"),
            event("deleted", "b", "e4"),
        )
    )
    report.assert_holds()
    assert report.redeliveries == 1 and report.events == 5
    assert report.types == {"created": 3, "updated": 1, "deleted": 1}


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (topic(event("created", "a", "e1", grade=1)), "different content: a ['grade']"),
        (topic(), "records lost"),
        (topic(event("created", "a", "e1", grade=2), event("created", "z", "e2")), "phantom"),
        (
            topic(event("created", "a", "e1", grade=2), event("created", "a", "e1", grade=3)),
            "event ids with different contents",
        ),
        (
            topic(event("created", "a", "e1", grade=2), event("updated", "a", "e2", grade=2)),
            "updated of a that changes nothing",
        ),
        (
            topic(event("created", "a", "e1", grade=2), event("deleted", "q", "e2")),
            "delete of unknown id q",
        ),
        (
            topic(event("updated", "a", "e1", grade=2)),
            "update of unknown id a",
        ),
        (
            # A redelivery after a newer event: a deduplicating consumer differs.
            topic(
                event("created", "a", "e1", grade=2),
                event("updated", "a", "e2", grade=3),
                event("created", "a", "e1", grade=2),
            ),
            "records a deduplicating consumer gets differently",
        ),
    ],
)
def test_each_violation_is_reported(messages: list[Msg], problem: str) -> None:
    report = check(messages)
    assert not report.ok
    assert any(problem in line for line in report.problems), report.problems
    with pytest.raises(AssertionError, match="invariant broken"):
        report.assert_holds()


def test_replay_goes_by_partition_and_offset_not_arrival() -> None:
    messages = topic(
        event("created", "a", "e1", grade=1),
        event("updated", "a", "e2", grade=2),
    )
    check(list(reversed(messages))).assert_holds()


def test_unpublished_below_the_watermark() -> None:
    report = replay(topic(event("created", "a", "e1", grade=1)), "t", ("modified_at",))
    assert unpublished_below("2025-03-01T00:00:00.000000Z", report, SOURCE) == ["a"]
    assert unpublished_below("2025-01-15T00:00:00.000000Z", report, SOURCE) == []
    assert unpublished_below(None, report, SOURCE) == []
