"""Timestamps as the daemon stores them: fixed-width UTC text that sorts as time does."""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# The normal form ``YYYY-MM-DDTHH:MM:SS.ffffffZ``: its length, and its separators, which
# stand every third character from index 4 to 19, then the final ``Z``.
_NORMAL_LENGTH = 27
_NORMAL_SEPARATORS = "--T::."


def normalize_time(value: str) -> str:
    """ISO 8601 (offsets, fractions, ``Z``) → ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC.

    Raises ValueError for text that is not such a time or one outside the years 1-9999
    in UTC (``0001-01-01T00:00:00+01:00``).
    """
    parsed = datetime.fromisoformat(value)
    # Hot path (every item of every page, twice): a value already in the normal form is
    # returned as is. fromisoformat has validated its digits, and with every separator
    # in place and ASCII only, formatting the parsed value gives back the same text.
    # (A year below 1000 is left to strftime, which does not zero-pad it.)
    if (
        len(value) == _NORMAL_LENGTH
        and value[0] != "0"
        and value.isascii()
        and value[4:20:3] == _NORMAL_SEPARATORS
        and value[26] == "Z"
    ):
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC).strftime(_FORMAT)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 1-9999 in UTC") from None


def format_epoch(seconds: float) -> str:
    """Seconds since the epoch → ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the normal form, UTC)."""
    return datetime.fromtimestamp(seconds, UTC).strftime(_FORMAT)


def parse_time(normalized: str) -> datetime:
    """Inverse of ``normalize_time``."""
    return datetime.strptime(normalized, _FORMAT).replace(tzinfo=UTC)
