"""The Bindbee LMS data client: list pages and records by id, for one organisation.

Every request goes through ``source.transport`` (one pool, one retry and status policy,
one error translation); this module says what a data answer must look like. Per
connector, requests wait for the connector's lane: ``connections_per_connector`` slots and
a sliding-window limiter, created on its first request and shared by all its streams.

A well-formed page with malformed items (not an object, no usable id, no readable
``modified_at``, unhashable: ``source.items``) is fetched again too, since a glitch
clears; after the last try it is returned with its good items and the others in
``Page.rejected``, for the stream to dead-letter: one poison record never stops the feed.
A page whose bad items were all dead-lettered before (``known_rejects`` says so) is used
at once: a poison record seen on every scan costs no extra request after the first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from daemon.errors import NotFoundError
from daemon.models import Page, Record, RejectedItem
from daemon.settings import BindbeeSettings, ConnectorSettings
from daemon.source.items import classify_item, classify_items
from daemon.source.pagination import KnownRejects
from daemon.source.ratelimit import RateLimiter
from daemon.source.transport import (
    API_PREFIX,
    CONNECTIONS_PER_CONNECTOR,
    KEEPALIVE_SECONDS,
    Transport,
    TryAgain,
    page_body,
)

__all__ = [
    "API_PREFIX",
    "CONNECTIONS_PER_CONNECTOR",
    "KEEPALIVE_SECONDS",
    "BindbeeClient",
    "KnownRejects",
    "QueryParams",
    "RecordRead",
    "classify_item",
    "classify_items",
]

log = structlog.get_logger("daemon.source.client")

QueryParams = Mapping[str, str | int | float | bool]
_T = TypeVar("_T")


def _query_value(value: str | int | float | bool) -> str | int | float:
    # The API is FastAPI: booleans are spelled true/false.
    return ("true" if value else "false") if isinstance(value, bool) else value


@dataclass(frozen=True, slots=True)
class RecordRead:
    """One read by id: the record, or ``rejected`` (still malformed after every try), or
    neither (404: there is no such record; an outcome, not an error); ``requests`` sent."""

    record: Record | None
    rejected: RejectedItem | None
    requests: int


class BindbeeClient:
    """One client per Bindbee organisation, over its own ``Transport`` (one pool).

    ``stop`` makes every wait (rate budget, connection slot, back-off) end early with
    ScanInterrupted. ``connections_per_connector`` defaults to the setting of that name.
    """

    def __init__(
        self,
        settings: BindbeeSettings,
        *,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        connections_per_connector: int | None = None,
    ) -> None:
        self.settings = settings
        self.transport = Transport(
            settings, stop=stop, sleep=sleep, connections_per_connector=connections_per_connector
        )

    def __repr__(self) -> str:
        return f"BindbeeClient(base_url={self.settings.base_url!r})"

    def __enter__(self) -> BindbeeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    def limiter(self, connector: str) -> RateLimiter:
        """The rate limiter shared by every stream of ``connector``."""
        return self.transport.connector_lane(connector).limiter

    def in_flight(self, connector: str) -> int:
        """Requests of ``connector`` holding a connection slot now."""
        return self.transport.in_flight(connector)

    def fetch_page(
        self,
        connector: ConnectorSettings,
        model: str,
        *,
        params: QueryParams | None = None,
        cursor: str | None = None,
        number: int = 1,
        known_rejects: KnownRejects | None = None,
    ) -> Page:
        """Fetch one list page; retries what is retriable, raises typed errors for the rest.

        A page with malformed items is fetched again up to ``max_attempts`` times, unless
        ``known_rejects`` says all of them were dead-lettered before: then the first answer
        is used (a poison record stays poison; fetching it again only spends budget).
        """
        query: dict[str, str | int | float] = {"page_size": self.settings.page_size}
        for key, value in (params or {}).items():
            query[key] = _query_value(value)
        if cursor is not None:
            query["cursor"] = cursor
        where = f"{connector.name}/{model} page {number}"

        def parse(body: Any, sent: int) -> Page:
            items, next_cursor = page_body(body, where)
            good, rejected = classify_items(items)
            page = Page(number, good, cursor, next_cursor, sent, tuple(rejected))
            if not rejected:
                return page
            if known_rejects is not None and known_rejects(page.rejected):
                log.info("api_items_known_rejected", where=where, rejected=len(rejected))
                return page
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            reason = f"{where}: {rejected[0].detail}{more}"

            def after_the_last_try(attempts: int) -> Page:
                # Still malformed after every try: not a glitch. The page goes on with its
                # good items; the stream dead-letters the rest.
                log.warning("api_items_rejected", where=where, reason=reason,
                            rejected=len(rejected), attempts=attempts)  # fmt: skip
                return page

            raise TryAgain(reason, "malformed_items", fallback=after_the_last_try)

        return self._get(connector, f"{API_PREFIX}/{model}", query, where, parse)

    def read_record(
        self,
        connector: ConnectorSettings,
        model: str,
        record_id: str,
        params: QueryParams | None = None,
    ) -> RecordRead:
        """``GET /{model}/{id}`` with ``params`` (the walk's projection: ``include_raw_data``,
        ``include_custom_fields``, ``expand``), so the record is byte-identical to the
        walked one. A malformed record is fetched again like a page's malformed item, then
        returned as ``rejected`` for the stream to dead-letter; 404 is ``record`` None."""
        where = f"{connector.name}/{model} record {record_id}"
        query = {key: _query_value(value) for key, value in (params or {}).items()}

        def parse(body: Any, sent: int) -> RecordRead:
            rejected = classify_item(0, body)
            if rejected is None and body.get("id") != record_id:
                rejected = RejectedItem(0, body, "bad_id", f"{where}: answered another id",
                                        None, None)  # fmt: skip
            if rejected is None:
                return RecordRead(body, None, sent)
            reason = f"{where}: {rejected.detail}"
            raise TryAgain(reason, "malformed_items",
                           fallback=lambda _attempts: RecordRead(None, rejected, sent))  # fmt: skip

        try:
            return self._get(connector, f"{API_PREFIX}/{model}/{record_id}", query, where, parse)
        except NotFoundError:
            return RecordRead(None, None, 1)

    def _get(
        self,
        connector: ConnectorSettings,
        path: str,
        query: Mapping[str, str | int | float],
        where: str,
        parse: Callable[[Any, int], _T],
    ) -> _T:
        assert connector.token is not None  # settings guarantee it
        headers = {"x-connector-token": connector.token.get_secret_value()}
        lane = self.transport.connector_lane(connector.name)
        return self.transport.call(lane, path, query, where, parse, headers=headers)
