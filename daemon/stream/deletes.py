"""A full scan's deletes: the stored rows it did not see, unless a guard withholds them.

Like a page, each batch commits its removals with their ``deleted`` events in the outbox,
then publishes and clears them. Once begun (the scan's phase is ``deletes``), a resumed
pass goes on with the batches and does not ask the guards again.
"""

from __future__ import annotations

import structlog

from daemon.diff import deleted_events
from daemon.errors import ScanInterrupted
from daemon.models import StreamState
from daemon.ops import metrics
from daemon.stream.context import StreamContext
from daemon.stream.hint_measure import HintMeasure
from daemon.stream.pages import count_missed
from daemon.stream.progress import PageTally, PassResult, ScanProgress, record_published
from daemon.stream.rules import delete_batch_size, delete_guard, unidentified_guard


def run_deletes(
    stream: StreamContext,
    state: StreamState,
    result: PassResult,
    progress: ScanProgress,
    log: structlog.BoundLogger,
    measure: HintMeasure | None = None,
) -> StreamState:
    """Delete what the full scan in ``state`` did not see; returns the state after.
    ``measure``: count the deletes no hint named."""
    withheld = metrics.DELETES_WITHHELD.labels(*stream.labels)
    if state.scan_phase != "deletes":
        guard = _guard(stream, log)
        if guard is not None:
            result.delete_guard = guard
            withheld.set(1)
            metrics.DELETE_GUARD_TRIPS.labels(*stream.labels).inc()
            return state
        state = stream.store.begin_deletes(stream.key)
    withheld.set(0)
    batch = delete_batch_size(stream.settings.bindbee.page_size)
    while True:
        rows = stream.store.missing_rows(stream.key, batch)
        if not rows:
            return state
        events = deleted_events(stream.key, rows)
        messages = stream.messages(events)
        stream.store.commit_deletes(stream.key, [row.id for row in rows], messages)
        tally = PageTally(deleted=len(rows))
        progress.add(tally)
        stream.publish(messages, progress)
        record_published(stream.labels, tally)
        if measure is not None:
            count_missed(stream, progress, measure.missed(row.id for row in rows))
        result.add(tally)
        if stream.stop.is_set():
            raise ScanInterrupted(f"{stream.name}: stop requested during deletes")


def _guard(stream: StreamContext, log: structlog.BoundLogger) -> str | None:
    """Why the deletes must be withheld (logged), or None."""
    unidentified = stream.store.count_unidentified(stream.key)
    guard = unidentified_guard(unidentified)
    if guard is not None:
        log.error("deletes_withheld", unidentified=unidentified, reason=guard)
        return guard
    missing, total = stream.store.count_missing(stream.key)
    guard = delete_guard(missing, total, stream.model.max_delete_fraction)
    if guard is not None:
        log.error("delete_guard_tripped", missing=missing, total=total, reason=guard)
    return guard
