"""How rows are packed on disk: record blobs, content hashes and the ids a scan saw.

- **Record blobs** are zstd frames, with a dictionary per stream once the stream wrote
  ``SAMPLES`` records (trained on them, stored in ``changefeed_dictionaries``). Measured on
  the simulator's enrollments (482 B of JSON): 344 B plain zstd, 115 B with a 16 KiB
  dictionary; 5 µs to compress, 1 µs to decompress. A blob that starts with ``{`` is raw
  JSON (written before 0005): still read as it is.
- **Content hashes** (32 hex digits) are their 16 bytes; anything else (a test's "h1")
  is kept as its text behind a marker byte, so no spelling is ever lost.
- **The outbox**: a commit's messages as one zstd-compressed row, not one row each: an
  initial sync replaces one row per page instead of one per event, so it leaves 0.01
  dead tuples per record for vacuum instead of 1 (about 1 kB each).
- **Seen ids**: a page's ids as one row; on PostgreSQL canonical UUIDs are packed 16
  bytes each (a page of 100 UUIDs: 1.6 kB, under the 2 kB TOAST threshold, so one heap
  tuple and no TOAST), the other ids as a JSON array (SQLite: all of them, read back by
  ``json_each``).
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Iterable, Sequence

import orjson
import zstandard

from daemon.models import Message

SAMPLES = 1000  # records a stream writes before its dictionary is trained (~0.5 MB)
DICT_SIZE = 16 * 1024
_LEVEL = 1  # with a dictionary: 121 B at 1.9 µs (level 3: 120 B at 2.1 µs)
_RAW = ord("{")
_ZSTD = b"\x01"  # + a zstd frame
_ZDICT = 2  # b"\x02" + dictionary number (2 bytes, big-endian) + a zstd frame
_MAX_RECORD = 64 << 20
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_TEXT = b"\xff"  # never in UTF-8: marks a hash kept as text


def pack_hash(digest: str) -> bytes:
    """A content hash as stored: 16 bytes, or its text behind a marker (never 16 bytes)."""
    if len(digest) == 32 and _HEX32.match(digest):
        return bytes.fromhex(digest)
    packed = _TEXT + digest.encode()
    return packed + _TEXT if len(packed) == 16 else packed


def unpack_hash(packed: bytes) -> str:
    """Inverse of ``pack_hash``."""
    if len(packed) == 16:
        return packed.hex()
    return packed[1:].rstrip(_TEXT).decode()


def pack_ids(ids: Sequence[str], *, uuids: bool) -> tuple[bytes | None, str | None]:
    """(packed canonical UUIDs or None, JSON array of the other ids or None)."""
    if not uuids:
        return None, orjson.dumps(list(ids)).decode() if ids else None
    packed: list[bytes] = []
    others: list[str] = []
    match = _UUID.match
    for rid in ids:
        if len(rid) == 36 and match(rid):
            packed.append(bytes.fromhex(rid.replace("-", "")))
        else:
            others.append(rid)
    return (b"".join(packed) or None), (orjson.dumps(others).decode() if others else None)


_FRAME = struct.Struct(">HIiI")  # topic, key, value (-1: None), headers lengths
# zstandard's (de)compressor objects are not thread-safe (shared by the store's worker
# threads they corrupt frames: seen as "Data corruption detected" with 4 workers): one
# per thread. Dictionaries themselves can be shared.
_local = threading.local()


def _outbox_codec() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    codec = getattr(_local, "outbox", None)
    if codec is None:
        codec = _local.outbox = (
            zstandard.ZstdCompressor(level=1, write_checksum=False),
            zstandard.ZstdDecompressor(),
        )
    return codec


def pack_messages(messages: Sequence[Message]) -> bytes:
    """An outbox row's ``messages``: the messages framed one after another, compressed."""
    parts: list[bytes] = []
    for m in messages:
        topic = m.topic.encode()
        headers = orjson.dumps([[name, value.hex()] for name, value in m.headers])
        value = b"" if m.value is None else m.value
        size = -1 if m.value is None else len(value)
        frame = _FRAME.pack(len(topic), len(m.key), size, len(headers))
        parts += (frame, topic, m.key, value, headers)
    return _outbox_codec()[0].compress(b"".join(parts))


def unpack_messages(packed: bytes) -> list[Message]:
    """Inverse of ``pack_messages``."""
    data = _outbox_codec()[1].decompress(packed, max_output_size=1 << 30)
    messages: list[Message] = []
    at, end = 0, len(data)
    while at < end:
        topic_len, key_len, value_len, headers_len = _FRAME.unpack_from(data, at)
        at += _FRAME.size
        topic = data[at : at + topic_len].decode()
        at += topic_len
        key = data[at : at + key_len]
        at += key_len
        value = None if value_len < 0 else data[at : at + value_len]
        at += max(value_len, 0)
        headers = orjson.loads(data[at : at + headers_len])
        at += headers_len
        messages.append(
            Message(topic, key, value, tuple((n, bytes.fromhex(v)) for n, v in headers))
        )
    return messages


class BlobCodec:
    """Compresses and restores record blobs; trains and caches each stream's dictionary.

    Shared by the store's worker threads: the caches are guarded by one lock, and each
    thread has its own (de)compressors (``_local``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._dicts: dict[int, zstandard.ZstdCompressionDict] = {}  # by number
        self._current: dict[int, int] = {}  # stream id -> its dictionary's number
        self._samples: dict[int, list[bytes]] = {}

    def _codecs(self) -> dict[int, tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]]:
        """This thread's (compressor, decompressor) by dictionary number (0: none)."""
        codecs = getattr(self._local, "codecs", None)
        if codecs is None:
            codecs = self._local.codecs = {}
        return codecs

    def _codec(self, number: int) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        codecs = self._codecs()
        codec = codecs.get(number)
        if codec is None:
            if number == 0:
                codec = (
                    zstandard.ZstdCompressor(level=_LEVEL, write_checksum=False),
                    zstandard.ZstdDecompressor(),
                )
            else:
                zdict = self._dicts[number]
                compressor = zstandard.ZstdCompressor(
                    level=_LEVEL, dict_data=zdict, write_checksum=False, write_dict_id=False
                )
                codec = (compressor, zstandard.ZstdDecompressor(dict_data=zdict))
            codecs[number] = codec
        return codec

    def known(self, number: int) -> bool:
        return number in self._dicts

    def add(self, number: int, data: bytes, sid: int | None = None) -> None:
        """Register dictionary ``number`` (read from or written to the store)."""
        zdict = zstandard.ZstdCompressionDict(bytes(data))
        with self._lock:
            self._dicts.setdefault(number, zdict)
            if sid is not None:
                self._current[sid] = number
                self._samples.pop(sid, None)

    def current(self, sid: int) -> int | None:
        return self._current.get(sid)

    def encode(self, sid: int, raw: bytes) -> bytes:
        """A record's JSON as stored for stream ``sid``."""
        number = self._current.get(sid)
        if number is not None:
            head = bytes((_ZDICT, number >> 8, number & 0xFF))
            return head + self._codec(number)[0].compress(raw)
        samples = self._samples.get(sid)
        if samples is not None and len(samples) < SAMPLES:
            samples.append(raw)
        return _ZSTD + self._codec(0)[0].compress(raw)

    def want_samples(self, sid: int) -> None:
        """Collect samples for stream ``sid`` (it has no dictionary yet)."""
        with self._lock:
            if sid not in self._current:
                self._samples.setdefault(sid, [])

    def train(self, sid: int) -> bytes | None:
        """A dictionary trained on the stream's samples once there are enough, else None."""
        samples = self._samples.get(sid)
        if samples is None or len(samples) < SAMPLES:
            return None
        self._samples[sid] = []  # collected again if training fails
        try:
            return zstandard.train_dictionary(DICT_SIZE, samples).as_bytes()
        except zstandard.ZstdError:  # too few distinct samples: stay without one
            return None

    def decode(self, blob: bytes) -> bytes:
        """A stored blob's record JSON."""
        head = blob[0] if blob else _RAW
        if head == _RAW:
            return blob
        if head == _ZSTD[0]:
            return self._codec(0)[1].decompress(blob[1:])
        number = (blob[1] << 8) | blob[2]
        return self._codec(number)[1].decompress(blob[3:], max_output_size=_MAX_RECORD)

    @staticmethod
    def dictionaries(blobs: Iterable[bytes]) -> set[int]:
        """The dictionary numbers these blobs need."""
        return {(b[1] << 8) | b[2] for b in blobs if b and b[0] == _ZDICT}
