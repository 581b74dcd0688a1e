"""UUIDv7 identifiers, the hash that derives them, and page cursors.

UUIDv7 puts the creation time in the leading 48 bits, so sorting the
canonical strings sorts records by creation time: pages ordered by id are
ordered by time, and ids minted "now" sort after every generated one.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import threading
import time
import zlib

_M64 = (1 << 64) - 1
_RAND_B_MASK = (1 << 62) - 1
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def mix64(x: int) -> int:
    """SplitMix64 finaliser: a fast, well-spread, platform-independent 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def stable_key(*parts: int | str) -> int:
    """A 64-bit key from ints and strings; stable across runs (unlike ``hash``)."""
    key = 0
    for part in parts:
        value = zlib.crc32(part.encode()) if isinstance(part, str) else part
        key = mix64(key ^ (value & _M64))
    return key


def uuid7(ts_ms: int, rand_a: int, rand_b: int) -> str:
    """Canonical UUIDv7 text from its timestamp and random fields."""
    value = (
        (ts_ms << 80)
        | (0x7 << 76)
        | ((rand_a & 0xFFF) << 64)
        | (0b10 << 62)
        | (rand_b & _RAND_B_MASK)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_ms(text: str) -> int | None:
    """The millisecond timestamp of a UUID string, or None when it is not one."""
    if len(text) != 36 or not _UUID_RE.match(text):
        return None
    return int(text[:8] + text[9:13], 16)


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a lower-case canonical UUID string."""
    return len(text) == 36 and _UUID_RE.match(text) is not None


class UuidV7Source:
    """Mints UUIDv7 ids for "now", strictly increasing even within one millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def new(self) -> str:
        """A fresh id that sorts after every id this source returned before."""
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = secrets.randbits(8)  # room left for many ids per ms
            else:
                self._counter += 1
                if self._counter > 0xFFF:  # rand_a exhausted: borrow the next millisecond
                    self._last_ms += 1
                    self._counter = 0
            return uuid7(self._last_ms, self._counter, secrets.randbits(62))


def encode_cursor(record_id: str) -> str:
    """The cursor pointing after ``record_id``: the base64 of the id."""
    return base64.b64encode(record_id.encode()).decode()


def decode_cursor(cursor: str) -> str:
    """The id a cursor points after; raises ``ValueError`` when it is not one of ours."""
    # A '+' that reached us unescaped in a query string arrives as a space.
    text = cursor.strip().replace(" ", "+")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        decoded = raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("cursor is not valid base64") from exc
    if not is_uuid(decoded):
        raise ValueError("cursor does not encode a record id")
    return decoded
