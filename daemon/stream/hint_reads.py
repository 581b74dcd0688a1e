"""The targeted read: a stream reads the records its connector's hints named, by id.

Under the stream's lease (the caller claimed it, every commit is fenced), after the
pending outbox is sent: the unread hints of the stream's connector are taken together.
Each id the stream stores, or that no stream of the connector stores, is read with
``GET /{model}/{id}`` and the walk's projection; batches of reads are diffed against the
stored rows and committed with their events (the outbox), then published, like a page:

    stored, changed           -> updated          new, within the filters -> created
    stored, answered 404      -> deleted (through the delete guard)
    unknown and 404           -> nothing (another model's, or gone already)
    malformed after its tries -> the dead-letter topic, the stored row kept

The hints are marked read with the ``hints_read`` marker, in the last commit. The
watermark never moves. Nothing is read before the stream's first full scan completed,
and the caller walks instead when the reads would cost more than the connector's walks
(``hint_rules.read_instead``), a hint could not be read by id, or the model's ``params``
hold a filter the read cannot check (``hint_rules.unknown_filters``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from daemon.diff import deleted_events, diff_page
from daemon.models import Hint, Page, RejectedItem, StreamKey
from daemon.ops import metrics
from daemon.settings import ConnectorSettings
from daemon.sink.hint_marker import HINT_COUNTS, HintsReadMarker, hints_read_message
from daemon.source.client import QueryParams, RecordRead
from daemon.stream.context import StreamContext
from daemon.stream.hint_rules import (
    passes_filters,
    projection,
    read_cost,
    read_instead,
    unknown_filters,
    walk_cost,
)
from daemon.stream.progress import ScanProgress
from daemon.stream.rejects import page_rejections
from daemon.stream.rules import delete_guard

BATCH = 100
"""Ids read per commit (a page's worth)."""


class RecordSource(Protocol):
    """Reads one record by id (the Bindbee client)."""

    def read_record(
        self,
        connector: ConnectorSettings,
        model: str,
        record_id: str,
        params: QueryParams | None = None,
    ) -> RecordRead: ...


@dataclass(slots=True)
class HintResult:
    """What a targeted read did; ``walk_reason`` set: it read nothing, walk instead."""

    hints: tuple[Hint, ...] = ()
    walk_reason: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HINT_COUNTS, 0))
    withheld: bool = False

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(rid for hint in self.hints for rid in hint.ids)


class HintReads:
    """One targeted read of ``stream`` for the hints of Bindbee connector ``connector_id``;
    ``models``: the models configured for the connector (an unknown id is tried in each)."""

    def __init__(
        self,
        stream: StreamContext,
        connector_id: str,
        models: Sequence[str],
        log: structlog.BoundLogger,
    ) -> None:
        self.stream = stream
        self.connector_id = connector_id
        self.models = list(models)
        self.log = log
        self.progress = ScanProgress(0, None, partial=False)  # offsets for the marker

    def run(self, hints: Sequence[Hint]) -> HintResult:
        """Read ``hints`` (this stream's unread ones); returns what was done."""
        result = HintResult(tuple(hints))
        if not hints:
            return result
        walk = next((h for h in hints if h.walk), None)
        if walk is not None:
            result.walk_reason = "a hint could not be read by id (over the id cap, or unsafe)"
            return result
        unknown = unknown_filters(self.stream.model.params)
        if unknown is not None:
            # Which records the walk lists cannot be judged here: reading by id could
            # invent a created (or a deleted); the walk decides instead.
            result.walk_reason = unknown
            return result
        stream, key = self.stream, self.stream.key
        ids = list(dict.fromkeys(rid for hint in hints for rid in hint.ids))
        located = stream.store.locate(key.connector, ids)
        records = self._records()
        reads = read_cost(len(located), len(ids) - len(located), len(self.models))
        walks = walk_cost(records.values(), stream.settings.bindbee.page_size)
        if not read_instead(reads, walks):
            result.walk_reason = f"reading {reads} ids would cost more than walking ({walks})"
            return result
        started = stream.clock()
        stream.publish_pending(self.log, None)
        mine = [rid for rid in ids if located.get(rid, key.model) == key.model]
        total = records.get(key.model, 0)
        for start in range(0, len(mine), BATCH):
            self._batch(mine[start : start + BATCH], total, result)
        self._finish(result, started)
        return result

    def _records(self) -> dict[str, int]:
        """Records stored per model of the connector (what each walk would list)."""
        stream = self.stream
        return {
            model: stream.store.state(StreamKey(stream.key.connector, model)).records
            for model in self.models
        }

    def _read(self, ids: Sequence[str], result: HintResult) -> list[tuple[str, RecordRead]]:
        stream = self.stream
        source: RecordSource = stream.source  # type: ignore[assignment]
        params = projection(stream.model.params)
        reads = []
        for rid in ids:
            read = source.read_record(stream.connector, stream.key.model, rid, params)
            result.counts["requests"] += read.requests
            reads.append((rid, read))
        return reads

    def _batch(self, ids: Sequence[str], total: int, result: HintResult) -> None:
        """Read, diff, commit (with the outbox), publish one batch of ids."""
        stream, key = self.stream, self.stream.key
        reads = self._read(ids, result)
        stored = stream.store.load_rows(key, list(ids))
        params: dict[str, Any] = dict(stream.model.params)
        found = [r.record for _, r in reads if r.record is not None]
        rejected: list[RejectedItem] = [r.rejected for _, r in reads if r.rejected is not None]
        within = [rec for rec in found if passes_filters(rec, params)]
        # Outside the stream's filters now: not the stream's record (a walk would not list
        # it), so a stored one goes as a delete would, a new one is not created.
        outside = [rec["id"] for rec in found if not passes_filters(rec, params)]
        gone = [rid for rid, r in reads if r.record is None and r.rejected is None]
        diff = diff_page(key, within, stored, ignore_fields=stream.model.ignore_fields)
        doomed = self._guarded([rid for rid in [*gone, *outside] if rid in stored], total, result)
        events = [*diff.events, *deleted_events(key, [stored[rid] for rid in doomed])]
        messages = stream.messages(events)
        rejections = None
        if rejected:
            page = Page(0, [], None, None, 0, tuple(rejected))
            scan = stream.store.state(key, count=False).scan_number
            rejections = page_rejections(stream, page, scan, self.log)
            messages.extend(rejections.letters)
        # Fenced, in one transaction; the rows written count as seen by a full walk of
        # the stream still unfinished (commit_reads marks them).
        stream.store.commit_reads(
            key, diff.writes, doomed, messages, rejections.writes if rejections else ()
        )
        stream.publish(messages, self.progress)
        outcomes = {
            "unchanged": diff.unchanged + diff.stale,
            "not_found": len(gone),
            "rejected": len(rejected),
            "filtered": sum(1 for rid in outside if rid not in stored),
        }
        for event in events:
            outcomes[event.type] = outcomes.get(event.type, 0) + 1
            metrics.EVENTS_PUBLISHED.labels(*stream.labels, event.type).inc()
        counts = result.counts
        counts["asked"] += len(ids)
        counts["found"] += len(found) + len(rejected)
        for outcome, value in outcomes.items():
            if outcome in counts:
                counts[outcome] += value
            if value:
                metrics.HINT_READS.labels(outcome).inc(value)

    def _guarded(self, doomed: list[str], total: int, result: HintResult) -> list[str]:
        """The deletes that may go ahead: none when the delete guard trips."""
        if not doomed:
            return doomed
        fraction = self.stream.model.max_delete_fraction
        guard = delete_guard(len(doomed), max(total, len(doomed)), fraction)
        if guard is None:
            return doomed
        self.log.error("hint_deletes_withheld", ids=len(doomed), reason=guard)
        metrics.HINT_READS.labels("withheld").inc(len(doomed))
        result.withheld = True
        return []

    def _finish(self, result: HintResult, started: float) -> None:
        """Mark the hints read, with the marker (when markers are on): one commit."""
        stream = self.stream
        hids = [hint.hid for hint in result.hints]
        messages = []
        if stream.control_topic is not None:
            marker = HintsReadMarker(
                stream=stream.key,
                data_topic=stream.topic,
                hints=hids,
                sync_ids=[h.sync_id for h in result.hints if h.sync_id],
                started_at=started,
                finished_at=stream.clock(),
                counts=result.counts,
                deletes_withheld=result.withheld,
                partitions=self.progress.offsets,
            )
            base = stream.settings.kafka.schema_base_uri
            messages.append(hints_read_message(stream.control_topic, marker, schema_base_uri=base))
        stream.store.commit_reads(stream.key, [], [], messages, read_hints=hids, now=time.time())
        stream.publish(messages, ScanProgress(0, None, partial=False))
        self.log.info("hints_read", hints=len(hids), **result.counts, withheld=result.withheld)
