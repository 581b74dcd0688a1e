"""Timestamps as the daemon stores them: fixed-width UTC text that sorts as time does."""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def normalize_time(value: str) -> str:
    """ISO 8601 (offsets, fractions, ``Z``) → ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(_FORMAT)


def parse_time(normalized: str) -> datetime:
    """Inverse of ``normalize_time``."""
    return datetime.strptime(normalized, _FORMAT).replace(tzinfo=UTC)
