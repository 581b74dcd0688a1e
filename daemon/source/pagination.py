"""Cursor walking with resume and loop detection."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from daemon.errors import MalformedResponseError
from daemon.models import Page
from daemon.settings import ConnectorSettings


class PageSource(Protocol):
    """Anything that can fetch one list page (the Bindbee client)."""

    def fetch_page(
        self,
        connector: ConnectorSettings,
        model: str,
        *,
        params: dict[str, str | int | float | bool] | None = None,
        cursor: str | None = None,
        number: int = 1,
    ) -> Page: ...


class CursorWalk:
    """Remembers the cursors of one walk; refuses a cursor it has already followed."""

    def __init__(self, where: str, start_cursor: str | None = None) -> None:
        self.where = where
        self._seen: set[str | None] = {start_cursor}

    def next(self, page: Page) -> str | None:
        """The cursor to follow after ``page``; None when the walk is over."""
        cursor = page.next_cursor
        if cursor is None:
            return None
        if cursor in self._seen:
            raise MalformedResponseError(
                f"{self.where} page {page.number}: cursor repeats an earlier page (cursor loop)"
            )
        self._seen.add(cursor)
        return cursor

    def seen(self, cursor: str) -> bool:
        """True if the walk already followed ``cursor`` (``next`` would refuse it)."""
        return cursor in self._seen


def iter_pages(
    source: PageSource,
    connector: ConnectorSettings,
    model: str,
    *,
    params: dict[str, str | int | float | bool] | None = None,
    start_cursor: str | None = None,
    start_page: int = 1,
) -> Iterator[Page]:
    """Yield pages from ``start_cursor`` (None: the first page) until the cursor is null.

    The next page is fetched in the background while the caller works on this one (one
    page ahead, same requests): the API's latency overlaps the diff, commit and publish.
    """
    walk = CursorWalk(f"{connector.name}/{model}", start_cursor)
    number = start_page

    def fetch(cursor: str | None, number: int) -> Future[Page]:
        # A copy of the context, so the client's log lines keep the stream's bound fields.
        run = contextvars.copy_context().run
        return pool.submit(
            run, source.fetch_page, connector, model, params=params, cursor=cursor, number=number
        )

    with ThreadPoolExecutor(1, thread_name_prefix="page-prefetch") as pool:
        ahead = fetch(start_cursor, number)
        try:
            while True:
                page = ahead.result()
                cursor = page.next_cursor
                if cursor is not None and not walk.seen(cursor):
                    ahead = fetch(cursor, number + 1)
                yield page
                next_cursor = walk.next(page)  # raises on a cursor loop, after the page
                if next_cursor is None:
                    return
                number += 1
        finally:
            ahead.cancel()  # a page fetched ahead and never used costs one request
