"""The organisation's connectors list, ``GET /api/lms/v1/connectors``: who syncs, and when.

The sync watcher reads every page of it (Bearer API key only, no connector token)
to learn each connector's ``sync_status`` and ``last_sync_start_time``. This module
has its own small ``httpx.Client`` so those reads never spend a connector's data
rate budget; no ``httpx`` type or exception leaves it.

Malformed items are skipped and counted rather than failing the whole list: one
broken connector must not stop the watcher from seeing the others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import structlog
from pydantic import SecretStr

from daemon.backoff import delay_after, full_jitter
from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ScanInterrupted,
)
from daemon.ops import metrics
from daemon.timestamps import normalize_time

log = structlog.get_logger("daemon.source.connectors")

CONNECTORS_PATH = "/api/lms/v1/connectors"


@dataclass(frozen=True)
class ConnectorInfo:
    """One connector as the list shows it. ``token`` is a SecretStr and stays out of repr."""

    id: str
    is_active: bool
    status: str | None
    sync_status: str | None
    last_sync_start_time: str | None
    next_sync_start_time: str | None
    integration_slug: str | None
    is_test_connector: bool
    origin_id: str | None
    category: str | None
    token: SecretStr = field(repr=False)


@dataclass(frozen=True)
class ConnectorListing:
    """Every connector of one full read of the list, plus what the read cost."""

    connectors: tuple[ConnectorInfo, ...]
    skipped: int
    pages: int
    requests: int

    def by_id(self, connector_id: str) -> ConnectorInfo | None:
        """The connector with this Bindbee id, or None."""
        return next((c for c in self.connectors if c.id == connector_id), None)

    def by_token(self, token: SecretStr | str) -> ConnectorInfo | None:
        """The connector whose ``connector_token`` is ``token``, or None."""
        wanted = token.get_secret_value() if isinstance(token, SecretStr) else token
        return next((c for c in self.connectors if c.token.get_secret_value() == wanted), None)

    def __iter__(self) -> Iterator[ConnectorInfo]:
        return iter(self.connectors)

    def __len__(self) -> int:
        return len(self.connectors)


class _Malformed(ValueError):
    """Internal: one item cannot be read; the message names the field, never a value."""


def _optional_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Malformed(f"{key} is not a string")
    return value


def _optional_time(item: Mapping[str, Any], key: str) -> str | None:
    value = _optional_str(item, key)
    if value is None or not value.strip():
        return None
    try:
        return normalize_time(value.strip())
    except ValueError:
        raise _Malformed(f"{key} is not an ISO 8601 time") from None


def _flag(item: Mapping[str, Any], key: str, default: bool) -> bool:
    value = item.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Malformed(f"{key} is not a boolean")
    return value


def parse_connector(item: Any) -> ConnectorInfo:
    """One list item → ConnectorInfo; raises ValueError naming the bad field (never a value).

    ``is_active`` missing counts as active (the list would not show a deleted one);
    ``connector_token`` is required because streams are matched to connectors by it.
    """
    if not isinstance(item, Mapping):
        raise _Malformed("item is not an object")
    connector_id = item.get("id")
    if not isinstance(connector_id, str) or not connector_id:
        raise _Malformed("id is missing")
    token = item.get("connector_token")
    if not isinstance(token, str) or not token:
        raise _Malformed("connector_token is missing")
    end_user = item.get("end_user")
    if end_user is not None and not isinstance(end_user, Mapping):
        raise _Malformed("end_user is not an object")
    origin_id = _optional_str(end_user, "origin_id") if end_user else None
    return ConnectorInfo(
        id=connector_id,
        is_active=_flag(item, "is_active", True),
        status=_optional_str(item, "status"),
        sync_status=_optional_str(item, "sync_status"),
        last_sync_start_time=_optional_time(item, "last_sync_start_time"),
        next_sync_start_time=_optional_time(item, "next_sync_start_time"),
        integration_slug=_optional_str(item, "integration_slug"),
        is_test_connector=_flag(item, "is_test_connector", False),
        origin_id=origin_id,
        category=_optional_str(item, "category"),
        token=SecretStr(token),
    )


class _Retry(Exception):
    def __init__(self, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


def _float_header(response: httpx.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class ConnectorDirectory:
    """Reads the connectors list, every page, with retries; raises ``daemon.errors`` only.

    5xx, timeouts and dropped connections are retried up to ``max_attempts`` times
    with jittered exponential back-off; 429 waits ``Retry-After`` (capped at
    ``max_retry_after_seconds``) up to ``max_attempts`` times too. Setting ``stop``
    ends any wait at once with ScanInterrupted.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        page_size: int = 100,
        timeout_seconds: float = 10.0,
        max_attempts: int = 4,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 10.0,
        max_retry_after_seconds: float = 60.0,
        max_pages: int = 10_000,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be between 1 and 100")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        # The project's one back-off formula (full jitter), as the data client uses it.
        self._wait = full_jitter(backoff_base_seconds, backoff_max_seconds)
        self.max_retry_after_seconds = max_retry_after_seconds
        self.max_pages = max_pages
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_seconds,
            headers={"Authorization": f"Bearer {api_key.get_secret_value()}"},
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )

    def __repr__(self) -> str:
        return f"ConnectorDirectory(base_url={self.base_url!r})"

    def __enter__(self) -> ConnectorDirectory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def list(
        self,
        *,
        connector_token: SecretStr | None = None,
        origin_id: str | None = None,
        is_active: bool | None = None,
    ) -> ConnectorListing:
        """Every connector matching the filters, all pages followed.

        Prefer one unfiltered read matched locally with ``ConnectorListing.by_token``:
        it covers every stream at once and keeps tokens out of request URLs.
        """
        filters: dict[str, str] = {}
        if connector_token is not None:
            filters["connector_token"] = connector_token.get_secret_value()
        if origin_id is not None:
            filters["origin_id"] = origin_id
        if is_active is not None:
            filters["is_active"] = "true" if is_active else "false"
        connectors: list[ConnectorInfo] = []
        seen_ids: set[str] = set()
        seen_cursors: set[str] = set()
        cursor: str | None = None
        skipped = requests = pages = 0
        while True:
            pages += 1
            if pages > self.max_pages:
                raise MalformedResponseError(
                    f"connectors list: more than {self.max_pages} pages; giving up"
                )
            query = {**filters, "page_size": str(self.page_size)}
            if cursor is not None:
                query["cursor"] = cursor
            body, sent = self._get(query, f"connectors list page {pages}")
            requests += sent
            items, next_cursor = self._page(body, pages)
            for position, item in enumerate(items):
                try:
                    info = parse_connector(item)
                except ValueError as exc:
                    skipped += 1
                    metrics.SYNC_CHECK_MALFORMED_ITEMS.inc()
                    log.warning(
                        "connector_item_skipped", page=pages, position=position, reason=str(exc)
                    )
                    continue
                # A connector twice (the list moved under the cursor): keep the first.
                if info.id not in seen_ids:
                    seen_ids.add(info.id)
                    connectors.append(info)
            if next_cursor is None:
                return ConnectorListing(tuple(connectors), skipped, pages, requests)
            if next_cursor in seen_cursors:
                raise MalformedResponseError(
                    f"connectors list page {pages}: cursor repeats an earlier page (cursor loop)"
                )
            seen_cursors.add(next_cursor)
            cursor = next_cursor

    def find_by_token(self, token: SecretStr) -> ConnectorInfo | None:
        """The connector of one token, via the ``connector_token`` filter (one small read)."""
        return self.list(connector_token=token).by_token(token)

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def _page(body: Any, number: int) -> tuple[list[Any], str | None]:
        where = f"connectors list page {number}"
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise MalformedResponseError(f"{where}: response has no 'items' list")
        cursor = body.get("cursor")
        if cursor is not None and (not isinstance(cursor, str) or not cursor):
            raise MalformedResponseError(f"{where}: cursor is not a string")
        return body["items"], cursor

    def _get(self, query: Mapping[str, str], where: str) -> tuple[Any, int]:
        failures = rate_limited = sent = 0
        while True:
            if self._stop.is_set():
                raise ScanInterrupted("stop requested before a connectors-list request")
            sent += 1
            try:
                response = self._http.get(CONNECTORS_PATH, params=query)
            except httpx.TimeoutException:
                failure = _Retry(f"{where}: timed out after {self.timeout_seconds:g}s", "timeout")
            except httpx.HTTPError as exc:
                failure = _Retry(f"{where}: connection failed ({type(exc).__name__})", "error")
            else:
                status = response.status_code
                if status == 429:
                    metrics.SYNC_CHECK_REQUESTS.labels("http_429").inc()
                    rate_limited += 1
                    if rate_limited >= self.max_attempts:
                        raise RateLimitedError(
                            f"{where}: still rate limited after {rate_limited} tries"
                        )
                    wait = self._retry_after(response)
                    log.warning("connectors_rate_limited", where=where, retry_after=wait)
                    self._sleep(wait)
                    continue
                if status >= 500:
                    failure = _Retry(f"{where}: server error {status}", f"http_{status}")
                elif status >= 400:
                    metrics.SYNC_CHECK_REQUESTS.labels(f"http_{status}").inc()
                    raise self._client_error(status, where)
                else:
                    try:
                        body = orjson.loads(response.content)
                    except orjson.JSONDecodeError:
                        failure = _Retry(f"{where}: response is not JSON", "malformed")
                    else:
                        metrics.SYNC_CHECK_REQUESTS.labels("ok").inc()
                        return body, sent
            metrics.SYNC_CHECK_REQUESTS.labels(failure.outcome).inc()
            failures += 1
            if failures >= self.max_attempts:
                if failure.outcome == "malformed":
                    raise MalformedResponseError(f"{failure.reason} ({failures} attempts)")
                raise ApiUnavailableError(f"{failure.reason}; gave up after {failures} attempts")
            delay = delay_after(self._wait, failures)
            log.warning(
                "connectors_retry",
                where=where,
                reason=failure.reason,
                attempt=failures,
                delay=round(delay, 3),
            )
            self._sleep(delay)

    def _retry_after(self, response: httpx.Response) -> float:
        wait = _float_header(response, "Retry-After")
        if wait is None:
            wait = 1.0
        return min(max(wait, 0.0), self.max_retry_after_seconds)

    @staticmethod
    def _client_error(status: int, where: str) -> Exception:
        # The API's detail text is left out: it could echo a query value (a token filter).
        if status in (401, 403):
            return AuthError(f"{where}: {status} — the API key was rejected; check bindbee.api_key")
        if status == 404:
            return NotFoundError(f"{where}: 404 not found; check bindbee.base_url")
        return InvalidRequestError(f"{where}: {status} invalid request")

    def _interruptible_sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise ScanInterrupted("stop requested during connectors-list back-off")
