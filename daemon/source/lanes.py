"""Who a request to Bindbee is for: a lane says what a request must wait for before it
goes, what the server's rate-limit headers mean for it, how its answers are counted, and
what to tell an operator when its credentials are refused.

    Lane             the protocol ``Transport.call`` drives
    ├── ConnectorLane   data requests of one connector: its slots, its limiter, API_* metrics
    └── OrgLane         the connectors list: no connector budget, SYNC_CHECK_* metrics

Also the rate-limit header arithmetic (``retry_after``, ``reset_after``), written once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import httpx

from daemon.errors import ScanInterrupted
from daemon.ops import metrics
from daemon.settings import RateLimitSettings
from daemon.source.ratelimit import ConnectionSlots, RateLimiter

# A data call gives up on 429s after this many (or max_attempts, if more): a 429 is
# expected on a token another process spends too, and its wait holds back every stream of
# the connector, so it is waited out rather than counted as a failed try.
MIN_RATE_LIMITED_TRIES = 11


def float_header(response: httpx.Response, name: str) -> float | None:
    """A numeric header, or None when it is absent or not a number."""
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def reset_after(response: httpx.Response) -> float:
    """Seconds until the server's rate window resets (1 s when it does not say)."""
    precise = float_header(response, "X-RateLimit-Reset-After")
    if precise is not None:
        return max(precise, 0.0)
    reset = float_header(response, "X-RateLimit-Reset")
    if reset is None:
        return 1.0
    return max(reset - time.time(), 0.0)


def retry_after(response: httpx.Response) -> float:
    """Seconds a 429 asks us to wait: ``Retry-After``, else until the window resets."""
    wait = float_header(response, "Retry-After")
    if wait is not None:
        return max(wait, 0.0)
    return reset_after(response)


class Lane(Protocol):
    """What ``Transport.call`` needs from the party a request is for."""

    timeout: float
    retry_event: str
    rate_limited_event: str
    auth_advice: str
    not_found_advice: str

    def admit(self, stop: threading.Event) -> AbstractContextManager[None]:
        """Held while one request is sent: waits (interruptibly) for the lane's budget."""
        ...

    def observe(self, response: httpx.Response) -> None:
        """Learn from an answer's rate-limit headers."""
        ...

    def count(self, outcome: int | str, malformed: bool = False) -> None:
        """Count one answer (a status, "timeout" or "error") in the lane's metric."""
        ...

    def rate_limited_tries(self, max_attempts: int) -> int:
        """The 429s in one call that make it a RateLimitedError."""
        ...

    def capped(self, wait: float) -> float:
        """A Retry-After as the lane waits it."""
        ...

    def wait_out(self, wait: float, sleep: Callable[[float], None]) -> None:
        """Let a 429's wait pass before the lane asks again."""
        ...


class ConnectorLane:
    """Data requests of one connector: ``slots`` in flight at once and a sliding-window
    ``limiter``, both shared by every stream of the connector."""

    retry_event = "api_retry"
    rate_limited_event = "api_rate_limited"
    auth_advice = (
        "the API key or this connector's token was rejected; "
        "check bindbee.api_key and the connector token"
    )
    not_found_advice = ""

    def __init__(self, name: str, slots: int, rate: RateLimitSettings, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self.limiter = RateLimiter(rate.requests, rate.per_seconds)
        self.slots = ConnectionSlots(slots)

    @contextlib.contextmanager
    def admit(self, stop: threading.Event) -> Iterator[None]:
        # The slot first, then the budget: a request the limiter admitted is sent at once,
        # so its sliding log matches what the server counts.
        with self.slots.hold(stop):
            self.limiter.acquire(stop)
            yield

    def observe(self, response: httpx.Response) -> None:
        remaining = float_header(response, "X-RateLimit-Remaining")
        if remaining is None:
            return
        metrics.API_RATE_LIMIT_REMAINING.labels(self.name).set(remaining)
        if remaining <= 0 and response.status_code != 429:
            self.limiter.block_for(reset_after(response))

    def count(self, outcome: int | str, malformed: bool = False) -> None:
        metrics.API_REQUESTS.labels(self.name, str(outcome)).inc()
        if outcome == 429:
            metrics.API_RATE_LIMITED.labels(self.name).inc()

    def rate_limited_tries(self, max_attempts: int) -> int:
        return max(max_attempts + 1, MIN_RATE_LIMITED_TRIES)

    def capped(self, wait: float) -> float:
        return wait  # the server's word: asking earlier only meets another 429

    def wait_out(self, wait: float, sleep: Callable[[float], None]) -> None:
        # The limiter holds every stream of this connector back, interruptibly.
        self.limiter.block_for(wait)


class OrgLane:
    """The connectors list, on the organisation's API key alone: the API limits requests
    per connector token, so it waits for no connector's slots or limiter. A request is not
    sent once a stop was asked for; a 429 is slept out (at most ``max_retry_after``), and
    ``max_attempts`` of them in one call give up: the watcher reads again on its next tick.
    """

    retry_event = "connectors_retry"
    rate_limited_event = "connectors_rate_limited"
    auth_advice = "the API key was rejected; check bindbee.api_key"
    not_found_advice = "; check bindbee.base_url"

    def __init__(self, timeout: float, max_retry_after: float) -> None:
        self.timeout = timeout
        self.max_retry_after = max_retry_after

    @contextlib.contextmanager
    def admit(self, stop: threading.Event) -> Iterator[None]:
        if stop.is_set():
            raise ScanInterrupted("stop requested before a connectors-list request")
        yield

    def observe(self, response: httpx.Response) -> None:
        pass  # the list has no rate budget of ours to adjust

    def count(self, outcome: int | str, malformed: bool = False) -> None:
        if isinstance(outcome, str):
            label = outcome
        elif outcome < 300:
            label = "malformed" if malformed else "ok"
        else:
            label = f"http_{outcome}"
        metrics.SYNC_CHECK_REQUESTS.labels(label).inc()

    def rate_limited_tries(self, max_attempts: int) -> int:
        return max_attempts

    def capped(self, wait: float) -> float:
        return min(wait, self.max_retry_after)

    def wait_out(self, wait: float, sleep: Callable[[float], None]) -> None:
        sleep(wait)
