"""The page walk: for each page, fetch → diff → commit (outbox) → publish.

One transaction holds a page's snapshot rows, the scan cursor, its events and its dead
letters (the outbox); only then are they sent, flushed, and cleared from the outbox.
The walk stops only at a page boundary, when everything before it is committed and
published, so a stopped scan resumes at the next page.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from daemon.diff import PageDiff, diff_page
from daemon.errors import ScanInterrupted
from daemon.models import Page, StreamState
from daemon.ops import metrics
from daemon.source.pagination import iter_pages
from daemon.stream.context import StreamContext
from daemon.stream.hint_measure import HintMeasure
from daemon.stream.progress import PageTally, PassResult, ScanProgress, record_page
from daemon.stream.rejects import PageRejections, all_dead_lettered, page_rejections
from daemon.stream.rules import (
    capped_watermark,
    is_baseline,
    page_params,
    watermark_ceiling,
)


class PageWalk:
    """The walk over the pages a scan has left, from its cursor."""

    def __init__(
        self,
        stream: StreamContext,
        state: StreamState,
        result: PassResult,
        progress: ScanProgress,
        *,
        initial: bool,
        log: structlog.BoundLogger,
        measure: HintMeasure | None = None,
    ) -> None:
        self.stream = stream
        self.measure = measure  # a walk measuring the hints: counts changes none named
        self.state = state  # as of the last committed page
        self.result = result
        self.progress = progress
        self.initial = initial  # an initial sync: nothing before it was "changed"
        self.log = log
        self.ceiling = watermark_ceiling(state.scan_started_at)
        self.full = state.scan_kind == "full"

    def run(self, on_page: Callable[[PassResult], None] | None = None) -> StreamState:
        """Walk to the last page (or a stop); returns the state after the last commit.

        ``on_page`` is called after every committed and published page.
        """
        stream, state = self.stream, self.state
        pages = iter_pages(
            stream.source,
            stream.connector,
            stream.key.model,
            params=page_params(stream.model, state),
            start_cursor=state.scan_cursor,
            start_page=state.scan_pages + 1,
            known_rejects=lambda rejected: all_dead_lettered(stream, rejected),
        )
        # Closed here, not when the pass's frames are collected: a failed pass must not
        # leave its walker fetching pages after the lease is given back.
        try:
            for page in pages:
                self._page(page)
                if on_page is not None:
                    on_page(self.result)
                # Stop only at a page boundary: everything so far is committed and published.
                if page.next_cursor is not None and stream.stop.is_set():
                    raise ScanInterrupted(
                        f"{stream.name}: stop requested; resumes at page {page.number + 1}"
                    )
        finally:
            pages.close()
        return self.state

    def _page(self, page: Page) -> None:
        """One page: diff, commit with its outbox, publish, count."""
        stream = self.stream
        diff = self._diff(page)
        messages = stream.messages(diff.events)
        seen_ids = diff.seen_ids
        rejections = PageRejections()
        if page.rejected:
            rejections = page_rejections(stream, page, self.state.scan_number, self.log)
            seen_ids = [*seen_ids, *rejections.named]
            messages.extend(rejections.letters)
        self.state = stream.store.commit_page(
            stream.key,
            diff.writes,
            seen_ids if self.full else (),
            page.next_cursor,
            capped_watermark(diff.max_modified_at, self.ceiling),
            messages,
            rejections.writes,
        )
        tally = PageTally.of_page(page, diff, dead_lettered=len(rejections.letters))
        # Counted for the marker once committed: if the send fails, the next pass sends
        # these messages from the outbox as part of the same scan.
        self.progress.add(tally)
        stream.publish(messages, self.progress)
        if self.measure is not None and diff.events:
            missed = self.measure.missed(event.record_id for event in diff.events)
            count_missed(stream, self.progress, missed)
        self.result.add(tally)
        record_page(stream.labels, tally, rejections.reasons)
        self._log_progress()

    def _diff(self, page: Page) -> PageDiff:
        stream = self.stream
        ids = [item["id"] for item in page.items]
        stored = stream.store.load_rows(stream.key, ids)
        return diff_page(
            stream.key,
            page.items,
            stored,
            ignore_fields=stream.model.ignore_fields,
            initial_sync=self.initial,
            emit_created=not is_baseline(stream.model, self.initial),
        )

    def _log_progress(self) -> None:
        stats = self.result.stats
        if stats.pages % self.stream.settings.log.progress_every_pages == 0:
            self.log.info(
                "scan_progress",
                pages=stats.pages,
                items=stats.items,
                created=stats.created,
                updated=stats.updated,
            )


def count_missed(stream: StreamContext, progress: ScanProgress, missed: int) -> None:
    """Count a walk's changes that no hint named (the marker, the metric)."""
    if missed:
        progress.hint_missed += missed
        metrics.HINT_MISSED.labels(*stream.labels).inc(missed)
