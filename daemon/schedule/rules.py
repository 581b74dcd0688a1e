"""The scheduler's decisions that need only values: pure, and tested with tables.

    exception of a pass  --outcome_of-->  Outcome  --next_due-->  when the stream is due
    a sync stream's state --skip_until-->  its safety net, or None (the pass runs)

A pass ends in one ``Outcome``, chosen from the exception's class alone (errors are
grouped by how to recover, see ``daemon.errors``); the outcome and the stream's
``Timing`` give its next due time:

    succeeded        interval later, plus up to ``jitter`` (resync still pending: now)
    up to date       the safety net (``skip_until``), the pass is skipped
    interrupted      now, for whichever replica runs next
    failed, crashed  ``RETRY_BASE_SECONDS`` doubling per failure, capped (``retry_delay``)
    fatal            ``scheduler.fatal_backoff_seconds``
    lease lost,      None: the due time stays as the store has it (another replica
    held elsewhere   holds the stream and decides)

Which interval applies to a stream (a connector's per-model override, else the model's
``poll_interval_seconds``, which for ``trigger: sync`` is the safety net) is defined once,
in ``Settings.poll_interval``; ``Timing.of`` reads it from there.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from daemon.backoff import delay_after, exponential
from daemon.errors import (
    ChangefeedError,
    LeaseLost,
    ScanInterrupted,
    StreamFatalError,
    StreamHeldElsewhere,
)
from daemon.models import StreamState
from daemon.settings import ConnectorSettings, Settings

RETRY_BASE_SECONDS = 2.0  # the first retry after a failed pass; doubles per failure
DEFAULT_MAX_WORKERS = 32  # scheduler.max_workers unset: one per stream, at most this

Draw = Callable[[float, float], float]
"""A uniform draw in ``[a, b]`` (``random.uniform``; tests pass a fixed one)."""


class Outcome(StrEnum):
    """How one pass ended, as far as its next due time is concerned."""

    SUCCEEDED = "succeeded"
    INTERRUPTED = "interrupted"  # shutdown or a page boundary cut it: resume at once
    LEASE_LOST = "lease_lost"  # fenced: the new holder decides
    HELD_ELSEWHERE = "held_elsewhere"  # another replica scans it
    FATAL = "fatal"  # e.g. auth revoked: back off long
    FAILED = "failed"  # retriable, or not known to be fatal
    CRASHED = "crashed"  # not a ChangefeedError: a bug; retried like a failure


@dataclass(frozen=True, slots=True)
class Timing:
    """The values one stream's next due time depends on, from the settings of the moment."""

    interval: float
    jitter_seconds: float = 0.0
    retry_backoff_max_seconds: float = 300.0
    fatal_backoff_seconds: float = 900.0

    @classmethod
    def of(cls, settings: Settings, connector: ConnectorSettings, model: str) -> Timing:
        """The timing of the stream ``connector`` x ``model`` under ``settings``."""
        scheduler = settings.scheduler
        return cls(
            interval=settings.poll_interval(connector, model),
            jitter_seconds=scheduler.jitter_seconds,
            retry_backoff_max_seconds=scheduler.retry_backoff_max_seconds,
            fatal_backoff_seconds=scheduler.fatal_backoff_seconds,
        )


def outcome_of(exc: BaseException | None, *, stopping: bool = False) -> Outcome:
    """The outcome of a pass that raised ``exc`` (None: it returned) while the process
    was ``stopping`` or not."""
    if exc is None:
        return Outcome.SUCCEEDED
    if isinstance(exc, LeaseLost):
        return Outcome.LEASE_LOST
    if isinstance(exc, ScanInterrupted):
        return Outcome.INTERRUPTED
    if isinstance(exc, StreamHeldElsewhere):
        return Outcome.HELD_ELSEWHERE
    if isinstance(exc, StreamFatalError):
        return Outcome.FATAL
    if isinstance(exc, ChangefeedError):
        # Shutdown cut a send or a wait short: the outbox keeps the page.
        return Outcome.INTERRUPTED if stopping else Outcome.FAILED
    return Outcome.CRASHED


def jitter_bound(interval: float, jitter_seconds: float) -> float:
    """The most a regular due time is pushed back: ``jitter_seconds``, at most half the
    interval (so a short interval is not doubled)."""
    return min(jitter_seconds, interval / 2)


def next_regular(timing: Timing, now: float, draw: Draw = random.uniform) -> float:
    """The next regular poll after ``now``: the interval plus a jitter that spreads
    streams which fell due together."""
    jitter = jitter_bound(timing.interval, timing.jitter_seconds)
    return now + timing.interval + (draw(0, jitter) if jitter > 0 else 0.0)


def retry_delay(timing: Timing, failures: int) -> float:
    """The wait before retrying after ``failures`` consecutive failures:
    ``RETRY_BASE_SECONDS`` doubling per failure, capped by
    ``retry_backoff_max_seconds`` and by the interval (a retry must not wait longer than
    no failure would)."""
    cap = min(timing.interval, timing.retry_backoff_max_seconds)
    return delay_after(exponential(RETRY_BASE_SECONDS, cap), failures)


def failure_delay(outcome: Outcome, timing: Timing, failures: int) -> float | None:
    """The back-off of a failed pass (``failures`` counts this one); None when the
    outcome is not a failure."""
    if outcome is Outcome.FATAL:
        return timing.fatal_backoff_seconds
    if outcome in (Outcome.FAILED, Outcome.CRASHED):
        return retry_delay(timing, failures)
    return None


def next_due(
    outcome: Outcome,
    timing: Timing,
    now: float,
    *,
    failures: int = 0,
    resync_pending: bool = False,
    draw: Draw = random.uniform,
) -> float | None:
    """When the stream is due after a pass that ended in ``outcome`` at ``now``; None
    leaves the due time as the store has it.

    ``failures`` counts the consecutive failures including this one; ``resync_pending``:
    an operator's resync is still requested after a success (the scan that finished was
    one resumed from before the request), so the full scan asked for comes at once.
    """
    if outcome is Outcome.SUCCEEDED:
        # For trigger: sync the safety net counts from this scan, not the process start.
        return now if resync_pending else next_regular(timing, now, draw)
    if outcome is Outcome.INTERRUPTED:
        return now
    delay = failure_delay(outcome, timing, failures)
    return None if delay is None else now + delay


def shortened_due(due: float | None, now: float, interval: float) -> float | None:
    """A reload shortened the interval while the pass ran: it counts from the pass's end
    at the latest."""
    return None if due is None else min(due, now + interval)


def skip_until(
    trigger: str,
    state: StreamState,
    interval: float,
    now: float,
    pending: Callable[[], bool],
) -> float | None:
    """For a sync-triggered stream with nothing new to scan: when its safety net is due
    (the pass is skipped). None when the pass must run: an interval stream, a scan in
    progress, a resync asked for, never fully scanned, a requested sync not yet covered,
    the safety net reached, or ``pending()`` (outbox rows to send; asked last, as it
    reads the store)."""
    if trigger != "sync":
        return None
    if state.in_progress or state.resync_requested_at is not None:
        return None
    if state.last_full_scan_at is None:
        return None
    if state.requested_sync is not None and state.requested_sync != state.sync_bookmark:
        return None
    safety_net = state.last_full_scan_at + interval
    if safety_net <= now or pending():
        return None
    return safety_net


def blocked(trigger: str, connector_state: str | None) -> bool:
    """True when the sync watcher holds the stream (relink needed, inactive): a
    sync-triggered stream is not scanned then; an interval one ignores the state."""
    return trigger == "sync" and connector_state is not None


def worker_count(max_workers: int | None, discovering: bool, streams: int) -> int:
    """The pass pool's size: ``max_workers`` if set, else one per stream, at most
    ``DEFAULT_MAX_WORKERS``; a discovering process starts at the cap, as its discovered
    connectors come later."""
    if max_workers:
        return max_workers
    if discovering:
        return DEFAULT_MAX_WORKERS
    return min(DEFAULT_MAX_WORKERS, max(1, streams))
