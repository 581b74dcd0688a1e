"""The sync rule as a table, and the trigger latch under real threads."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from pydantic import SecretStr

from daemon.schedule.sync_rule import Action, Decision, decide
from daemon.source.connectors import ConnectorInfo

SYNC = "2026-01-02T03:04:05.000000Z"
OLDER = "2026-01-01T03:04:05.000000Z"


def info(
    *,
    sync_status: str | None = "Done",
    status: str | None = "COMPLETE",
    is_active: bool = True,
    last_sync_start_time: str | None = SYNC,
) -> ConnectorInfo:
    return ConnectorInfo(
        id="conn-1",
        is_active=is_active,
        status=status,
        sync_status=sync_status,
        last_sync_start_time=last_sync_start_time,
        next_sync_start_time=None,
        integration_slug="moodle",
        is_test_connector=False,
        origin_id="acme",
        category="LMS",
        token=SecretStr("tok-secret"),
    )


SYNC_STATUSES = ["Done", "Syncing", "Failed", None, "Paused"]
STATUSES = ["COMPLETE", "INCOMPLETE", "RELINK_NEEDED", None]
BOOKMARKS = {"equal": SYNC, "different": OLDER, "none": None}


def expected(sync_status: str | None, status: str | None, active: bool, bookmark: str) -> Action:
    """The documented table, written out independently of the implementation's order."""
    if not active or status == "RELINK_NEEDED":
        return Action.BLOCKED
    return {
        "Syncing": Action.WAIT,
        "Failed": Action.FAILED,
        None: Action.WAIT,
        "Paused": Action.UNKNOWN,
        "Done": Action.UP_TO_DATE if bookmark == "equal" else Action.SCAN,
    }[sync_status]


@pytest.mark.parametrize(
    ("sync_status", "status", "active", "bookmark"),
    list(itertools.product(SYNC_STATUSES, STATUSES, [True, False], BOOKMARKS)),
)
def test_table(sync_status: str | None, status: str | None, active: bool, bookmark: str) -> None:
    decision = decide(
        info(sync_status=sync_status, status=status, is_active=active), BOOKMARKS[bookmark]
    )
    assert decision.action is expected(sync_status, status, active, bookmark)
    # Every decision names the sync it is about, so callers can log and count per sync.
    assert decision.sync_start_time == SYNC
    assert decision.reason
    assert decision.should_scan is (decision.action is Action.SCAN)
    assert "tok-secret" not in decision.reason


def test_scan_covers_the_done_sync_and_explains_itself() -> None:
    assert decide(info(), OLDER) == Decision(
        Action.SCAN, SYNC, f"sync started {SYNC} is Done; last scanned sync started {OLDER}"
    )
    first = decide(info(), None)
    assert first.action is Action.SCAN
    assert first.sync_start_time == SYNC
    assert "no sync scanned yet" in first.reason


def test_missing_connector_is_unknown() -> None:
    decision = decide(None, SYNC)
    assert decision.action is Action.UNKNOWN
    assert decision.sync_start_time is None


@pytest.mark.parametrize("bookmark", [SYNC, None])
def test_done_without_a_start_time_is_unknown(bookmark: str | None) -> None:
    decision = decide(info(last_sync_start_time=None), bookmark)
    assert decision.action is Action.UNKNOWN
    assert "last_sync_start_time" in decision.reason


def test_syncing_with_a_new_start_time_still_waits() -> None:
    # The sync that moved last_sync_start_time is still writing: scanning now would
    # read half-synced data and then bookmark it as covered.
    assert decide(info(sync_status="Syncing"), OLDER).action is Action.WAIT


@pytest.mark.parametrize(
    ("given", "action"),
    [
        ("done", Action.SCAN),
        ("DONE", Action.SCAN),
        ("syncing", Action.WAIT),
        ("FAILED", Action.FAILED),
    ],
)
def test_status_names_match_case_insensitively(given: str, action: Action) -> None:
    assert decide(info(sync_status=given), OLDER).action is action


def test_status_is_matched_case_insensitively_too() -> None:
    assert decide(info(status="relink_needed"), OLDER).action is Action.BLOCKED


def test_extra_spellings_can_be_configured() -> None:
    legacy = info(sync_status="COMPLETED", status="ACTIVE")
    assert decide(legacy, OLDER).action is Action.UNKNOWN
    assert decide(legacy, OLDER, done=("Done", "COMPLETED")).action is Action.SCAN
    assert (
        decide(
            info(status="INCOMPLETE"), OLDER, blocked_statuses=("RELINK_NEEDED", "INCOMPLETE")
        ).action
        is Action.BLOCKED
    )


def test_decision_for_equal_bookmark_is_stable_across_calls() -> None:
    connector = info()
    assert decide(connector, SYNC) == decide(replace(connector), SYNC)
