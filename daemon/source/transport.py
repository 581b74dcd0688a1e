"""The one HTTP transport to the Bindbee API: one connection pool, one retry policy, one
status policy, one error translation and one page parser, for the data client
(``source/client.py``) and the connectors list (``source/connectors.py``) alike.

    Transport            one httpx pool per process (the daemon's BindbeeClient owns it)
    ├── ConnectorLane    a connector's requests: its slots and its rate limiter
    └── OrgLane          the connectors list: the organisation's API key, no connector budget

The status policy lives in ``Transport.call``: 2xx is parsed (a malformed answer, not JSON
or no ``items`` list, is retried like a 5xx); 429 waits the server's Retry-After and asks
again without spending a try; 5xx, timeouts and dropped connections are retried with
jittered exponential back-off (tenacity, ``daemon.backoff.full_jitter``) up to
``bindbee.max_attempts``, between ``bindbee.backoff_base_seconds`` and
``backoff_max_seconds``; any other 4xx raises at once (``client_error``). No ``httpx`` type
or exception leaves this module: callers see ``daemon.errors``.

Connections: one pool for every connector, since connections to the API are interchangeable
(the connector is a header) and keep-alive then serves whichever connector asks next; httpx
limits a pool as a whole, not per key, so the per-connector bound is a ``ConnectionSlots``
of ``connections_per_connector`` around each request. The pool itself is unbounded: the
slots (and the scheduler's workers) bound it, and a pool-wide cap is exactly what would let
one connector's hanging requests starve every other connector. The connectors list rides
the same pool on the organisation's key: the API limits requests per connector token, so
the list takes no connector's slots and spends no connector's limiter budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
import orjson
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from daemon.backoff import full_jitter
from daemon.errors import (
    ApiUnavailableError,
    AuthError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ScanInterrupted,
    StreamFatalError,
)
from daemon.settings import BindbeeSettings
from daemon.source.lanes import ConnectorLane, Lane, OrgLane, retry_after

log = structlog.get_logger("daemon.source.transport")

API_PREFIX = "/api/lms/v1"
Query = Mapping[str, str | int | float]
_T = TypeVar("_T")
# Requests of one connector in flight at once (``bindbee.connections_per_connector``). A
# pass has one request in flight (its walk fetching ahead), so this only bites when several
# models of a connector scan together; 4 keep 200 requests/min flowing up to ~1.2 s per
# request, far above the API's latency.
CONNECTIONS_PER_CONNECTOR = 4
# Idle keep-alive connections close after this; between Bindbee syncs (hours) none stay.
KEEPALIVE_SECONDS = 5.0


class TryAgain(Exception):
    """This attempt failed in a way worth another try (5xx, timeout, unusable answer).

    ``status`` labels it ("malformed": MalformedResponseError once the tries are spent;
    anything else: ApiUnavailableError). ``fallback``, when given, is what the call returns
    instead once every try failed so, called with the number of attempts: a page whose
    malformed items did not clear is still worth its good items.
    """

    def __init__(
        self, reason: str, status: str, fallback: Callable[[int], Any] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.fallback = fallback


def page_body(body: Any, where: str) -> tuple[list[Any], str | None]:
    """A list answer's items and its next cursor (None on the last page).

    Every list endpoint shares the shape ``{"cursor", "page_size", "items"}``; an answer
    without an ``items`` list, or with a cursor that is not a non-empty string, is
    malformed (retried: a glitch clears).
    """
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise TryAgain(f"{where}: response has no 'items' list", "malformed")
    cursor = body.get("cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise TryAgain(f"{where}: cursor is not a string", "malformed")
    return body["items"], cursor


def client_error(status: int, response: httpx.Response, where: str, lane: Lane) -> StreamFatalError:
    """The error of a 4xx answer other than 429 (never retried)."""
    if status in (401, 403):
        return AuthError(f"{where}: {status} — {lane.auth_advice}")
    if status == 404:
        return NotFoundError(f"{where}: 404 not found{lane.not_found_advice}")
    detail = _detail(response)
    return InvalidRequestError(f"{where}: {status} invalid request: {detail}", detail)


def _detail(response: httpx.Response) -> Any:
    """The API's ``detail`` (FastAPI's), without the ``input`` of each problem: the API
    echoes the value it refused there, which may be a token given as a filter. What is
    left names the parameter (``loc``) and says why (``msg``)."""
    try:
        detail = orjson.loads(response.content).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(detail, list):
        return [
            {k: v for k, v in problem.items() if k != "input"}
            if isinstance(problem, dict)
            else problem
            for problem in detail
        ]
    return detail


_NOT_JSON = object()


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return _NOT_JSON


class _Tally:
    """Across the attempts of one call: requests sent (a page reports them) and 429s."""

    __slots__ = ("rate_limited", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.rate_limited = 0


class Transport:
    """One httpx pool, the lanes over it, and the retry policy of ``bindbee.*``.

    ``stop`` makes every wait (rate budget, connection slot, back-off, Retry-After) end
    early with ScanInterrupted; ``sleep`` replaces the back-off wait (tests).
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
        self.stop = stop or threading.Event()
        self._sleep = sleep or self._interruptible_sleep
        # The project's one back-off formula, drawn with full jitter (``daemon.backoff``).
        self._wait = full_jitter(settings.backoff_base_seconds, settings.backoff_max_seconds)
        self._per_connector = connections_per_connector or settings.connections_per_connector
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
        self._lanes: dict[str, ConnectorLane] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Transport(base_url={self.settings.base_url!r})"

    def close(self) -> None:
        """Close the connection pool; a request after this is ScanInterrupted."""
        self._closed = True
        self._http.close()

    def connector_lane(self, connector: str) -> ConnectorLane:
        """The lane of ``connector``, created on its first request and shared by all its
        streams."""
        with self._lock:
            lane = self._lanes.get(connector)
            if lane is None:
                lane = self._lanes[connector] = ConnectorLane(
                    connector,
                    self._per_connector,
                    self.settings.rate_limit,
                    self.settings.timeout_seconds,
                )
            return lane

    def in_flight(self, connector: str) -> int:
        """Requests of ``connector`` holding a connection slot now."""
        with self._lock:
            lane = self._lanes.get(connector)
        return 0 if lane is None else lane.slots.in_flight

    def org_lane(
        self, *, timeout_seconds: float | None = None, max_retry_after_seconds: float = 60.0
    ) -> OrgLane:
        """A lane for the connectors list (the organisation's key, no connector budget)."""
        return OrgLane(timeout_seconds or self.settings.timeout_seconds, max_retry_after_seconds)

    def call(
        self,
        lane: Lane,
        path: str,
        query: Query,
        where: str,
        parse: Callable[[Any, int], _T],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> _T:
        """GET ``path`` under the status policy; ``parse(body, requests_sent)`` makes the
        result of a 2xx answer (raising TryAgain for one worth fetching again)."""
        tally = _Tally()

        def attempt() -> _T:
            response = self._answer(lane, path, query, headers, where, tally)
            status = response.status_code
            if status >= 400:
                lane.count(status)
                if status >= 500:
                    raise TryAgain(f"{where}: server error {status}", str(status))
                raise client_error(status, response, where, lane)
            body = _json(response)
            lane.count(status, malformed=body is _NOT_JSON)
            if body is _NOT_JSON:
                raise TryAgain(f"{where}: response is not JSON", "malformed")
            return parse(body, tally.sent)

        return self._retrying(lane, where)(attempt)

    # -- internals ---------------------------------------------------------------

    def _answer(
        self,
        lane: Lane,
        path: str,
        query: Query,
        headers: Mapping[str, str] | None,
        where: str,
        tally: _Tally,
    ) -> httpx.Response:
        """One answer that is not a 429. A 429 is not a failed try: the server said when
        to ask again, so this waits that out (holding back the whole lane) and asks again,
        until ``lane.rate_limited_tries`` 429s in one call make it a RateLimitedError."""
        while True:
            with lane.admit(self.stop):
                tally.sent += 1
                response = self._send(lane, path, query, headers, where)
            lane.observe(response)
            if response.status_code != 429:
                return response
            lane.count(429)
            tally.rate_limited += 1
            if tally.rate_limited >= lane.rate_limited_tries(self.settings.max_attempts):
                raise RateLimitedError(
                    f"{where}: still rate limited after {tally.rate_limited} tries"
                )
            wait = lane.capped(retry_after(response))
            log.warning(lane.rate_limited_event, where=where, retry_after=round(wait, 3))
            lane.wait_out(wait, self._sleep)

    def _send(
        self,
        lane: Lane,
        path: str,
        query: Query,
        headers: Mapping[str, str] | None,
        where: str,
    ) -> httpx.Response:
        try:
            return self._http.get(path, params=query, headers=headers, timeout=lane.timeout)
        except httpx.TimeoutException:
            lane.count("timeout")
            raise TryAgain(f"{where}: timed out after {lane.timeout:g}s", "timeout") from None
        except httpx.HTTPError as exc:
            lane.count("error")
            reason = f"{where}: connection failed ({type(exc).__name__})"
            raise TryAgain(reason, "error") from None
        except RuntimeError:
            if self._closed:  # httpx's answer to a request on a closed client
                raise ScanInterrupted(f"{where}: the API client is closed") from None
            raise

    def _retrying(self, lane: Lane, where: str) -> Retrying:
        """The one retry policy: ``max_attempts`` tries, full-jitter back-off between."""

        def before_sleep(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome else None
            log.warning(
                lane.retry_event,
                where=where,
                reason=getattr(failure, "reason", str(failure)),
                attempt=state.attempt_number,
                delay=round(state.upcoming_sleep, 3),
            )

        def give_up(state: RetryCallState) -> Any:
            failure = state.outcome.exception() if state.outcome else None
            assert isinstance(failure, TryAgain)
            attempts = state.attempt_number
            if failure.fallback is not None:
                return failure.fallback(attempts)
            if failure.status == "malformed":
                raise MalformedResponseError(f"{failure.reason} ({attempts} attempts)")
            raise ApiUnavailableError(f"{failure.reason}; gave up after {attempts} attempts")

        return Retrying(
            retry=retry_if_exception_type(TryAgain),
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )

    def _interruptible_sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise ScanInterrupted("stop requested during API back-off")
