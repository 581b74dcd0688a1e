"""The pure rules of hinted syncs: when to walk, auto spacing, read or walk, filters."""

from __future__ import annotations

import orjson
import pytest

from daemon.models import StreamKey
from daemon.ops.webhook import parse_ids_hint, safe_id
from daemon.settings import AUTO_MAX_SPACING, ModelSettings
from daemon.stream.hint_measure import HintMeasure
from daemon.stream.hint_rules import (
    next_spacing,
    passes_filters,
    projection,
    read_cost,
    read_instead,
    spacing_now,
    unknown_filters,
    walk_cost,
    walk_due,
)


@pytest.mark.parametrize(
    ("syncs", "spacing", "forced", "walk"),
    [
        (1, 1, False, True),  # every sync
        (1, 3, False, False),
        (2, 3, False, False),
        (3, 3, False, True),  # the third sync since the last walk
        (4, 3, False, True),  # a count past the spacing (a missed turn) still walks
        (1, 3, True, True),  # forced, and a sync completed since the last walk
        (0, 3, True, False),  # forced, but nothing new since the walk: the next sync
    ],
)
def test_walk_due(syncs: int, spacing: int, forced: bool, walk: bool) -> None:
    assert walk_due(syncs=syncs, spacing=spacing, forced=forced) is walk


def test_auto_doubles_after_clean_walks_up_to_seven_and_returns_at_a_miss() -> None:
    spacing, seen = 1, []
    for _ in range(5):
        spacing = next_spacing("auto", spacing, 0)
        seen.append(spacing)
    assert seen == [2, 4, AUTO_MAX_SPACING, AUTO_MAX_SPACING, AUTO_MAX_SPACING]
    assert next_spacing("auto", AUTO_MAX_SPACING, 2) == 1
    assert next_spacing("auto", 4, None) == 4  # not measured: unchanged


def test_an_integer_setting_is_its_own_spacing() -> None:
    assert spacing_now(3, 1) == 3 and next_spacing(3, 1, 5) == 3
    assert spacing_now("auto", 0) == 1 and spacing_now("auto", 99) == AUTO_MAX_SPACING


@pytest.mark.parametrize(
    ("known", "unknown", "models", "records", "read"),
    [
        (8, 2, 1, [5000], True),  # 10 reads against a walk of 50 pages
        (40, 11, 1, [5000], False),  # 51 reads cost more than 50 pages
        (0, 10, 3, [100, 100, 100], False),  # 30 tries against 3 pages
        (0, 3, 1, [0], False),  # an empty stream's walk is one request
        (1, 0, 1, [0], True),
    ],
)
def test_read_or_walk(
    known: int, unknown: int, models: int, records: list[int], read: bool
) -> None:
    assert read_instead(read_cost(known, unknown, models), walk_cost(records, 100)) is read


def test_walk_cost_is_pages_per_model() -> None:
    assert walk_cost([100_000], 100) == 1000
    assert walk_cost([1, 101, 0], 100) == 1 + 2 + 1


def test_projection_keeps_only_what_shapes_a_record() -> None:
    params = {"include_raw_data": True, "expand": "user", "user": "u1", "start_date_from": "x"}
    assert projection(params) == {"include_raw_data": True, "expand": "user"}


@pytest.mark.parametrize(
    ("record", "params", "within"),
    [
        ({"user": "u1"}, {"user": "u1"}, True),
        ({"user": {"id": "u1", "email": "x"}}, {"user": "u1"}, True),  # expanded
        ({"user": "u2"}, {"user": "u1"}, False),
        ({"course": None}, {"course": "c1"}, False),
        ({"start_date": "2026-01-02T00:00:00Z"}, {"start_date_from": "2026-01-01T00:00:00Z"}, True),
        (
            {"start_date": "2025-12-31T23:00:00Z"},
            {"start_date_from": "2026-01-01T00:00:00Z"},
            False,
        ),
        (
            {"start_date": "2026-01-01T00:00:00Z"},
            {"start_date_to": "2026-01-01T00:00:00+00:00"},
            True,
        ),
        ({"end_date": None}, {"end_date_to": "2026-01-01T00:00:00Z"}, False),
        ({"remote_id": "r1"}, {"remote_id": "r2"}, False),
        ({"anything": 1}, {"include_raw_data": True, "expand": "user"}, True),
    ],
)
def test_filters_of_the_walk(record: dict, params: dict, within: bool) -> None:
    assert passes_filters(record, params) is within


def test_the_safety_net_follows_the_spacing() -> None:
    assert ModelSettings().poll_interval_seconds == 86400
    assert ModelSettings(full_scan_every_syncs=3).poll_interval_seconds == 3 * 86400
    assert ModelSettings(full_scan_every_syncs="auto").poll_interval_seconds == 7 * 86400
    assert (
        ModelSettings(full_scan_every_syncs=3, poll_interval_seconds=60).poll_interval_seconds == 60
    )
    with pytest.raises(ValueError):
        ModelSettings(full_scan_every_syncs=0)


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("0190f4b2-7c1e-7d3a-9b5e-2f4a6c8e0a1b", True),
        ("abc.def_~-1", True),
        ("..", False),
        (".hidden", False),
        ("a/b", False),
        ("a%2Fb", False),
        ("a?b=1", False),
        ("", False),
        ("x" * 201, False),
        (12, False),
    ],
)
def test_safe_ids(value: object, safe: bool) -> None:
    assert safe_id(value) is safe


def _body(ids: list, sync_id: str = "s1") -> bytes:
    return orjson.dumps({"webhook": {"event": "connector_data_modified"},
                         "connector": {"id": "c1"}, "data": ids,
                         "sync": {"sync_id": sync_id}})  # fmt: skip


def test_a_hint_is_deduplicated_by_sync_and_body() -> None:
    first = parse_ids_hint(_body(["a", "b", "a"]), "c1")
    assert first.ids == ("a", "b") and first.walk_reason is None and first.sync_id == "s1"
    assert parse_ids_hint(_body(["a", "b", "a"]), "c1").dedupe == first.dedupe
    assert parse_ids_hint(_body(["a", "b"]), "c1").dedupe != first.dedupe
    assert parse_ids_hint(_body(["a", "b", "a"], "s2"), "c1").dedupe != first.dedupe


def test_over_the_cap_or_unsafe_the_sync_is_walked_not_truncated() -> None:
    big = parse_ids_hint(_body([f"id{n}" for n in range(11)]), "c1", max_ids=10)
    assert big.ids == () and "over webhook.max_hint_ids" in (big.walk_reason or "")
    unsafe = parse_ids_hint(_body(["ok", "../users"]), "c1")
    assert unsafe.ids == () and unsafe.walk_reason is not None
    with pytest.raises(ValueError):
        parse_ids_hint(_body({"not": "a list"}), "c1")  # type: ignore[arg-type]


class _Hinted:
    """A store of hinted ids for HintMeasure: ``unreadable`` says a hint of the window
    could not be read by id (walk instead, or a 413)."""

    def __init__(self, ids: set[str], unreadable: bool) -> None:
        self.ids = ids
        self.unreadable = unreadable
        self.reads = 0

    def hinted_ids_after(self, connector_id: str, since: float, after: int) -> tuple[set[str], int]:
        self.reads += 1
        return (set(self.ids), 1) if after < 1 else (set(), after)

    def hints_unreadable(self, key: StreamKey, connector_id: str, since: float) -> bool:
        return self.unreadable


@pytest.mark.parametrize(
    ("unreadable", "partial", "changed", "result"),
    [
        (False, False, ["a", "x"], 1),  # x: no hint named it
        (False, False, ["a"], 0),  # a clean walk
        (True, False, ["a", "x"], None),  # x's hint was received, not readable: unmeasured
        (True, False, ["a"], None),
        (False, True, ["a"], None),  # resumed: misses before the restart are unknown
        (False, True, ["x"], 1),  # resumed, but a miss is a miss: back to every sync
    ],
)
def test_hint_measure_result(
    unreadable: bool, partial: bool, changed: list[str], result: int | None
) -> None:
    measure = HintMeasure(_Hinted({"a"}, unreadable), StreamKey("c", "m"), "c1", 0.0)
    missed = measure.missed(changed)
    assert measure.result(missed, partial=partial) == result
    assert next_spacing("auto", 4, result) == {None: 4, 0: 7, 1: 1}[result]


@pytest.mark.parametrize(
    ("params", "unknown"),
    [
        ({}, False),
        ({"user": "u1", "start_date_from": "2030-01-01T00:00:00Z", "page_size": 100}, False),
        ({"include_raw_data": True, "expand": "user,course"}, False),
        ({"expand": "user[id,name],course"}, False),
        ({"status": "ACTIVE"}, True),  # a filter the read by id cannot check
        ({"modified_after": "2030-01-01T00:00:00Z"}, True),
        ({"expand": "user[name]"}, True),  # the relation's id is not returned
        ({"expand": "course,user[first_name,last_name]"}, True),
        ({"start_date_to": "next tuesday"}, True),
    ],
)
def test_params_the_read_by_id_cannot_check_make_it_walk(params: dict, unknown: bool) -> None:
    assert (unknown_filters(params) is not None) is unknown
