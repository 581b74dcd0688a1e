"""The pass's pure rules, as tables: no broker, no database, no API."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from daemon.diff import PageDiff
from daemon.models import ChangeEvent, Page, RejectedItem, StreamKey, StreamState
from daemon.settings import ModelSettings
from daemon.stream.progress import MARKER_COUNTS, PageTally, PassResult, ScanProgressBook
from daemon.stream.rejects import RejectVerdict, reject_verdicts, unknown_remote_ids
from daemon.stream.rules import (
    capped_watermark,
    delete_batch_size,
    delete_guard,
    full_scan_due,
    incremental_since,
    is_baseline,
    marker_consistent,
    page_params,
    pages_left,
    scan_begun,
    unidentified_guard,
    watermark_ceiling,
)
from daemon.timestamps import format_epoch, parse_time

KEY = StreamKey("acme", "enrollments")
T0 = datetime(2026, 3, 4, 5, 6, 7, 250000, tzinfo=UTC).timestamp()  # a scan's start
DAY = 86400.0


def state(**fields: object) -> StreamState:
    return StreamState(KEY, **fields)  # type: ignore[arg-type]


# ---- the delete guard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "total", "fraction", "expected"),
    [
        (0, 0, 0.5, None),  # nothing stored
        (0, 10, 0.5, None),  # every record seen
        (5, 10, 0.5, None),  # exactly the limit goes ahead
        (6, 10, 0.5, "6 of 10 records (60%) vanished in one full scan, over max_delete_fraction"),
        (1, 10, 0.0, "1 of 10 records (10%) vanished"),  # 0: any delete is held
        (10, 10, 1.0, "the full scan saw none of the 10 stored records; deleting nothing"),
        (1, 1, 1.0, "saw none of the 1 stored records"),  # even when 100% is allowed
        (99, 100, 1.0, None),
    ],
)
def test_delete_guard(missing: int, total: int, fraction: float, expected: str | None) -> None:
    guard = delete_guard(missing, total, fraction)
    if expected is None:
        assert guard is None
    else:
        assert guard is not None and expected in guard and guard.endswith("deleting nothing")


@pytest.mark.parametrize(("unidentified", "withheld"), [(0, False), (1, True), (7, True)])
def test_unidentified_rejects_withhold_the_deletes(unidentified: int, withheld: bool) -> None:
    guard = unidentified_guard(unidentified)
    assert (guard is not None) is withheld
    if guard is not None:
        assert f"rejected {unidentified} item(s)" in guard


@pytest.mark.parametrize(("page_size", "batch"), [(1, 100), (100, 100), (250, 250)])
def test_delete_batch_is_at_least_a_hundred_rows(page_size: int, batch: int) -> None:
    assert delete_batch_size(page_size) == batch


# ---- the watermark ceiling -------------------------------------------------------------------


def test_the_ceiling_is_the_scans_start_in_the_stored_form() -> None:
    assert watermark_ceiling(None) is None
    ceiling = watermark_ceiling(T0)
    assert ceiling == "2026-03-04T05:06:07.250000Z"
    assert parse_time(ceiling).timestamp() == T0


@pytest.mark.parametrize(
    ("max_modified", "ceiling", "expected"),
    [
        (None, None, None),
        (None, "2026-03-04T05:06:07.250000Z", None),  # a page with no dated record
        ("2030-01-01T00:00:00.000000Z", None, "2030-01-01T00:00:00.000000Z"),  # no cap
        (
            "2026-03-04T05:06:07.000000Z",
            "2026-03-04T05:06:07.250000Z",
            "2026-03-04T05:06:07.000000Z",
        ),
        # A record changed behind the cursor, or dated in the future: held at the start.
        (
            "2026-03-04T05:06:08.000000Z",
            "2026-03-04T05:06:07.250000Z",
            "2026-03-04T05:06:07.250000Z",
        ),
        (
            "2999-12-31T23:59:59.999999Z",
            "2026-03-04T05:06:07.250000Z",
            "2026-03-04T05:06:07.250000Z",
        ),
    ],
)
def test_the_watermark_is_capped_at_the_ceiling(
    max_modified: str | None, ceiling: str | None, expected: str | None
) -> None:
    assert capped_watermark(max_modified, ceiling) == expected


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000000Z"),
        (T0, "2026-03-04T05:06:07.250000Z"),
        (253402300799.0, "9999-12-31T23:59:59.000000Z"),
    ],
)
def test_format_epoch_is_the_stored_normal_form(seconds: float, text: str) -> None:
    assert format_epoch(seconds) == text
    assert parse_time(text).timestamp() == seconds


# ---- which scan, which pages -----------------------------------------------------------------

INTERVAL = ModelSettings(trigger="interval")
MARK = "2026-03-04T05:06:07.250000Z"


@pytest.mark.parametrize(
    ("model", "stream", "now", "force", "full"),
    [
        (INTERVAL, state(watermark=MARK, last_full_scan_started_at=T0), T0 + 60, False, False),
        (INTERVAL, state(watermark=MARK, last_full_scan_started_at=T0), T0 + 60, True, True),
        (INTERVAL, state(last_full_scan_started_at=T0), T0 + 60, False, True),  # no watermark
        (INTERVAL, state(watermark=MARK), T0 + 60, False, True),  # never a full scan
        (INTERVAL, state(watermark=MARK, last_full_scan_started_at=T0), T0 + DAY, False, True),
        (INTERVAL, state(watermark=MARK, last_full_scan_started_at=T0), T0 + DAY - 1, False, False),
        (
            ModelSettings(trigger="interval", incremental_param=None),
            state(watermark=MARK, last_full_scan_started_at=T0),
            T0 + 60,
            False,
            True,
        ),
        # A sync-triggered model always walks the whole list.
        (
            ModelSettings(),
            state(watermark=MARK, last_full_scan_started_at=T0),
            T0 + 60,
            False,
            True,
        ),
    ],
)
def test_full_scan_due(
    model: ModelSettings, stream: StreamState, now: float, force: bool, full: bool
) -> None:
    assert full_scan_due(model, stream, now, force_full=force) is full


@pytest.mark.parametrize(
    ("watermark", "lookback", "since"),
    [
        ("2026-03-04T05:06:07.250000Z", 300.0, "2026-03-04T05:01:07.250000Z"),
        ("2026-03-04T05:06:07.250000Z", 0.0, "2026-03-04T05:06:07.250000Z"),
        # isoformat drops a zero fraction: what the API has always been sent.
        ("2026-03-04T00:02:00.000000Z", 180.0, "2026-03-03T23:59:00Z"),
    ],
)
def test_incremental_since_looks_back(watermark: str, lookback: float, since: str) -> None:
    assert incremental_since(watermark, lookback) == since


def test_page_params_add_the_filter_to_incremental_scans_only() -> None:
    model = ModelSettings(trigger="interval", params={"status": "active"})
    since = "2026-03-04T05:01:07.250000Z"
    incremental = state(scan_kind="incremental", scan_since=since)
    assert page_params(model, incremental) == {"status": "active", "modified_after": since}
    assert page_params(model, state(scan_kind="full", scan_since=since)) == {"status": "active"}
    assert page_params(model.model_copy(update={"incremental_param": None}), incremental) == {
        "status": "active"
    }
    assert model.params == {"status": "active"}  # the settings' own dict is left alone


@pytest.mark.parametrize(
    ("phase", "pages", "cursor", "begun", "left"),
    [
        ("pages", 0, None, False, True),  # a fresh scan
        ("pages", 3, "c4", True, True),  # stopped mid-walk
        ("pages", 3, None, True, False),  # its last page committed
        ("deletes", 3, None, True, False),  # in its deletes
    ],
)
def test_scan_begun_and_pages_left(
    phase: str, pages: int, cursor: str | None, begun: bool, left: bool
) -> None:
    stream = state(scan_kind="full", scan_phase=phase, scan_pages=pages, scan_cursor=cursor)
    assert scan_begun(stream) is begun
    assert pages_left(stream) is left


@pytest.mark.parametrize(
    ("full", "guard", "initial_sync", "initial", "consistent"),
    [
        (True, None, "emit", True, True),
        (True, None, "emit", False, True),
        (False, None, "emit", False, False),  # an incremental scan vouches for its changes only
        (True, "withheld", "emit", False, False),
        (True, None, "baseline", True, False),  # the baseline's records are not on the topic
        (True, None, "baseline", False, True),
    ],
)
def test_marker_consistent(
    full: bool, guard: str | None, initial_sync: str, initial: bool, consistent: bool
) -> None:
    baseline = is_baseline(ModelSettings(initial_sync=initial_sync), initial)  # type: ignore[arg-type]
    assert marker_consistent(full=full, delete_guard=guard, baseline=baseline) is consistent


# ---- poison items ----------------------------------------------------------------------------


def rejected(record_id: str | None = None, remote_id: str | None = None) -> RejectedItem:
    return RejectedItem(0, {}, "bad_modified_at", "bad", record_id=record_id, remote_id=remote_id)


@pytest.mark.parametrize(
    ("items", "digests", "known", "by_remote", "verdicts", "lookups"),
    [
        # A usable id names its record; a new content is dead-lettered.
        ([rejected("r1")], ["d1"], {}, {}, [RejectVerdict("r1", True)], []),
        # A content dead-lettered before is not sent again, and keeps naming its record.
        ([rejected()], ["d1"], {"d1": "r1"}, {}, [RejectVerdict("r1", False)], []),
        # No id: a stored row with its remote_id names it.
        ([rejected(remote_id="x9")], ["d1"], {}, {"x9": "r9"}, [RejectVerdict("r9", True)], ["x9"]),
        # Nothing names it.
        ([rejected(remote_id="x9")], ["d1"], {}, {}, [RejectVerdict(None, True)], ["x9"]),
        ([rejected()], ["d1"], {"d1": None}, {}, [RejectVerdict(None, False)], []),
        # The same content twice in one page: one letter, and the second names the first's.
        (
            [rejected("r1"), rejected()],
            ["d1", "d1"],
            {},
            {},
            [RejectVerdict("r1", True), RejectVerdict("r1", False)],
            [],
        ),
    ],
)
def test_reject_verdicts(
    items: list[RejectedItem],
    digests: list[str],
    known: dict[str, str | None],
    by_remote: dict[str, str],
    verdicts: list[RejectVerdict],
    lookups: list[str],
) -> None:
    before = dict(known)
    assert unknown_remote_ids(items, digests, known) == lookups
    assert reject_verdicts(items, digests, known, by_remote) == verdicts
    assert known == before  # the store's answer is not changed


# ---- counting once ---------------------------------------------------------------------------


def event(kind: str, rid: str) -> ChangeEvent:
    return ChangeEvent(kind, KEY, rid, {"id": rid}, MARK, "h")  # type: ignore[arg-type]


def test_a_page_is_tallied_once_and_every_count_derives_from_it() -> None:
    page = Page(
        4,
        [{"id": "a"}, {"id": "b"}, {"id": "c"}],
        "c4",
        "c5",
        requests=2,
        rejected=(rejected("r1"), rejected()),
    )
    diff = PageDiff(events=[event("created", "a"), event("updated", "b")], unchanged=1, stale=1)
    tally = PageTally.of_page(page, diff, dead_lettered=1)
    assert tally == PageTally(
        pages=1,
        items=3,
        requests=2,
        created=1,
        updated=1,
        unchanged=1,
        stale=1,
        rejected=2,
        dead_lettered=1,
    )
    assert tally.events() == {"created": 1, "updated": 1}
    assert PageTally(deleted=4).events() == {"deleted": 4}

    result = PassResult(KEY, "full", 1)
    result.add(tally)
    result.add(PageTally(deleted=4))
    stats = result.stats
    assert (stats.pages, stats.items, stats.requests) == (1, 3, 2)
    assert (stats.created, stats.updated, stats.deleted) == (1, 1, 4)
    assert (stats.unchanged, stats.stale) == (1, 1)
    assert (result.rejected, result.dead_lettered) == (2, 1)

    progress = ScanProgressBook().scan(state(scan_number=1, scan_kind="full"))
    progress.add(tally)
    progress.add(PageTally(deleted=4))
    assert tuple(progress.counts) == MARKER_COUNTS
    assert progress.counts == {
        "created": 1,
        "updated": 1,
        "deleted": 4,
        "unchanged": 1,
        "stale": 1,
        "rejected": 2,
        "dead_lettered": 1,
    }


# ---- a scan's progress across passes ---------------------------------------------------------


def test_the_book_keeps_a_scans_progress_across_passes_until_it_is_forgotten() -> None:
    book = ScanProgressBook()
    fresh = state(scan_number=3, scan_kind="full", scan_phase="pages", scan_started_at=T0)
    first = book.scan(fresh)
    assert not first.partial  # this process met the scan before its first page
    first.add(PageTally(pages=1, created=2))
    first.acked("data", {("data", 0): 7, ("data", 1): 2, ("other", 0): 99})

    # The next pass resumes the same scan: it is the same progress, not a partial one.
    resumed = state(
        scan_number=3,
        scan_kind="full",
        scan_phase="pages",
        scan_pages=1,
        scan_cursor="c2",
        scan_started_at=T0,
    )
    again = book.scan(resumed)
    assert again is first and not again.partial and again.counts["created"] == 2
    again.acked("data", {("data", 0): 5, ("data", 1): 4})  # offsets only move forward
    assert again.offsets == {0: 7, 1: 4}

    # Another scan of the stream (a new number, or the same number restarted) starts over.
    assert book.scan(state(scan_number=4, scan_kind="full", scan_started_at=T0)) is not first
    other_start = book.scan(replace(resumed, scan_started_at=T0 + 1))
    assert other_start.partial and other_start.counts["created"] == 0  # begun elsewhere

    book.forget(KEY)
    assert book.scan(resumed) is not other_start


def test_books_are_separate() -> None:
    """One book per runtime: another process (or runtime) knows nothing of this scan."""
    begun = state(scan_number=1, scan_kind="full", scan_phase="pages", scan_pages=2)
    mine, theirs = ScanProgressBook(), ScanProgressBook()
    assert mine.scan(begun) is not theirs.scan(begun)
    assert theirs.scan(begun).partial
