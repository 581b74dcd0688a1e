"""One pass over one (connector, model), page by page, through a transactional outbox.

For each page: fetch it, diff it against the stored snapshot, then commit the page's rows,
the scan cursor and the page's events (the outbox) in one transaction; only then publish the
events, flush, and clear the outbox. A crash or failure after the commit leaves the events in
the outbox, and the next pass publishes them before anything else, so Kafka never misses a
committed change and never gets one the store does not know about (a resend keeps its ids).
Deletes after a full scan go the same way: commit the removals with their events, publish,
clear.

Poison records (items of a page the client rejected after its retries: ``Page.rejected``)
never stop the stream: each distinct bad content goes to the dead-letter topic once, its
message in the page's outbox and its fingerprint committed with the page. A rejected item
that names a record (its id, or a stored row's ``remote_id``) counts as seen, so it is
never taken for deleted; one that names nothing makes its full scan withhold the deletes.

A completed scan ends with a marker (``kafka.scan_markers``): a ``scan_completed``
CloudEvent on ``kafka.control_topic``, written to the outbox in the transaction that closes
the scan and published like a page. It carries the offsets Kafka acknowledged for the
scan's last message on each partition of the data topic, gathered from every publish of
the scan in this process (``_ScanProgress``, kept per sink so a pass that resumes after a
failure in the same process still knows the earlier pages).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from daemon.diff import deleted_events, diff_page
from daemon.errors import ScanInterrupted, StreamHeldElsewhere
from daemon.models import (
    ChangeEvent,
    Message,
    Page,
    RejectedItem,
    RejectWrite,
    ScanKind,
    ScanStats,
    StreamKey,
    StreamState,
)
from daemon.ops import metrics
from daemon.settings import ConnectorSettings, ModelSettings, Settings
from daemon.sink.events import (
    ScanMarker,
    fingerprint,
    rejected_message,
    scan_completed_message,
    to_messages,
)
from daemon.source.pagination import PageSource, iter_pages
from daemon.state import SnapshotStore
from daemon.timestamps import parse_time


class EventSink:
    """What a pass needs from Kafka (``daemon.sink.kafka.KafkaSink``)."""

    def publish(  # pragma: no cover - protocol
        self, messages: Sequence[Message]
    ) -> Mapping[tuple[str, int], int] | None:
        """Send and flush; returns (topic, partition) -> the last acknowledged offset."""
        raise NotImplementedError

    def ensure_topics(self, topics: Sequence[str]) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass(slots=True)
class PassResult:
    """The outcome of one pass over a stream."""

    key: StreamKey
    kind: ScanKind
    scan_number: int
    stats: ScanStats = field(default_factory=ScanStats)
    resumed: bool = False
    completed: bool = False
    delete_guard: str | None = None
    watermark: str | None = None
    duration: float = 0.0
    rejected: int = 0  # items rejected by this pass (poison records)
    dead_lettered: int = 0  # of which new contents, published to the dead-letter topic


@dataclass(slots=True)
class _ScanProgress:
    """What this process published of one scan, over all its passes: for the marker.

    ``partial``: the scan had pages (or its deletes) before this process met it, so an
    earlier process published part of it, whose offsets and counts are not known here.
    """

    scan: int
    started_at: float | None
    partial: bool
    offsets: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("created", "updated", "deleted", "unchanged", "stale", "rejected", "dead_lettered"),
            0,
        )
    )

    def acked(self, topic: str, acked: Mapping[tuple[str, int], int] | None) -> None:
        for (where, partition), offset in (acked or {}).items():
            if where == topic and offset > self.offsets.get(partition, -1):
                self.offsets[partition] = offset

    def add(self, **counts: int) -> None:
        for name, count in counts.items():
            self.counts[name] += count


# Per sink (one per process, as Runtime builds them), per stream: the scan in progress. A
# StreamPass lives for one pass; what a scan published must outlive a failed pass.
_PROGRESS: weakref.WeakKeyDictionary[object, dict[StreamKey, _ScanProgress]] = (
    weakref.WeakKeyDictionary()
)
_PROGRESS_LOCK = threading.Lock()


def _progress(sink: object, state: StreamState) -> _ScanProgress:
    """The progress of ``state``'s scan known to ``sink``'s process (new if none)."""
    with _PROGRESS_LOCK:
        streams = _PROGRESS.setdefault(sink, {})
        known = streams.get(state.key)
        if (
            known is None
            or known.scan != state.scan_number
            or known.started_at != state.scan_started_at
        ):
            begun = state.scan_pages > 0 or state.scan_phase == "deletes"
            known = streams[state.key] = _ScanProgress(
                state.scan_number, state.scan_started_at, partial=begun
            )
        return known


def _forget_progress(sink: object, key: StreamKey) -> None:
    with _PROGRESS_LOCK:
        _PROGRESS.get(sink, {}).pop(key, None)


class StreamPass:
    """Runs passes over one stream; the scheduler owns one per stream."""

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
    ) -> None:
        # The store knows a stream by the connector's key (its Bindbee id when discovered);
        # people, metrics and topics by its name.
        self.key = StreamKey(connector.key, model)
        self.name = f"{connector.name}/{model}"
        self.settings = settings
        self.connector = connector
        self.model: ModelSettings = settings.models[model]
        self.topic = settings.kafka.topic_for(connector.name, model)
        self.dead_letter_topic = settings.kafka.dead_letter_topic
        self.control_topic = settings.kafka.control_topic if settings.kafka.scan_markers else None
        self.source = source
        self.store = store
        self.sink = sink
        self.stop = stop or threading.Event()
        self.clock = clock
        self._labels = (connector.name, model)

    def run(
        self,
        *,
        force_full: bool = False,
        on_page: Callable[[PassResult], None] | None = None,
        sync: str | None = None,
    ) -> PassResult:
        """One pass: resume the scan in progress or start the one that is due.

        ``on_page`` is called after every committed page (progress display). ``sync`` is
        the start time of the newest Bindbee sync seen Done for the connector: a full scan
        started now covers it, and the stream's sync bookmark moves to it on completion.
        """
        started = time.monotonic()
        if not self.store.claim(self.key):
            raise StreamHeldElsewhere(f"{self.name} is being polled by another replica")
        state = self._start_or_resume(force_full, sync)
        assert state.scan_kind is not None
        result = PassResult(
            self.key,
            state.scan_kind,
            state.scan_number,
            resumed=state.scan_pages > 0 or state.scan_phase == "deletes",
        )
        # Bound for the whole pass, so client and sink lines carry the stream too.
        with structlog.contextvars.bound_contextvars(
            connector=self.connector.name,
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
            progress = _progress(self.sink, state)
            try:
                # The dead-letter and control topics too, up front: created mid-run, a
                # producer that predates one can miss its metadata and expire the batch.
                topics = [self.topic, self.dead_letter_topic]
                if self.control_topic is not None:
                    topics.append(self.control_topic)
                self.sink.ensure_topics(topics)
                # What an earlier pass left of this scan is this scan's; a fresh scan's
                # outbox holds only an earlier scan's marker (or an abandoned scan's page).
                self._publish_pending(log, progress if result.resumed else None)
                # Initial sync: until the first full scan completes, nothing is "changed".
                initial = state.last_full_scan_at is None
                if state.scan_phase == "pages" and not (
                    state.scan_pages > 0 and state.scan_cursor is None
                ):
                    state = self._walk_pages(state, result, initial, log, on_page, progress)
                if state.scan_kind == "full":
                    state = self._deletes(state, result, log, progress)
                now = self.clock()
                marker = self._marker(state, result, progress, initial, now)
                state = self.store.finish_scan(self.key, now, result.delete_guard, outbox=marker)
                _forget_progress(self.sink, self.key)
            except BaseException as exc:
                result.duration = time.monotonic() - started
                outcome = "interrupted" if isinstance(exc, ScanInterrupted) else "failed"
                metrics.SCANS.labels(*self._labels, result.kind, outcome).inc()
                raise
            result.completed = True
            result.watermark = state.watermark
            result.duration = time.monotonic() - started
            self._record_success(result, state)
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
                duration_s=round(result.duration, 3),
                watermark=state.watermark,
                delete_guard=result.delete_guard,
            )
            if marker:
                # The scan is closed and its marker durable in the outbox: a failed send
                # fails the pass (retried soon), and the next pass sends the marker first.
                self._publish_pending(log, None, event="scan_marker_published")
        return result

    # -- phases ------------------------------------------------------------------

    def _start_or_resume(self, force_full: bool, sync: str | None) -> StreamState:
        state = self.store.state(self.key)
        if state.in_progress:
            if not (force_full and state.scan_kind == "incremental"):
                return state
            self.store.abandon_scan(self.key)
            state = self.store.state(self.key)
        now = self.clock()
        full_due = (
            force_full
            # Bindbee's LMS lists have no incremental filter: a sync is followed by a walk.
            or self.model.trigger == "sync"
            or state.watermark is None
            or state.last_full_scan_started_at is None
            or self.model.incremental_param is None
            or now - state.last_full_scan_started_at >= self.model.full_scan_interval_seconds
        )
        since = None
        if not full_due:
            assert state.watermark is not None
            since_dt = parse_time(state.watermark) - timedelta(seconds=self.model.lookback_seconds)
            since = since_dt.isoformat().replace("+00:00", "Z")
        kind: ScanKind = "full" if full_due else "incremental"
        return self.store.begin_scan(self.key, kind, since, now, sync if full_due else None)

    def _walk_pages(
        self,
        state: StreamState,
        result: PassResult,
        initial: bool,
        log: structlog.BoundLogger,
        on_page: Callable[[PassResult], None] | None,
        progress: _ScanProgress,
    ) -> StreamState:
        params: dict[str, str | int | float | bool] = dict(self.model.params)
        if state.scan_kind == "incremental" and self.model.incremental_param and state.scan_since:
            params[self.model.incremental_param] = state.scan_since
        full = state.scan_kind == "full"
        emit_created = not (initial and self.model.initial_sync == "baseline")
        every = self.settings.log.progress_every_pages
        pages = iter_pages(
            self.source,
            self.connector,
            self.key.model,
            params=params,
            start_cursor=state.scan_cursor,
            start_page=state.scan_pages + 1,
            known_rejects=self._all_dead_lettered,
        )
        stats = result.stats
        ceiling = _watermark_ceiling(state)
        # Closed here, not when the pass's frames are collected: a failed pass must not
        # leave its walker fetching pages after the lease is given back.
        try:
            for page in pages:
                stats.requests += page.requests
                ids = [item["id"] for item in page.items]
                stored = self.store.load_rows(self.key, ids)
                diff = diff_page(
                    self.key,
                    page.items,
                    stored,
                    ignore_fields=self.model.ignore_fields,
                    initial_sync=initial,
                    emit_created=emit_created,
                )
                messages = self._messages(diff.events)
                seen_ids = diff.seen_ids
                rejects: list[RejectWrite] = []
                letters: list[Message] = []
                reasons: list[str] = []
                if page.rejected:
                    rejects, letters, reasons, named = self._rejections(
                        page, state.scan_number, log
                    )
                    seen_ids = [*seen_ids, *named]
                    messages.extend(letters)
                state = self.store.commit_page(
                    self.key,
                    diff.writes,
                    seen_ids if full else (),
                    page.next_cursor,
                    _capped(diff.max_modified_at, ceiling),
                    messages,
                    rejects,
                )
                created = sum(1 for event in diff.events if event.type == "created")
                progress.add(
                    created=created,
                    updated=len(diff.events) - created,
                    unchanged=diff.unchanged,
                    stale=diff.stale,
                    rejected=len(page.rejected),
                    dead_lettered=len(letters),
                )
                self._publish(diff.events, messages, progress)
                for reason in reasons:
                    metrics.ITEMS_REJECTED.labels(*self._labels, reason).inc()
                result.rejected += len(page.rejected)
                result.dead_lettered += len(letters)
                stats.pages += 1
                stats.items += len(page.items)
                stats.unchanged += diff.unchanged
                stats.stale += diff.stale
                metrics.ITEMS_SEEN.labels(*self._labels).inc(len(page.items) + len(page.rejected))
                if diff.stale:
                    metrics.STALE_ITEMS.labels(*self._labels).inc(diff.stale)
                for event in diff.events:
                    if event.type == "created":
                        stats.created += 1
                    else:
                        stats.updated += 1
                if stats.pages % every == 0:
                    log.info(
                        "scan_progress",
                        pages=stats.pages,
                        items=stats.items,
                        created=stats.created,
                        updated=stats.updated,
                    )
                if on_page is not None:
                    on_page(result)
                # Stop only at a page boundary: everything so far is committed and published.
                if page.next_cursor is not None and self.stop.is_set():
                    raise ScanInterrupted(
                        f"{self.name}: stop requested; resumes at page {page.number + 1}"
                    )
        finally:
            pages.close()
        return state

    def _all_dead_lettered(self, rejected: Sequence[RejectedItem]) -> bool:
        """Whether every one of a page's rejected items was dead-lettered before: the
        client then takes the page at one request instead of a round of retries."""
        digests = list(dict.fromkeys(fingerprint(item.raw) for item in rejected))
        return len(self.store.known_rejections(self.key, digests)) == len(digests)

    def _rejections(
        self, page: Page, scan: int, log: structlog.BoundLogger
    ) -> tuple[list[RejectWrite], list[Message], list[str], list[str]]:
        """A page's poison items: what to remember, the dead letters of the contents not
        sent before (and their reasons, for the metric), and the record ids they name."""
        digests = [fingerprint(item.raw) for item in page.rejected]
        known = self.store.known_rejections(self.key, list(dict.fromkeys(digests)))
        unnamed = [
            item.remote_id
            for item, digest in zip(page.rejected, digests, strict=True)
            if item.record_id is None and known.get(digest) is None and item.remote_id
        ]
        by_remote = self.store.find_remote_ids(self.key, unnamed) if unnamed else {}
        now = self.clock()
        base = self.settings.kafka.schema_base_uri
        rejects: list[RejectWrite] = []
        letters: list[Message] = []
        reasons: list[str] = []
        named: list[str] = []
        for item, digest in zip(page.rejected, digests, strict=True):
            record_id = (
                item.record_id
                or known.get(digest)
                or (by_remote.get(item.remote_id) if item.remote_id else None)
            )
            if record_id is not None:
                named.append(record_id)  # seen: never a false `deleted`
            fresh = digest not in known
            if fresh:
                known[digest] = record_id  # the same content twice in one page: one letter
                letters.append(
                    rejected_message(
                        self.dead_letter_topic,
                        self.key,
                        item,
                        digest=digest,
                        page=page.number,
                        scan=scan,
                        record_id=record_id,
                        now=now,
                        schema_base_uri=base,
                    )
                )
                reasons.append(item.reason)
            rejects.append(RejectWrite(digest, item.reason, record_id, now))
            log.warning(
                "item_rejected",
                page=page.number,
                position=item.position,
                reason=item.reason,
                detail=item.detail,
                record_id=record_id,
                fingerprint=digest,
                dead_lettered=fresh,
            )
        return rejects, letters, reasons, named

    def _deletes(
        self,
        state: StreamState,
        result: PassResult,
        log: structlog.BoundLogger,
        progress: _ScanProgress,
    ) -> StreamState:
        withheld = metrics.DELETES_WITHHELD.labels(*self._labels)
        if state.scan_phase != "deletes":
            unidentified = self.store.count_unidentified(self.key)
            if unidentified:
                # An item nothing identifies may be any stored record: none of the rows
                # this scan did not see can be taken for deleted.
                guard = (
                    f"the full scan rejected {unidentified} item(s) it cannot identify (no "
                    "usable id, no stored remote_id); withholding deletes until they are "
                    "fixed (see the dead-letter topic)"
                )
                result.delete_guard = guard
                withheld.set(1)
                metrics.DELETE_GUARD_TRIPS.labels(*self._labels).inc()
                log.error("deletes_withheld", unidentified=unidentified, reason=guard)
                return state
            missing, total = self.store.count_missing(self.key)
            guard = self._delete_guard(missing, total, result)
            if guard is not None:
                result.delete_guard = guard
                withheld.set(1)
                metrics.DELETE_GUARD_TRIPS.labels(*self._labels).inc()
                log.error("delete_guard_tripped", missing=missing, total=total, reason=guard)
                return state
            state = self.store.begin_deletes(self.key)
        withheld.set(0)
        batch = max(self.settings.bindbee.page_size, 100)
        while True:
            rows = self.store.missing_rows(self.key, batch)
            if not rows:
                return state
            events = deleted_events(self.key, rows)
            messages = self._messages(events)
            self.store.commit_deletes(self.key, [row.id for row in rows], messages)
            progress.add(deleted=len(rows))
            self._publish(events, messages, progress)
            result.stats.deleted += len(rows)
            if self.stop.is_set():
                raise ScanInterrupted(f"{self.name}: stop requested during deletes")

    def _delete_guard(self, missing: int, total: int, result: PassResult) -> str | None:
        if missing == 0:
            return None
        if missing == total:
            return f"the full scan saw none of the {total} stored records; deleting nothing"
        fraction = missing / total
        if fraction > self.model.max_delete_fraction:
            return (
                f"{missing} of {total} records ({fraction:.0%}) vanished in one full scan, over "
                f"max_delete_fraction {self.model.max_delete_fraction:.0%}; deleting nothing"
            )
        return None

    def _messages(self, events: list[ChangeEvent]) -> list[Message]:
        tombstones = self.model.emit_tombstones
        base = self.settings.kafka.schema_base_uri
        messages: list[Message] = []
        for event in events:
            messages.extend(
                to_messages(event, self.topic, tombstone=tombstones, schema_base_uri=base)
            )
        return messages

    def _marker(
        self,
        state: StreamState,
        result: PassResult,
        progress: _ScanProgress,
        initial: bool,
        now: float,
    ) -> tuple[Message, ...]:
        """The scan's ``scan_completed`` message (none with ``kafka.scan_markers`` off)."""
        if self.control_topic is None:
            return ()
        full = state.scan_kind == "full"
        # A baseline's records are not on the topic: it cannot vouch for the source yet.
        baseline = initial and self.model.initial_sync == "baseline"
        marker = ScanMarker(
            stream=self.key,
            data_topic=self.topic,
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
            consistent=full and result.delete_guard is None and not baseline,
        )
        base = self.settings.kafka.schema_base_uri
        return (scan_completed_message(self.control_topic, marker, schema_base_uri=base),)

    def _publish_pending(
        self,
        log: structlog.BoundLogger,
        progress: _ScanProgress | None,
        *,
        event: str = "outbox_published",
    ) -> None:
        """Send what the outbox holds (an earlier pass's page, or a scan's marker)."""
        pending = self.store.pending(self.key)
        if pending:
            self.store.check_lease(self.key)
            acked = self.sink.publish(pending)
            self.store.clear_pending(self.key)
            if progress is not None:
                progress.acked(self.topic, acked)
            log.info(event, messages=len(pending))

    def _publish(
        self, events: list[ChangeEvent], messages: list[Message], progress: _ScanProgress
    ) -> None:
        # The page is committed with its messages in the outbox: send, then forget them.
        # A failure here leaves them in the outbox for the next pass to send first.
        if not messages:
            return
        # Still ours? A replica paused since the commit must not send an older page after
        # the new holder's newer one.
        self.store.check_lease(self.key)
        acked = self.sink.publish(messages)
        self.store.clear_pending(self.key)
        progress.acked(self.topic, acked)
        counts: dict[str, int] = {}
        for event in events:
            counts[event.type] = counts.get(event.type, 0) + 1
        for kind, count in counts.items():
            metrics.EVENTS_PUBLISHED.labels(*self._labels, kind).inc(count)

    def _record_success(self, result: PassResult, state: StreamState) -> None:
        labels = self._labels
        metrics.SCANS.labels(*labels, result.kind, "ok").inc()
        metrics.SCAN_DURATION.labels(*labels).observe(result.duration)
        metrics.LAST_SUCCESS.labels(*labels).set(self.clock())
        metrics.STREAM_UP.labels(*labels).set(1)
        if state.watermark is not None:
            metrics.WATERMARK.labels(*labels).set(parse_time(state.watermark).timestamp())


def _watermark_ceiling(state: StreamState) -> str | None:
    """The most a scan may move the watermark to: the moment it started.

    Pages come in id order, so a record changed while the scan runs, behind its cursor, is
    not seen, although a later page may carry a newer ``modified_at``. A watermark past the
    scan's start would make the next incremental pass skip that change (and a record dated
    in the future would make every later one skip everything). Capped, the next pass asks
    from the scan's start (minus ``lookback_seconds``, which also absorbs clock skew).
    """
    if state.scan_started_at is None:
        return None
    started = datetime.fromtimestamp(state.scan_started_at, UTC)
    return started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _capped(max_modified: str | None, ceiling: str | None) -> str | None:
    # Both are normalised timestamps: fixed width, so text order is time order.
    if max_modified is None or ceiling is None:
        return max_modified
    return min(max_modified, ceiling)
