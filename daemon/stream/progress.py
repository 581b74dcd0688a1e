"""What a pass and its scan counted, counted once per page.

A page (or a batch of deletes) is tallied once, in a ``PageTally``; the pass's result,
the scan's marker counts (``ScanProgress``) and the metrics are all derived from it.

A scan may take several passes (a stop, a failed publish, a lost lease): its completion
marker must still carry what every pass of it in this process published. A StreamPass
may live for one pass only (the scheduler builds one per pass), so the runtime owns one
``ScanProgressBook`` for all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from daemon.diff import PageDiff
from daemon.models import EventType, Page, ScanKind, ScanStats, StreamKey, StreamState
from daemon.ops import metrics
from daemon.stream.rules import scan_begun

MARKER_COUNTS = ("created", "updated", "deleted", "unchanged", "stale", "rejected", "dead_lettered")
"""The counts a ``scan_completed`` marker carries."""

_EVENT_TYPES: tuple[EventType, ...] = ("created", "updated", "deleted")
_STATS = tuple(f.name for f in fields(ScanStats))  # each is a PageTally field too


@dataclass(frozen=True, slots=True)
class PageTally:
    """What one committed page, or one batch of deletes, counts."""

    pages: int = 0
    items: int = 0  # good items (``rejected`` are the others)
    requests: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    stale: int = 0
    rejected: int = 0
    dead_lettered: int = 0  # rejected items whose content went to the dead-letter topic

    @classmethod
    def of_page(cls, page: Page, diff: PageDiff, dead_lettered: int) -> PageTally:
        created = sum(1 for event in diff.events if event.type == "created")
        return cls(
            pages=1,
            items=len(page.items),
            requests=page.requests,
            created=created,
            updated=len(diff.events) - created,  # a page's events are created or updated
            unchanged=diff.unchanged,
            stale=diff.stale,
            rejected=len(page.rejected),
            dead_lettered=dead_lettered,
        )

    def events(self) -> dict[EventType, int]:
        """Events by type (those with any)."""
        counts = {kind: getattr(self, kind) for kind in _EVENT_TYPES}
        return {kind: count for kind, count in counts.items() if count}


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
    hint_missed: int | None = None  # a walk's changes no hint named (None: not measured)

    def add(self, tally: PageTally) -> None:
        stats = self.stats
        for name in _STATS:
            setattr(stats, name, getattr(stats, name) + getattr(tally, name))
        self.rejected += tally.rejected
        self.dead_lettered += tally.dead_lettered


@dataclass(slots=True)
class ScanProgress:
    """What this process published of one scan, over all its passes: for the marker.

    ``partial``: the scan had pages (or its deletes) before this process met it, so an
    earlier process published part of it, whose offsets and counts are not known here.
    """

    scan: int
    started_at: float | None
    partial: bool
    offsets: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MARKER_COUNTS, 0))
    hint_missed: int = 0  # changes no hint named (measured walks only), for the marker

    def acked(self, topic: str, acked: Mapping[tuple[str, int], int] | None) -> None:
        """Keep the newest offset Kafka acknowledged on each partition of ``topic``."""
        for (where, partition), offset in (acked or {}).items():
            if where == topic and offset > self.offsets.get(partition, -1):
                self.offsets[partition] = offset

    def add(self, tally: PageTally) -> None:
        for name in MARKER_COUNTS:
            self.counts[name] += getattr(tally, name)


class ScanProgressBook:
    """Per stream, the progress of the scan in progress known to this process.

    One per process (``Runtime`` owns it) and shared by every pass it builds: what a scan
    published must outlive a failed pass and the StreamPass that ran it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # passes of different streams run on their own threads
        self._scans: dict[StreamKey, ScanProgress] = {}

    def scan(self, state: StreamState) -> ScanProgress:
        """The progress of ``state``'s scan (new if this process has not met that scan)."""
        with self._lock:
            known = self._scans.get(state.key)
            if (
                known is None
                or known.scan != state.scan_number
                or known.started_at != state.scan_started_at
            ):
                known = self._scans[state.key] = ScanProgress(
                    state.scan_number, state.scan_started_at, partial=scan_begun(state)
                )
            return known

    def forget(self, key: StreamKey) -> None:
        """Drop ``key``'s progress (its scan is closed)."""
        with self._lock:
            self._scans.pop(key, None)


def record_published(labels: Sequence[str], tally: PageTally) -> None:
    """Metrics of what reached Kafka: the events of a published page or delete batch."""
    for kind, count in tally.events().items():
        metrics.EVENTS_PUBLISHED.labels(*labels, kind).inc(count)


def record_page(labels: Sequence[str], tally: PageTally, reasons: Sequence[str]) -> None:
    """Metrics of a published page: its events, items seen, stale and rejected items
    (``reasons``: one per dead-lettered item, as the rejects metric counts them)."""
    record_published(labels, tally)
    for reason in reasons:
        metrics.ITEMS_REJECTED.labels(*labels, reason).inc()
    metrics.ITEMS_SEEN.labels(*labels).inc(tally.items + tally.rejected)
    if tally.stale:
        metrics.STALE_ITEMS.labels(*labels).inc(tally.stale)
