"""Cursor walking with resume and loop detection."""

from __future__ import annotations

from collections.abc import Iterator
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


def iter_pages(
    source: PageSource,
    connector: ConnectorSettings,
    model: str,
    *,
    params: dict[str, str | int | float | bool] | None = None,
    start_cursor: str | None = None,
    start_page: int = 1,
) -> Iterator[Page]:
    """Yield pages from ``start_cursor`` (None: the first page) until the cursor is null."""
    walk = CursorWalk(f"{connector.name}/{model}", start_cursor)
    cursor, number = start_cursor, start_page
    while True:
        page = source.fetch_page(connector, model, params=params, cursor=cursor, number=number)
        yield page
        next_cursor = walk.next(page)
        if next_cursor is None:
            return
        cursor, number = next_cursor, number + 1
