"""The pass: start or resume a scan, send what the outbox holds, walk, delete, finish.

A completed scan ends with a marker (``kafka.scan_markers``): a ``scan_completed``
CloudEvent on ``kafka.control_topic``, written to the outbox in the transaction that
closes the scan and published like a page. It carries the offsets Kafka acknowledged for
the scan's last message on each partition of the data topic, gathered from every publish
of the scan in this process (``ScanProgressBook``, which the runtime shares between its
passes so a pass that resumes after a failure in the same process still knows the
earlier pages).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from daemon.errors import ScanInterrupted, StreamHeldElsewhere
from daemon.models import Hint, Message, ScanKind, StreamState
from daemon.ops import metrics
from daemon.settings import ConnectorSettings, Settings
from daemon.sink.events import ScanMarker, scan_completed_message
from daemon.source.pagination import PageSource
from daemon.state import SnapshotStore
from daemon.stream.context import EventSink, StreamContext
from daemon.stream.deletes import run_deletes
from daemon.stream.hint_measure import HintMeasure
from daemon.stream.hint_reads import HintReads, HintResult
from daemon.stream.hint_rules import next_spacing
from daemon.stream.pages import PageWalk
from daemon.stream.progress import PassResult, ScanProgress, ScanProgressBook
from daemon.stream.rules import (
    full_scan_due,
    incremental_since,
    is_baseline,
    marker_consistent,
    pages_left,
    scan_begun,
)
from daemon.timestamps import parse_time


class StreamPass:
    """Runs passes over one stream.

    ``progress``: the process's book of scans in progress (``Runtime.scan_progress``,
    via ``Runtime.stream_pass``); without it the pass keeps its own, so only passes of
    this StreamPass count toward a resumed scan's marker.
    """

    def __init__(
        self,
        settings: Settings,
        connector: ConnectorSettings,
        model: str,
        *,
        source: PageSource,
        store: SnapshotStore,
        sink: EventSink,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        progress: ScanProgressBook | None = None,
    ) -> None:
        self.stream = StreamContext.build(
            settings,
            connector,
            model,
            source=source,
            store=store,
            sink=sink,
            stop=stop or threading.Event(),
            clock=clock,
        )
        self.key = self.stream.key
        self.name = self.stream.name
        self.progress = progress if progress is not None else ScanProgressBook()

    def run(
        self,
        *,
        force_full: bool = False,
        on_page: Callable[[PassResult], None] | None = None,
        sync: str | None = None,
        measure: HintMeasure | None = None,
    ) -> PassResult:
        """One pass: resume the scan in progress or start the one that is due.

        ``on_page`` is called after every committed page (progress display). ``sync`` is
        the start time of the newest Bindbee sync seen Done for the connector: a full scan
        started now covers it, and the stream's sync bookmark moves to it on completion.
        ``measure``: a full scan counts the changes it finds that no hint named.
        """
        started = time.monotonic()
        stream = self.stream
        if not stream.store.claim(self.key):
            raise StreamHeldElsewhere(f"{self.name} is being polled by another replica")
        state = self._start_or_resume(force_full, sync)
        assert state.scan_kind is not None
        result = PassResult(self.key, state.scan_kind, state.scan_number, resumed=scan_begun(state))
        # Bound for the whole pass, so client and sink lines carry the stream too.
        with structlog.contextvars.bound_contextvars(
            connector=stream.connector.name,
            model=self.key.model,
            scan=f"{self.name}#{state.scan_number}",
        ):
            log = structlog.get_logger("daemon.stream").bind(kind=state.scan_kind)
            log.info(
                "scan_started",
                resumed=result.resumed,
                cursor_set=state.scan_cursor is not None,
                since=state.scan_since,
                watermark=state.watermark,
            )
            progress = self.progress.scan(state)
            try:
                state, marker = self._scan(state, result, progress, log, on_page, measure)
            except BaseException as exc:
                result.duration = time.monotonic() - started
                outcome = "interrupted" if isinstance(exc, ScanInterrupted) else "failed"
                metrics.SCANS.labels(*stream.labels, result.kind, outcome).inc()
                raise
            result.completed = True
            result.watermark = state.watermark
            result.duration = time.monotonic() - started
            self._record_success(result, state)
            _log_finished(log, result)
            if marker:
                # The scan is closed and its marker durable in the outbox: a failed send
                # fails the pass (retried soon), and the next pass sends the marker first.
                stream.publish_pending(log, None, event="scan_marker_published")
        return result

    def publish_outbox(self) -> None:
        """Send what the outbox holds (a targeted read's batch or marker a failed send or
        a crash left), under the stream's lease, and nothing else: no scan."""
        stream = self.stream
        if not stream.store.claim(self.key):
            raise StreamHeldElsewhere(f"{self.name} is being polled by another replica")
        with structlog.contextvars.bound_contextvars(
            connector=stream.connector.name, model=self.key.model
        ):
            stream.sink.ensure_topics(stream.topics)
            stream.publish_pending(structlog.get_logger("daemon.stream").bind(kind="outbox"), None)

    def read_hints(self, connector_id: str, models: list[str], hints: list[Hint]) -> HintResult:
        """A targeted read of ``hints`` (this stream's unread ones, of Bindbee connector
        ``connector_id``; ``models``: the connector's configured models), under the
        stream's lease. Its ``walk_reason`` says when a walk must replace it."""
        stream = self.stream
        if not stream.store.claim(self.key):
            raise StreamHeldElsewhere(f"{self.name} is being polled by another replica")
        with structlog.contextvars.bound_contextvars(
            connector=stream.connector.name, model=self.key.model
        ):
            stream.sink.ensure_topics(stream.topics)
            log = structlog.get_logger("daemon.stream").bind(kind="hints")
            return HintReads(stream, connector_id, models, log).run(hints)

    # -- phases ------------------------------------------------------------------

    def _start_or_resume(self, force_full: bool, sync: str | None) -> StreamState:
        store, model = self.stream.store, self.stream.model
        state = store.state(self.key, count=False)
        if state.in_progress:
            if not (force_full and state.scan_kind == "incremental"):
                return state
            store.abandon_scan(self.key)
            state = store.state(self.key, count=False)
        now = self.stream.clock()
        full = full_scan_due(model, state, now, force_full=force_full)
        since = None
        if not full:
            assert state.watermark is not None
            since = incremental_since(state.watermark, model.lookback_seconds)
        kind: ScanKind = "full" if full else "incremental"
        return store.begin_scan(self.key, kind, since, now, sync if full else None)

    def _scan(
        self,
        state: StreamState,
        result: PassResult,
        progress: ScanProgress,
        log: structlog.BoundLogger,
        on_page: Callable[[PassResult], None] | None,
        measure: HintMeasure | None = None,
    ) -> tuple[StreamState, tuple[Message, ...]]:
        """The scan's work in this pass, up to its close; returns the closed state and
        the marker committed with it (to send)."""
        stream = self.stream
        # Every topic up front, the dead-letter and control topics too: created mid-run, a
        # producer that predates one can miss its metadata and expire the batch.
        stream.sink.ensure_topics(stream.topics)
        # What an earlier pass left of this scan is this scan's; a fresh scan's outbox
        # holds only an earlier scan's marker (or an abandoned scan's page).
        stream.publish_pending(log, progress if result.resumed else None)
        # Initial sync: until the first full scan completes, nothing is "changed".
        initial = state.last_full_scan_at is None
        full = state.scan_kind == "full"
        if initial or not full:
            measure = None  # an initial sync has no hints to measure; not a walk
        if pages_left(state):
            walk = PageWalk(
                stream, state, result, progress, initial=initial, log=log, measure=measure
            )
            state = walk.run(on_page)
        if full:
            state = run_deletes(stream, state, result, progress, log, measure)
        if measure is not None:
            result.hint_missed = measure.result(progress.hint_missed, partial=progress.partial)
        now = stream.clock()
        marker = self._marker(state, result, progress, initial, now)
        walked = None
        if full:
            current = stream.store.walk_state(self.key).spacing
            every = stream.model.full_scan_every_syncs
            walked = (next_spacing(every, current, result.hint_missed), result.hint_missed)
        state = stream.store.finish_scan(
            self.key, now, result.delete_guard, outbox=marker, walked=walked
        )
        self.progress.forget(self.key)
        return state, marker

    def _marker(
        self,
        state: StreamState,
        result: PassResult,
        progress: ScanProgress,
        initial: bool,
        now: float,
    ) -> tuple[Message, ...]:
        """The scan's ``scan_completed`` message (none with ``kafka.scan_markers`` off)."""
        stream = self.stream
        if stream.control_topic is None:
            return ()
        full = state.scan_kind == "full"
        marker = ScanMarker(
            stream=self.key,
            data_topic=stream.topic,
            scan=state.scan_number,
            kind=result.kind,
            started_at=state.scan_started_at if state.scan_started_at is not None else now,
            finished_at=now,
            modified_since=None if full else state.scan_since,
            counts=progress.counts,
            delete_guard=result.delete_guard if full else None,
            partitions=progress.offsets,
            partial=progress.partial,
            initial_sync=initial,
            hint_missed=result.hint_missed,
            consistent=marker_consistent(
                full=full,
                delete_guard=result.delete_guard,
                baseline=is_baseline(stream.model, initial),
            ),
        )
        base = stream.settings.kafka.schema_base_uri
        return (scan_completed_message(stream.control_topic, marker, schema_base_uri=base),)

    def _record_success(self, result: PassResult, state: StreamState) -> None:
        labels = self.stream.labels
        metrics.SCANS.labels(*labels, result.kind, "ok").inc()
        metrics.SCAN_DURATION.labels(*labels).observe(result.duration)
        metrics.LAST_SUCCESS.labels(*labels).set(self.stream.clock())
        metrics.STREAM_UP.labels(*labels).set(1)
        if state.watermark is not None:
            metrics.WATERMARK.labels(*labels).set(parse_time(state.watermark).timestamp())


def _log_finished(log: structlog.BoundLogger, result: PassResult) -> None:
    stats = result.stats
    log.info(
        "scan_finished",
        pages=stats.pages,
        items=stats.items,
        created=stats.created,
        updated=stats.updated,
        deleted=stats.deleted,
        unchanged=stats.unchanged,
        stale=stats.stale,
        requests=stats.requests,
        rejected=result.rejected,
        dead_lettered=result.dead_lettered,
        hint_missed=result.hint_missed,
        duration_s=round(result.duration, 3),
        watermark=result.watermark,
        delete_guard=result.delete_guard,
    )
