"""Client-side budgets per connector, shared by every stream of that connector: requests
per time window (``RateLimiter``) and requests in flight at once (``ConnectionSlots``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from daemon.errors import ScanInterrupted

_SLICE_SECONDS = 0.25  # waits are cut into slices this long, so a stop is noticed promptly


class RateLimiter:
    """A sliding-log limiter: at most ``requests`` in any ``per_seconds`` interval.

    A sliding log never exceeds the server's fixed window wherever that window
    starts, so normal operation sees no 429; a tiny margin absorbs network jitter
    between our clock and the server's. It also obeys what the server says
    (``X-RateLimit-Remaining: 0`` or a 429) by pausing until the server's reset.
    """

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = requests
        self.window = per_seconds + min(0.5, per_seconds * 0.01)
        self._clock = clock
        self._sent: deque[float] = deque()
        self._blocked_until = 0.0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event | None = None) -> float:
        """Block until a request may be sent; returns the seconds waited."""
        started = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                wait = self._blocked_until - now
                if len(self._sent) >= self.requests:
                    wait = max(wait, self._sent[0] + self.window - now)
                if wait <= 0:
                    self._sent.append(now)
                    return now - started
                if stop is not None and stop.is_set():
                    raise ScanInterrupted("stop requested while waiting for the API budget")
                self._cond.wait(min(wait, _SLICE_SECONDS))

    def block_for(self, seconds: float) -> None:
        """The server says the budget is spent: send nothing for ``seconds``."""
        with self._cond:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))
            self._cond.notify_all()


class ConnectionSlots:
    """At most ``slots`` requests of one connector in flight at once.

    The HTTP connection pool is shared by every connector (connections to the API are
    interchangeable: the connector is a header), so its size is no per-connector bound;
    this is. A connector whose requests hang holds its own slots, never another's.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._busy = 0
        self._cond = threading.Condition()

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now."""
        with self._cond:
            return self._busy

    @contextlib.contextmanager
    def hold(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold one slot for the block; waits (interruptibly) while all are taken.

        A request that had to wait does not start once a stop was requested, even if a
        slot just came free: the stop was meant to end that wait.
        """
        with self._cond:
            waited = False
            while True:
                stopping = stop is not None and stop.is_set()
                if self._busy < self.slots and not (waited and stopping):
                    break
                if stopping:
                    raise ScanInterrupted("stop requested while waiting for a connection slot")
                self._cond.wait(_SLICE_SECONDS)
                waited = True
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
