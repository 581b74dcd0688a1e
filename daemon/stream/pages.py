"""The page walk: for each page, fetch → diff → commit (outbox) → publish.

One transaction holds a page's snapshot rows, the scan cursor, its events and its dead
letters (the outbox); only then are they sent and flushed. Once Kafka acknowledged them
the next page's commit replaces the outbox (no transaction of its own to clear it); the
walk's last page, a stop or a failure clears it.
The walk stops only at a page boundary, when everything before it is committed and
published, so a stopped scan resumes at the next page.

A page that changes nothing (no row to write, no message, nothing rejected: a steady
scan's common page) is not committed on its own: up to ``COMMIT_EVERY_PAGES`` such pages
go in one commit (their seen ids and the last cursor), together with the next page that
has something, or at the last page, or before the walk stops or fails. A process killed
during a steady scan so walks at most that many pages again (docs/operations.md); they
had no events, so nothing is sent twice.

An initial sync's pages are diffed without loading their rows (none is stored yet) and
committed as new rows only; a page that meets a stored row is loaded and diffed again
(``StoredRowsFound``), and so is every page after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from daemon.diff import PageDiff, diff_page
from daemon.errors import ScanInterrupted, StoredRowsFound, StreamHeldElsewhere
from daemon.models import Message, Page, RejectWrite, RowWrite, SnapshotRow, StreamState
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

# G: pages without changes per commit. 10 pages of 100 records: one commit (and one
# seen-ids row, one stream-row update) per 1,000 records of a steady scan instead of 10,
# and at most ~3 s of walking (at 200 requests/min) to do again after a crash.
COMMIT_EVERY_PAGES = 10


@dataclass(slots=True)
class _Pending:
    """Pages walked but not yet committed (each changed nothing)."""

    pages: int = 0
    seen_ids: list[str] = field(default_factory=list)
    cursor: str | None = None
    max_modified: str | None = None
    tallies: list[PageTally] = field(default_factory=list)

    def mark(self) -> tuple[int, int, str | None, str | None, int]:
        """Where it stands now, for ``restore``."""
        return (self.pages, len(self.seen_ids), self.cursor, self.max_modified, len(self.tallies))

    def restore(self, mark: tuple[int, int, str | None, str | None, int]) -> None:
        """Forget what was added since ``mark``."""
        self.pages, seen, self.cursor, self.max_modified, tallies = mark
        del self.seen_ids[seen:], self.tallies[tallies:]

    def add(self, seen_ids: list[str], cursor: str | None, max_modified: str | None) -> None:
        self.pages += 1
        self.seen_ids.extend(seen_ids)
        self.cursor = cursor
        if max_modified is not None and (
            self.max_modified is None or max_modified > self.max_modified
        ):
            self.max_modified = max_modified


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
        self.pending = _Pending()
        self.commit_failed = False  # a commit raised: whether it landed is not known
        # An initial sync's pages hold records never stored: they are diffed without
        # loading, and committed as new rows only. The first page that meets a stored
        # one (the API's order shifted, a page walked again) is loaded and diffed again,
        # and so is every page after it.
        self.assume_new = initial
        # The outbox holds a page Kafka acknowledged: the next commit replaces it (one
        # transaction less per page with events), or ``_clear`` forgets it.
        self.sent_uncleared = False
        self.logged_pages = 0  # pages counted at the last scan_progress line

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
                    self._flush()
                    self._clear()
                    raise ScanInterrupted(
                        f"{stream.name}: stop requested; resumes at page {page.number + 1}"
                    )
        except Exception:
            # A failed fetch: keep the quiet pages walked so far. Not after a failed commit:
            # it may have landed all the same (an answer lost on the wire), and committing
            # the pages again would move the cursor back and replace its outbox.
            if self.pending.pages and not self.commit_failed:
                with contextlib.suppress(Exception):
                    self._flush()
            try:
                self._clear()
            except Exception as exc:  # the next pass sends that page again (same ids)
                level = self.log.info if isinstance(exc, StreamHeldElsewhere) else self.log.warning
                level("outbox_clear_failed", error=str(exc))
            raise
        finally:
            pages.close()
        self._flush()
        self._clear()
        return self.state

    def _page(self, page: Page) -> None:
        """One page: diff, commit with its outbox, publish, count."""
        stream = self.stream
        rejections = PageRejections()
        if page.rejected:
            rejections = page_rejections(stream, page, self.state.scan_number, self.log)
        while True:
            new_rows = self.assume_new
            diff = self._diff(page, load=not new_rows)
            messages = stream.messages(diff.events)
            messages.extend(rejections.letters)
            tally = PageTally.of_page(page, diff, dead_lettered=len(rejections.letters))
            pending = self.pending
            mark = pending.mark()
            pending.add(
                [*diff.seen_ids, *rejections.named] if self.full else [],
                page.next_cursor,
                capped_watermark(diff.max_modified_at, self.ceiling),
            )
            pending.tallies.append(tally)
            try:
                sent = self._commit(page, diff, messages, rejections, new_rows=new_rows)
                break
            except StoredRowsFound as found:
                pending.restore(mark)
                self.assume_new = False
                self.log.info("stored_rows_found", page=page.number, reason=str(found))
            except BaseException:
                if self.pending is pending:  # not committed: this page is walked again
                    pending.restore(mark)
                raise
        record_page(stream.labels, tally, rejections.reasons)
        if not sent:
            return
        if self.measure is not None and diff.events:
            missed = self.measure.missed(event.record_id for event in diff.events)
            count_missed(stream, self.progress, missed)
        self._log_progress()

    def _commit(
        self,
        page: Page,
        diff: PageDiff,
        messages: list[Message],
        rejections: PageRejections,
        *,
        new_rows: bool,
    ) -> bool:
        """Commit the pages walked so far and publish this one's messages; False if this
        page changed nothing and waits to be committed with a later one."""
        quiet = not (diff.writes or messages or rejections.writes)
        if (
            quiet
            and not self.sent_uncleared  # a sent page's outbox waits for no quiet pages
            and self.pending.pages < COMMIT_EVERY_PAGES
            and page.next_cursor is not None
        ):
            return False
        self._flush(diff.writes, messages, rejections.writes, new_rows=new_rows)
        # Not cleared on its own: the next page's commit replaces the outbox. A crash in
        # between sends this page again on resume, as a crash between the send and a
        # clear did: the same messages, byte for byte.
        last = page.next_cursor is None
        self.stream.publish(messages, self.progress, clear=last)
        self.sent_uncleared = bool(messages) and not last
        return True

    def _flush(
        self,
        writes: list[RowWrite] | None = None,
        messages: list[Message] | None = None,
        rejected: list[RejectWrite] | None = None,
        *,
        new_rows: bool = False,
    ) -> None:
        """Commit the pages walked since the last commit, the last one with its changes."""
        pending = self.pending
        if not pending.pages:
            return
        try:
            self.state = self.stream.store.commit_page(
                self.stream.key,
                writes or [],
                pending.seen_ids,
                pending.cursor,
                pending.max_modified,
                messages or [],
                rejected or [],
                pages=pending.pages,
                new_rows=new_rows,
            )
        except StoredRowsFound:
            raise  # rolled back, certainly: nothing landed
        except BaseException:
            self.commit_failed = True
            raise
        self.pending = _Pending()
        self.sent_uncleared = False  # the commit replaced the outbox
        for tally in pending.tallies:
            # Counted for the marker once committed: if the send fails, the next pass
            # sends these messages from the outbox as part of the same scan.
            self.progress.add(tally)
            self.result.add(tally)

    def _clear(self) -> None:
        """Forget a sent page's outbox that no commit replaced (the walk stops here): only
        if the stream is where that page's commit left it (a failed commit after it may
        have landed, its own page then in the outbox, not sent)."""
        if self.sent_uncleared:
            state = self.state
            self.stream.store.clear_pending(
                self.stream.key, at=(state.scan_number, state.scan_pages)
            )
            self.sent_uncleared = False

    def _diff(self, page: Page, *, load: bool = True) -> PageDiff:
        """The page against its stored rows (``load=False``: as if none were stored)."""
        stream = self.stream
        stored: Mapping[str, SnapshotRow] = {}
        if load:
            stored = stream.store.load_rows(stream.key, [item["id"] for item in page.items])
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
        every = self.stream.settings.log.progress_every_pages
        # Pages are counted a commit at a time (up to G at once): log on crossing a multiple.
        if stats.pages // every > self.logged_pages // every:
            self.logged_pages = stats.pages
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
