"""Fixed-window rate limiting per connector token, and the headers that report it.

A window opens at the first request after the previous window ended and lasts
``window_seconds``; it admits ``limit`` requests. Rejected requests do not
count, so a client that waits for ``Retry-After`` gets a full window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The verdict on one request and what its response headers must say."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float
    """Unix time (seconds) when the window ends."""
    now: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``X-RateLimit-*`` (and ``Retry-After`` when rejected) as raw ASGI headers."""
        left = max(0.0, self.reset_at - self.now)
        headers = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(math.ceil(self.reset_at)).encode()),
            (b"x-ratelimit-reset-after", f"{left:.3f}".encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(max(1, math.ceil(left))).encode()))
        return headers


class FixedWindowLimiter:
    """Counts requests per key in fixed windows. ``limit <= 0`` disables it."""

    def __init__(
        self, limit: int, window_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[str, list[float]] = {}  # key -> [window end, admitted count]

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all."""
        return self.limit > 0

    def configure(self, limit: int, window_seconds: float) -> None:
        """Change the limit and window; every window starts afresh."""
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self._windows.clear()

    def reset(self) -> None:
        """Forget every window."""
        self._windows.clear()

    def hit(self, key: str) -> RateDecision | None:
        """Count one request for ``key``; None when limiting is off."""
        if not self.enabled:
            return None
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now >= window[0]:
            window = self._windows[key] = [now + self.window_seconds, 0]
        end, used = window
        if used >= self.limit:
            return RateDecision(False, self.limit, 0, end, now)
        window[1] = used + 1
        return RateDecision(True, self.limit, self.limit - used - 1, end, now)
