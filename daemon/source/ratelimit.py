"""Client-side request budget per connector, shared by every stream of that connector."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from daemon.errors import ScanInterrupted


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
                # Short slices so a stop request is noticed promptly.
                self._cond.wait(min(wait, 0.25))

    def block_for(self, seconds: float) -> None:
        """The server says the budget is spent: send nothing for ``seconds``."""
        with self._cond:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))
            self._cond.notify_all()
