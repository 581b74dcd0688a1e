"""How rows and outbox messages are read back: the lazy row type and the header codec."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from daemon.models import Record
from daemon.state.codec import BlobCodec, unpack_hash


class LoadedRow:
    """A stored row as ``load_rows`` returns it; blob and record are decoded on first read.

    A steady-state scan compares only bytes, hashes and times: most rows never need
    their record decoded (only an ``updated`` event's changes or a time-only bump do).
    """

    __slots__ = ("_blob", "_codec", "_hash", "_packed", "_record", "id", "modified_at")

    def __init__(
        self,
        rid: str,
        modified_at: str,
        content_hash: str | bytes,
        blob: bytes,
        codec: BlobCodec | None = None,
    ) -> None:
        self.id = rid
        self.modified_at = modified_at
        self._hash = content_hash
        self._packed = blob
        self._codec = codec
        self._blob: bytes | None = None
        self._record: Record | None = None

    @property
    def content_hash(self) -> str:
        """The record's content hash (hex): read only when the blob differs."""
        digest = self._hash
        if not isinstance(digest, str):
            digest = self._hash = unpack_hash(bytes(digest))
        return digest

    @property
    def blob(self) -> bytes:
        """The record's JSON as commit_page was given it: orjson.dumps(record)."""
        if self._blob is None:
            raw = self._packed  # TEXT in a SQLite schema-1 store of 0.1.0
            packed = raw.encode() if isinstance(raw, str) else bytes(raw)
            self._blob = packed if self._codec is None else self._codec.decode(packed)
        return self._blob

    @property
    def record(self) -> Record:
        """The last published record, as the API returned it."""
        if self._record is None:
            self._record = orjson.loads(self.blob)
        return self._record

    def __repr__(self) -> str:
        return f"LoadedRow({self.id!r}, {self.modified_at!r}, {self.content_hash!r})"


def dump_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Message headers as stored in an outbox row."""
    return orjson.dumps([[name, value.hex()] for name, value in headers])


def load_headers(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    """Inverse of ``dump_headers``."""
    return tuple((name, bytes.fromhex(value)) for name, value in orjson.loads(blob))
