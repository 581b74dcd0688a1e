"""The scheduler's pure rules (``daemon.schedule.rules``): tables, no broker, store or HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    ChangefeedError,
    LeaseLost,
    NotFoundError,
    ScanInterrupted,
    SinkError,
    StateStoreError,
    StreamHeldElsewhere,
)
from daemon.models import StreamKey, StreamState
from daemon.schedule.rules import (
    DEFAULT_MAX_WORKERS,
    RETRY_BASE_SECONDS,
    Outcome,
    Timing,
    blocked,
    failure_delay,
    jitter_bound,
    next_due,
    next_regular,
    outcome_of,
    retry_delay,
    shortened_due,
    skip_until,
    worker_count,
)
from daemon.settings import ConnectorSettings, Settings

NOW = 1_000_000.0
KEY = StreamKey("acme", "enrollments")


def top(low: float, high: float) -> float:
    """A draw that always lands on the top of its range: the jitter at its bound."""
    return high


def never(low: float, high: float) -> float:
    raise AssertionError("no jitter was to be drawn")


# -- which outcome an exception is -------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "stopping", "outcome"),
    [
        (None, False, Outcome.SUCCEEDED),
        (None, True, Outcome.SUCCEEDED),
        (LeaseLost("fenced"), False, Outcome.LEASE_LOST),
        (LeaseLost("fenced"), True, Outcome.LEASE_LOST),
        (StreamHeldElsewhere("b holds it"), False, Outcome.HELD_ELSEWHERE),
        (ScanInterrupted("page boundary"), False, Outcome.INTERRUPTED),
        (ScanInterrupted("page boundary"), True, Outcome.INTERRUPTED),
        (AuthError("401"), False, Outcome.FATAL),
        # Fatal stays fatal while stopping: the back-off is what the stream needs.
        (NotFoundError("404"), True, Outcome.FATAL),
        (ApiUnavailableError("503"), False, Outcome.FAILED),
        (SinkError("no ack"), False, Outcome.FAILED),
        (StateStoreError("down"), False, Outcome.FAILED),
        (ChangefeedError("other"), False, Outcome.FAILED),
        # Shutdown cut a send or a wait short: resume at once, not after a back-off.
        (SinkError("no ack"), True, Outcome.INTERRUPTED),
        (ChangefeedError("other"), True, Outcome.INTERRUPTED),
        (KeyError("a bug"), False, Outcome.CRASHED),
        (KeyError("a bug"), True, Outcome.CRASHED),
    ],
)
def test_outcome_follows_the_error_class(
    exc: BaseException | None, stopping: bool, outcome: Outcome
) -> None:
    assert outcome_of(exc, stopping=stopping) is outcome


# -- the next due time after each outcome --------------------------------------------

TIMING = Timing(
    interval=300.0, jitter_seconds=5.0, retry_backoff_max_seconds=60.0, fatal_backoff_seconds=900.0
)


@pytest.mark.parametrize(
    ("outcome", "failures", "resync_pending", "due"),
    [
        (Outcome.SUCCEEDED, 0, False, NOW + 300 + 5),  # interval + the jitter's top
        (Outcome.SUCCEEDED, 0, True, NOW),  # the resync asked for comes next
        (Outcome.INTERRUPTED, 0, False, NOW),
        (Outcome.LEASE_LOST, 0, False, None),  # the new holder decides
        (Outcome.HELD_ELSEWHERE, 0, False, None),
        (Outcome.FATAL, 1, False, NOW + 900),
        (Outcome.FATAL, 7, False, NOW + 900),  # fatal does not grow with failures
        (Outcome.FAILED, 1, False, NOW + RETRY_BASE_SECONDS),
        (Outcome.FAILED, 2, False, NOW + 2 * RETRY_BASE_SECONDS),
        (Outcome.FAILED, 3, False, NOW + 4 * RETRY_BASE_SECONDS),
        (Outcome.FAILED, 5, False, NOW + 16 * RETRY_BASE_SECONDS),
        (Outcome.FAILED, 6, False, NOW + 60),  # capped by retry_backoff_max_seconds
        (Outcome.FAILED, 500, False, NOW + 60),  # a long streak does not overflow
        (Outcome.CRASHED, 1, False, NOW + RETRY_BASE_SECONDS),
        (Outcome.CRASHED, 3, False, NOW + 4 * RETRY_BASE_SECONDS),
    ],
)
def test_next_due_after_each_outcome(
    outcome: Outcome, failures: int, resync_pending: bool, due: float | None
) -> None:
    assert (
        next_due(outcome, TIMING, NOW, failures=failures, resync_pending=resync_pending, draw=top)
        == due
    )


@pytest.mark.parametrize(
    ("interval", "backoff_max", "failures", "delay"),
    [
        (300.0, 300.0, 1, 2.0),
        (300.0, 300.0, 4, 16.0),
        (300.0, 300.0, 8, 256.0),
        (300.0, 300.0, 9, 300.0),  # capped by the back-off maximum
        (10.0, 300.0, 4, 10.0),  # never later than the next regular poll
        (10.0, 300.0, 3, 8.0),
        (300.0, 5.0, 3, 5.0),
        (300.0, 300.0, 0, 2.0),  # no failure counted yet: the first wait
    ],
)
def test_retry_delay_doubles_from_the_base_up_to_its_cap(
    interval: float, backoff_max: float, failures: int, delay: float
) -> None:
    timing = Timing(interval=interval, retry_backoff_max_seconds=backoff_max)
    assert retry_delay(timing, failures) == delay


@pytest.mark.parametrize(
    ("outcome", "delay"),
    [
        (Outcome.SUCCEEDED, None),
        (Outcome.INTERRUPTED, None),
        (Outcome.LEASE_LOST, None),
        (Outcome.HELD_ELSEWHERE, None),
        (Outcome.FATAL, 900.0),
        (Outcome.FAILED, 4.0),
        (Outcome.CRASHED, 4.0),
    ],
)
def test_only_failures_back_off(outcome: Outcome, delay: float | None) -> None:
    assert failure_delay(outcome, TIMING, failures=2) == delay


# -- jitter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "jitter", "bound"),
    [
        (300.0, 5.0, 5.0),
        (4.0, 5.0, 2.0),  # at most half the interval: a short one is not doubled
        (10.0, 5.0, 5.0),
        (300.0, 0.0, 0.0),
    ],
)
def test_jitter_is_bounded_by_half_the_interval(
    interval: float, jitter: float, bound: float
) -> None:
    assert jitter_bound(interval, jitter) == bound
    drawn: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    due = next_regular(Timing(interval=interval, jitter_seconds=jitter), NOW, record)
    assert due == NOW + interval + bound
    assert drawn == ([(0, bound)] if bound > 0 else [])


def test_without_jitter_nothing_is_drawn() -> None:
    assert next_regular(Timing(interval=60.0, jitter_seconds=0.0), NOW, never) == NOW + 60


def test_the_default_draw_stays_within_the_bound() -> None:
    timing = Timing(interval=20.0, jitter_seconds=5.0)
    for _ in range(200):
        assert NOW + 20 <= next_regular(timing, NOW) <= NOW + 25


@pytest.mark.parametrize(
    ("due", "interval", "after"),
    [
        (NOW + 3600, 60.0, NOW + 60),  # the shorter interval counts from the pass's end
        (NOW + 30, 60.0, NOW + 30),  # an earlier due time (a retry) stays
        (None, 60.0, None),  # the store keeps its due time
    ],
)
def test_a_shortened_interval_applies_at_the_end_of_the_pass(
    due: float | None, interval: float, after: float | None
) -> None:
    assert shortened_due(due, NOW, interval) == after


# -- skipping an up-to-date sync stream ------------------------------------------------

SCANNED = NOW - 1000  # the last full scan
SYNC = "2026-12-01T00:00:00Z"


def state(**fields: Any) -> StreamState:
    values: dict[str, Any] = {"last_full_scan_at": SCANNED, "sync_bookmark": SYNC}
    values.update(fields)
    return StreamState(KEY, **values)


@pytest.mark.parametrize(
    ("case", "trigger", "stream", "interval", "pending", "skip"),
    [
        ("up to date: wait for the safety net", "sync", state(), 86400.0, False, SCANNED + 86400),
        ("an interval stream always runs", "interval", state(), 86400.0, False, None),
        ("a scan in progress resumes", "sync", state(scan_kind="full"), 86400.0, False, None),
        ("a resync was asked for", "sync", state(resync_requested_at=NOW), 86400.0, False, None),
        ("never fully scanned", "sync", state(last_full_scan_at=None), 86400.0, False, None),
        (
            "a sync not yet covered",
            "sync",
            state(requested_sync="2026-12-02T00:00:00Z"),
            86400.0,
            False,
            None,
        ),
        (
            "the requested sync is the one covered",
            "sync",
            state(requested_sync=SYNC),
            86400.0,
            False,
            SCANNED + 86400,
        ),
        ("the safety net is reached", "sync", state(), 1000.0, False, None),
        ("the safety net is past", "sync", state(), 10.0, False, None),
        ("outbox rows wait to be sent", "sync", state(), 86400.0, True, None),
    ],
)
def test_a_sync_stream_with_nothing_new_is_skipped_until_its_safety_net(
    case: str,
    trigger: str,
    stream: StreamState,
    interval: float,
    pending: bool,
    skip: float | None,
) -> None:
    assert skip_until(trigger, stream, interval, NOW, lambda: pending) == skip, case


def test_the_outbox_is_asked_only_when_everything_else_allows_a_skip() -> None:
    def pending() -> bool:
        raise AssertionError("the store was read for a pass that must run anyway")

    assert skip_until("interval", state(), 86400.0, NOW, pending) is None
    assert skip_until("sync", state(last_full_scan_at=None), 86400.0, NOW, pending) is None
    assert skip_until("sync", state(), 10.0, NOW, pending) is None


# -- blocked streams, pool size ------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "connector_state", "held"),
    [
        ("sync", None, False),
        ("sync", "RELINK_NEEDED", True),
        ("sync", "inactive", True),
        ("interval", "RELINK_NEEDED", False),  # polled regardless of syncs
        ("interval", None, False),
    ],
)
def test_the_sync_watcher_holds_only_sync_streams(
    trigger: str, connector_state: str | None, held: bool
) -> None:
    assert blocked(trigger, connector_state) is held


@pytest.mark.parametrize(
    ("max_workers", "discovering", "streams", "workers"),
    [
        (8, False, 100, 8),  # set: as set
        (8, True, 0, 8),
        (None, False, 3, 3),  # one per stream
        (None, False, 0, 1),  # at least one
        (None, False, 500, DEFAULT_MAX_WORKERS),  # at most the cap
        (None, True, 3, DEFAULT_MAX_WORKERS),  # discovered connectors come later
    ],
)
def test_worker_count(
    max_workers: int | None, discovering: bool, streams: int, workers: int
) -> None:
    assert worker_count(max_workers, discovering, streams) == workers


# -- which interval applies ------------------------------------------------------------


def settings(**extra: Any) -> Settings:
    return Settings(
        bindbee={"api_key": "k"},
        connectors=[
            {"name": "acme", "token": "t1", "poll_interval_seconds": {"users": 7.0}},
            {"name": "globex", "token": "t2"},
        ],
        models={
            "enrollments": {},  # trigger: sync, the daily safety net
            "users": {"trigger": "interval"},  # every 300 s
            "completions": {"trigger": "sync", "poll_interval_seconds": 3600.0},
        },
        **extra,
    )


@pytest.mark.parametrize(
    ("connector", "model", "interval"),
    [
        ("acme", "users", 7.0),  # the connector's override wins
        ("globex", "users", 300.0),  # trigger: interval's default
        ("acme", "enrollments", 86400.0),  # trigger: sync's safety net by default
        ("globex", "completions", 3600.0),  # the model's own interval
    ],
)
def test_which_interval_applies(connector: str, model: str, interval: float) -> None:
    config = settings()
    assert config.poll_interval(connector, model) == interval
    assert config.poll_interval(config.connector(connector), model) == interval
    assert Timing.of(config, config.connector(connector), model).interval == interval


def test_a_discovered_connector_gets_the_models_interval() -> None:
    config = settings()
    found = ConnectorSettings.discovered("initech", SecretStr("t3"), "c-1")
    assert config.poll_interval(found, "users") == 300.0
    assert config.poll_interval(found, "enrollments") == 86400.0


def test_timing_takes_the_scheduler_settings() -> None:
    config = settings(
        scheduler={
            "jitter_seconds": 1.5,
            "retry_backoff_max_seconds": 40.0,
            "fatal_backoff_seconds": 120.0,
        }
    )
    assert Timing.of(config, config.connector("acme"), "users") == Timing(
        interval=7.0,
        jitter_seconds=1.5,
        retry_backoff_max_seconds=40.0,
        fatal_backoff_seconds=120.0,
    )


# -- properties ------------------------------------------------------------------------

seconds = st.floats(min_value=0.001, max_value=1e7, allow_nan=False, allow_infinity=False)


@given(
    interval=seconds,
    backoff_max=seconds,
    jitter=st.floats(min_value=0, max_value=1e4),
    failures=st.integers(min_value=1, max_value=10_000),
)
def test_a_retry_never_waits_longer_than_no_failure(
    interval: float, backoff_max: float, jitter: float, failures: int
) -> None:
    timing = Timing(interval=interval, jitter_seconds=jitter, retry_backoff_max_seconds=backoff_max)
    retry = next_due(Outcome.FAILED, timing, NOW, failures=failures)
    regular = next_due(Outcome.SUCCEEDED, timing, NOW, draw=lambda low, high: low)
    assert retry is not None and regular is not None
    assert NOW < retry <= regular
    assert retry_delay(timing, failures) <= retry_delay(timing, failures + 1)


@given(interval=seconds, jitter=st.floats(min_value=0, max_value=1e7))
def test_the_regular_due_time_stays_within_its_jitter(interval: float, jitter: float) -> None:
    timing = Timing(interval=interval, jitter_seconds=jitter)
    due = next_regular(timing, NOW)
    assert NOW + interval <= due <= NOW + interval + min(jitter, interval / 2) + 1e-6
