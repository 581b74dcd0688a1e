"""What keeps a flood of webhook deliveries cheap: hint coalescing and log throttling.

Both are driven by an injected monotonic ``clock`` (tests move it by hand) and are
thread-safe: the receiver's core may be called from the server's loop and from tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Clock = Callable[[], float]


class _HintLimiter:
    """At most one hint per connector per ``interval`` seconds of ``clock``."""

    # Bounds the memory a stream of signed deliveries with made-up ids can take.
    _PRUNE_AT = 4096

    def __init__(self, interval: float, clock: Clock) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def admit(self, connector_id: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(connector_id)
            if last is not None and now - last < self._interval:
                return False
            self._last[connector_id] = now
            if len(self._last) > self._PRUNE_AT:
                self._last = {k: t for k, t in self._last.items() if now - t < self._interval}
            return True

    def forget(self, connector_id: str) -> None:
        with self._lock:
            self._last.pop(connector_id, None)


class _LogThrottle:
    """One log line per ``interval``; reports how many were held back in between."""

    def __init__(self, interval: float, clock: Clock) -> None:
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0

    def allow(self) -> int | None:
        """None: stay quiet; otherwise the count suppressed since the last line."""
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self._interval
            held, self._held = self._held, 0
            return held
