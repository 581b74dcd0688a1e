"""Instants as integer microseconds since the Unix epoch, and their ISO 8601 text.

Integers keep comparisons exact and cheap (filters, the modified_at index);
text is produced in one canonical shape, ``2025-03-04T05:06:07.123456Z``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND


def format_us(us: int) -> str:
    """Render microseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    d = _NAIVE_EPOCH + timedelta(microseconds=us)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{d.microsecond:06d}Z"
    )


def datetime_to_us(value: datetime) -> int:
    """Microseconds since the epoch of ``value``; a naive value is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # Integer division of timedeltas is exact, unlike float timestamps.
    return (value - _EPOCH) // _ONE_US


def parse_us(text: str) -> int:
    """Parse an ISO 8601 date or datetime (``Z``, offsets, any fraction) to microseconds.

    Raises ``ValueError`` for anything else.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("expected an ISO 8601 datetime string")
    return datetime_to_us(datetime.fromisoformat(text))


def normalize_datetime(text: str) -> str:
    """Canonical form of an ISO 8601 datetime string (raises ``ValueError``)."""
    return format_us(parse_us(text))


class MonotonicUtc:
    """Wall-clock "now" in microseconds that never repeats or goes backwards.

    Two writes in the same microsecond still get distinct, ordered
    ``modified_at`` values, which is what a watermark-based client relies on.
    """

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        """The current instant, strictly after every previous answer."""
        with self._lock:
            now = max(time.time_ns() // 1000, self._last + 1)
            self._last = now
            return now
