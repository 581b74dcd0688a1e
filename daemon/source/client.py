"""HTTP client for the Bindbee LMS API: auth, rate budget, retries and the status policy.

The status policy lives in ``_call``: 2xx is parsed (a malformed answer is retried like a
5xx), 429 waits the server's Retry-After and asks again without spending a try, 5xx,
timeouts and dropped connections are retried with jittered exponential back-off (tenacity,
``daemon.backoff``) up to ``max_attempts``, and any other 4xx is raised at once
(``_client_error``). No ``httpx`` type or exception leaves this module; callers see
``daemon.errors``.

Connections: one ``httpx`` pool for every connector, since connections to the API are
interchangeable (the connector is a header) and keep-alive then serves whichever connector
asks next; httpx limits a pool as a whole, not per key, so the per-connector bound is a
``ConnectionSlots`` of ``connections_per_connector`` around each request. The pool itself
is unbounded: the slots (and the scheduler's workers) bound it, and a pool-wide cap is
exactly what would let one connector's hanging requests starve every other connector.

A well-formed page with malformed items (not an object, no usable id, no readable
``modified_at``, unhashable: ``classify_item``) is fetched again too, since a glitch
clears; after the last try it is returned with its good items and the others in
``Page.rejected``, for the stream to dead-letter: one poison record never stops the feed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from daemon.backoff import full_jitter
from daemon.diff import unhashable
from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ScanInterrupted,
)
from daemon.models import Page, Record, RejectedItem, RejectReason
from daemon.ops import metrics
from daemon.settings import BindbeeSettings, ConnectorSettings
from daemon.source.ratelimit import ConnectionSlots, RateLimiter
from daemon.timestamps import normalize_time

log = structlog.get_logger("daemon.source.client")

API_PREFIX = "/api/lms/v1"
QueryParams = Mapping[str, str | int | float | bool]
_T = TypeVar("_T")
# Requests of one connector in flight at once. A pass has one request in flight (its walk
# fetching ahead), so this only bites when several models of a connector scan together; 4
# keep 200 requests/min flowing up to ~1.2 s per request, far above the API's latency.
CONNECTIONS_PER_CONNECTOR = 4
# Idle keep-alive connections close after this; between Bindbee syncs (hours) none stay.
KEEPALIVE_SECONDS = 5.0


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, reason: str, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _BadItems(_Retry):
    """Internal: a well-formed page with malformed items. Fetched again (a glitch clears);
    after the last try the page goes on with its good items and the rejections."""

    def __init__(self, reason: str, page: Page) -> None:
        super().__init__(reason, "malformed_items")
        self.page = page


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
               float: "number", type(None): "null"}  # fmt: skip


def classify_item(position: int, item: Any) -> RejectedItem | None:
    """None for an item the differ can use; otherwise why not, as a RejectedItem."""
    if not isinstance(item, dict):
        kind = _JSON_TYPES.get(type(item), type(item).__name__)
        return RejectedItem(position, item, "not_an_object", f"item {position} is a JSON {kind}")
    remote = item.get("remote_id")
    remote_id = remote if isinstance(remote, str) and remote else None
    if "id" not in item:
        return RejectedItem(position, item, "no_id", f"item {position} has no id", None, remote_id)
    record_id = item["id"]
    if not isinstance(record_id, str) or not record_id:
        return RejectedItem(
            position,
            item,
            "bad_id",
            f"item {position} has an id that is not a non-empty string",
            None,
            remote_id,
        )
    what = f"item {position} (id {record_id})"
    modified_at = item.get("modified_at")
    reason: RejectReason | None = None
    if modified_at is None:
        reason, detail = "no_modified_at", f"{what} has no modified_at"
    elif not isinstance(modified_at, str):
        reason, detail = "bad_modified_at", f"{what} has a modified_at that is not a string"
    elif not _readable_time(modified_at):
        reason, detail = "bad_modified_at", f"{what} has an unreadable modified_at"
    if reason is None:
        problem = unhashable(item)
        if problem is not None:
            reason, detail = "unhashable", f"{what} cannot be hashed ({problem})"
    if reason is None:
        return None
    return RejectedItem(position, item, reason, detail, record_id, remote_id)


def _readable_time(value: str) -> bool:
    try:
        normalize_time(value)
    except ValueError:
        return False
    return True


def classify_items(items: list[Any]) -> tuple[list[Record], list[RejectedItem]]:
    """A page's items split into those the differ can use and the rejected ones (in
    page order); the same verdicts as ``classify_item`` on each.

    On the page walk's critical path, so the common case is cheap: an object with a
    string id and a readable string modified_at is usable unless it cannot be hashed,
    and one encoding of the whole list shows that none of them is unhashable.
    """
    usable: list[tuple[int, Record]] = []
    rejected: list[RejectedItem] = []
    for position, item in enumerate(items):
        if type(item) is dict:
            record_id = item.get("id")
            modified_at = item.get("modified_at")
            if (
                type(record_id) is str
                and record_id
                and type(modified_at) is str
                and _readable_time(modified_at)
            ):
                usable.append((position, item))
                continue
        problem = classify_item(position, item)
        if problem is None:  # a dict subclass, say: not what orjson makes, but usable
            usable.append((position, item))
        else:
            rejected.append(problem)
    good = [item for _, item in usable]
    if good and unhashable(good) is not None:  # rare: find which, item by item
        good = []
        for position, item in usable:
            problem = classify_item(position, item)
            if problem is None:
                good.append(item)
            else:
                rejected.append(problem)
        rejected.sort(key=lambda r: r.position)
    return good, rejected


def _query_value(value: str | int | float | bool) -> str | int | float:
    # The API is FastAPI: booleans are spelled true/false.
    return ("true" if value else "false") if isinstance(value, bool) else value


def _float_header(response: httpx.Response, name: str) -> float | None:
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class BindbeeClient:
    """One client per Bindbee organisation; per connector, a rate limiter and
    ``connections_per_connector`` slots, created on the connector's first request and shared
    by all its streams.

    ``stop`` makes every wait (rate budget, connection slot, back-off) end early with
    ScanInterrupted.
    """

    def __init__(
        self,
        settings: BindbeeSettings,
        *,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        connections_per_connector: int = CONNECTIONS_PER_CONNECTOR,
    ) -> None:
        self.settings = settings
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        self._wait = full_jitter(settings.backoff_base_seconds, settings.backoff_max_seconds)
        self._http = httpx.Client(
            base_url=settings.base_url,
            timeout=settings.timeout_seconds,
            headers={"Authorization": f"Bearer {settings.api_key.get_secret_value()}"},
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=None,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )
        self._per_connector = connections_per_connector
        self._limiters: dict[str, RateLimiter] = {}
        self._slots: dict[str, ConnectionSlots] = {}
        self._limiters_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BindbeeClient(base_url={self.settings.base_url!r})"

    def __enter__(self) -> BindbeeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def limiter(self, connector: str) -> RateLimiter:
        """The rate limiter shared by every stream of ``connector``."""
        return self._budget(connector)[0]

    def in_flight(self, connector: str) -> int:
        """Requests of ``connector`` holding a connection slot now."""
        with self._limiters_lock:
            slots = self._slots.get(connector)
        return 0 if slots is None else slots.in_flight

    def _budget(self, connector: str) -> tuple[RateLimiter, ConnectionSlots]:
        with self._limiters_lock:
            limiter = self._limiters.get(connector)
            if limiter is None:
                rate = self.settings.rate_limit
                limiter = self._limiters[connector] = RateLimiter(rate.requests, rate.per_seconds)
                self._slots[connector] = ConnectionSlots(self._per_connector)
            return limiter, self._slots[connector]

    def fetch_page(
        self,
        connector: ConnectorSettings,
        model: str,
        *,
        params: QueryParams | None = None,
        cursor: str | None = None,
        number: int = 1,
    ) -> Page:
        """Fetch one list page; retries what is retriable, raises typed errors for the rest."""
        query: dict[str, str | int | float] = {"page_size": self.settings.page_size}
        for key, value in (params or {}).items():
            query[key] = _query_value(value)
        if cursor is not None:
            query["cursor"] = cursor
        where = f"{connector.name}/{model} page {number}"
        return self._call(
            connector,
            f"{API_PREFIX}/{model}",
            query,
            where,
            lambda body, sent: self._parse_page(body, where, number, cursor, sent),
        )

    def get_record(self, connector: ConnectorSettings, model: str, record_id: str) -> Record:
        """Fetch one record by id."""
        where = f"{connector.name}/{model} record {record_id}"

        def parse(body: Any, _sent: int) -> Record:
            if not isinstance(body, dict) or not isinstance(body.get("id"), str):
                raise _Retry(f"{where}: response is not a record", "malformed")
            return body

        return self._call(connector, f"{API_PREFIX}/{model}/{record_id}", {}, where, parse)

    # -- internals ---------------------------------------------------------------

    def _call(
        self,
        connector: ConnectorSettings,
        path: str,
        query: Mapping[str, str | int | float],
        where: str,
        parse: Callable[[Any, int], _T],
    ) -> _T:
        assert connector.token is not None  # settings guarantee it
        headers = {"x-connector-token": connector.token.get_secret_value()}
        limiter, slots = self._budget(connector.name)
        # Across the attempts of this call: requests sent (the page reports them) and 429s.
        sent = 0
        rate_limited = 0

        def attempt() -> _T:
            """One try; a 429 is not a failed try: it waits the server out and asks again."""
            nonlocal sent, rate_limited
            while True:
                # The slot first, then the budget: a request the limiter admitted is sent at
                # once, so its sliding log matches what the server counts.
                with slots.hold(self._stop):
                    limiter.acquire(self._stop)
                    sent += 1
                    try:
                        response = self._http.get(path, params=query, headers=headers)
                    except httpx.TimeoutException:
                        raise self._transport_failure(
                            connector,
                            f"{where}: timed out after {self.settings.timeout_seconds}s",
                            "timeout",
                        ) from None
                    except httpx.TransportError as exc:
                        raise self._transport_failure(
                            connector,
                            f"{where}: connection failed ({type(exc).__name__})",
                            "error",
                        ) from None
                status = response.status_code
                metrics.API_REQUESTS.labels(connector.name, str(status)).inc()
                self._observe_budget(connector.name, response, limiter)
                if status != 429:
                    break
                rate_limited += 1
                metrics.API_RATE_LIMITED.labels(connector.name).inc()
                if rate_limited > max(self.settings.max_attempts, 10):
                    raise RateLimitedError(
                        f"{where}: still rate limited after {rate_limited} tries"
                    )
                wait = self._retry_after(response)
                log.warning("api_rate_limited", where=where, retry_after=round(wait, 3))
                # The limiter holds every stream of this connector back, interruptibly.
                limiter.block_for(wait)
            if status >= 500:
                raise _Retry(f"{where}: server error {status}", str(status))
            if status >= 400:
                raise self._client_error(status, response, where)
            return parse(self._json(response, where), sent)

        def before_sleep(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            log.warning(
                "api_retry",
                where=where,
                reason=getattr(failure, "reason", str(failure)),
                attempt=state.attempt_number,
                delay=round(state.upcoming_sleep, 3),
            )

        def give_up(state: RetryCallState) -> Any:
            failure = state.outcome.exception() if state.outcome else None
            assert isinstance(failure, _Retry)
            attempts = state.attempt_number
            if isinstance(failure, _BadItems):
                # Still malformed after every try: not a glitch. The page goes on with its
                # good items; the stream dead-letters the rest.
                log.warning("api_items_rejected", where=where, reason=failure.reason,
                            rejected=len(failure.page.rejected), attempts=attempts)  # fmt: skip
                return failure.page  # type: ignore[return-value]
            if failure.status == "malformed":
                raise MalformedResponseError(f"{failure.reason} ({attempts} attempts)")
            raise ApiUnavailableError(f"{failure.reason}; gave up after {attempts} attempts")

        retrying = Retrying(
            retry=retry_if_exception_type(_Retry),
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )
        return retrying(attempt)

    @staticmethod
    def _transport_failure(connector: ConnectorSettings, reason: str, status: str) -> _Retry:
        metrics.API_REQUESTS.labels(connector.name, status).inc()
        return _Retry(reason, status)

    @staticmethod
    def _json(response: httpx.Response, where: str) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise _Retry(f"{where}: response is not JSON", "malformed") from None

    @staticmethod
    def _parse_page(body: Any, where: str, number: int, cursor: str | None, requests: int) -> Page:
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise _Retry(f"{where}: response has no 'items' list", "malformed")
        next_cursor = body.get("cursor")
        if next_cursor is not None and (not isinstance(next_cursor, str) or not next_cursor):
            raise _Retry(f"{where}: cursor is not a string", "malformed")
        items, rejected = classify_items(body["items"])
        page = Page(number, items, cursor, next_cursor, requests, tuple(rejected))
        if rejected:
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            raise _BadItems(f"{where}: {rejected[0].detail}{more}", page)
        return page

    def _observe_budget(
        self, connector: str, response: httpx.Response, limiter: RateLimiter
    ) -> None:
        remaining = _float_header(response, "X-RateLimit-Remaining")
        if remaining is None:
            return
        metrics.API_RATE_LIMIT_REMAINING.labels(connector).set(remaining)
        if remaining <= 0 and response.status_code != 429:
            limiter.block_for(self._reset_after(response))

    def _retry_after(self, response: httpx.Response) -> float:
        retry_after = _float_header(response, "Retry-After")
        if retry_after is not None:
            return max(retry_after, 0.0)
        return self._reset_after(response)

    @staticmethod
    def _reset_after(response: httpx.Response) -> float:
        precise = _float_header(response, "X-RateLimit-Reset-After")
        if precise is not None:
            return max(precise, 0.0)
        reset = _float_header(response, "X-RateLimit-Reset")
        if reset is None:
            return 1.0
        return max(reset - time.time(), 0.0)

    @staticmethod
    def _client_error(status: int, response: httpx.Response, where: str) -> Exception:
        try:
            detail = orjson.loads(response.content).get("detail")
        except (orjson.JSONDecodeError, AttributeError):
            detail = None
        if status in (401, 403):
            return AuthError(
                f"{where}: {status} — the API key or this connector's token was rejected; "
                "check bindbee.api_key and the connector token"
            )
        if status == 404:
            return NotFoundError(f"{where}: 404 not found")
        return InvalidRequestError(f"{where}: {status} invalid request: {detail}", detail)

    def _interruptible_sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise ScanInterrupted("stop requested during API back-off")
