"""The snapshot store: per-record rows, watermarks and scan checkpoints (SQLite, WAL).

Every method that changes state runs in one transaction, so a crash leaves the
store at a page boundary.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import orjson

from daemon.errors import StateStoreError
from daemon.models import (
    Message,
    Record,
    RowWrite,
    ScanKind,
    SnapshotRow,
    StoredRow,
    StreamKey,
    StreamState,
)
from daemon.state.stream_sql import StreamSql

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    sid INTEGER PRIMARY KEY,
    connector TEXT NOT NULL,
    model TEXT NOT NULL,
    watermark TEXT,
    scan_number INTEGER NOT NULL DEFAULT 0,
    scan_kind TEXT,
    scan_phase TEXT,
    scan_cursor TEXT,
    scan_pages INTEGER NOT NULL DEFAULT 0,
    scan_since TEXT,
    scan_started_at REAL,
    scan_max_modified TEXT,
    last_full_scan_started_at REAL,
    last_full_scan_at REAL,
    last_scan_at REAL,
    delete_guard TEXT,
    last_error TEXT,
    last_error_at REAL,
    UNIQUE (connector, model)
);
CREATE TABLE IF NOT EXISTS records (
    sid INTEGER NOT NULL,
    id TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    hash TEXT NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (sid, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    sid INTEGER NOT NULL,
    id TEXT NOT NULL,
    scan INTEGER NOT NULL,
    PRIMARY KEY (sid, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    sid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB,
    headers BLOB NOT NULL,
    PRIMARY KEY (sid, seq)
) WITHOUT ROWID;
"""
# ``outbox`` holds the messages of the last committed page until Kafka acknowledged them:
# a page's rows and its events are committed together, then published, then cleared, so
# the store never describes a page Kafka may not have, nor Kafka one the store does not.
# Every row of ``records`` has one in ``seen``: the number of the last scan that saw (or
# wrote) it. Kept apart from the records because a full scan marks every id it sees, and
# on narrow rows marking a page rewrites a couple of b-tree pages instead of a dozen
# (schema 1 kept it as ``records.scan``; opening such a store migrates it).
_STATE_COLUMNS = (
    "watermark, scan_number, scan_kind, scan_phase, scan_cursor, scan_pages, scan_since, "
    "scan_started_at, scan_max_modified, last_full_scan_started_at, last_full_scan_at, "
    "last_scan_at, delete_guard, last_error, last_error_at"
)
_SQL = StreamSql.for_store("streams", "?")
# SQLite's default limit on host parameters is 32766; pages are ≤ 100 ids anyway.
_CHUNK = 500


# Statement texts per id count, built once (sqlite3 caches the compiled statements by text).
@functools.lru_cache(maxsize=16)
def _select_rows(count: int) -> str:
    marks = ",".join("?" * count)
    return f"SELECT id, modified_at, hash, record FROM records WHERE sid=? AND id IN ({marks})"


# Multi-row VALUES: one statement per page instead of one step per row (executemany).
@functools.lru_cache(maxsize=16)
def _insert_rows(count: int) -> str:
    values = ",".join(["(?,?,?,?,?)"] * count)
    return f"INSERT OR REPLACE INTO records (sid, id, modified_at, hash, record) VALUES {values}"


@functools.lru_cache(maxsize=16)
def _insert_seen(count: int) -> str:
    values = ",".join(["(?,?,?)"] * count)
    return f"INSERT OR REPLACE INTO seen (sid, id, scan) VALUES {values}"


@functools.lru_cache(maxsize=16)
def _mark_seen(count: int) -> str:
    marks = ",".join("?" * count)
    return f"UPDATE seen SET scan=? WHERE sid=? AND id IN ({marks})"


class SnapshotStore(Protocol):
    """What the stream needs from a state backend (SQLite now, PostgreSQL later)."""

    def state(self, key: StreamKey) -> StreamState: ...
    def states(self) -> list[StreamState]: ...
    def begin_scan(
        self, key: StreamKey, kind: ScanKind, since: str | None, now: float
    ) -> StreamState: ...
    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, SnapshotRow]: ...
    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
    ) -> StreamState: ...
    def pending(self, key: StreamKey) -> list[Message]: ...
    def clear_pending(self, key: StreamKey) -> None: ...
    def claim(self, key: StreamKey) -> bool: ...
    def begin_deletes(self, key: StreamKey) -> StreamState: ...
    def count_missing(self, key: StreamKey) -> tuple[int, int]: ...
    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]: ...
    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None: ...
    def finish_scan(self, key: StreamKey, now: float, delete_guard: str | None) -> StreamState: ...
    def record_error(self, key: StreamKey, message: str, now: float) -> None: ...
    def abandon_scan(self, key: StreamKey) -> None: ...
    def reset(self, key: StreamKey) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


class LoadedRow:
    """A stored row as ``load_rows`` returns it; the record is decoded on first read.

    A steady-state scan compares only hashes and times: most rows never need their
    record (only an ``updated`` event's changes or a time-only bump do).
    """

    __slots__ = ("_blob", "_record", "content_hash", "id", "modified_at")

    def __init__(self, rid: str, modified_at: str, content_hash: str, blob: bytes) -> None:
        self.id = rid
        self.modified_at = modified_at
        self.content_hash = content_hash
        self._blob = blob
        self._record: Record | None = None

    @property
    def record(self) -> Record:
        """The last published record, as the API returned it."""
        if self._record is None:
            self._record = orjson.loads(self._blob)
        return self._record

    def __repr__(self) -> str:
        return f"LoadedRow({self.id!r}, {self.modified_at!r}, {self.content_hash!r})"


class SqliteSnapshotStore:
    """SQLite implementation; one connection shared by the worker threads under a lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._sids: dict[StreamKey, int] = {}
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash; a power loss may roll back the
            # last commits, which only means pages get published again (same ids).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StateStoreError(f"cannot open state store {self.path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteSnapshotStore({str(self.path)!r})"

    def _migrate(self) -> None:
        """Stamp a new store with the schema version; bring a schema-1 store up to date."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif row[0] == "1":
                db.execute("INSERT INTO seen (sid, id, scan) SELECT sid, id, scan FROM records")
                db.execute("ALTER TABLE records DROP COLUMN scan")
                db.execute(
                    "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateStoreError(f"state store {self.path}: {what} failed: {exc}") from None

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StateStoreError(f"state store {self.path}: {what} failed: {exc}") from None

    def _sid(self, db: sqlite3.Connection, key: StreamKey) -> int:
        sid = self._sids.get(key)
        if sid is None:
            row = db.execute(
                "SELECT sid FROM streams WHERE connector=? AND model=?", (key.connector, key.model)
            ).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO streams (connector, model) VALUES (?, ?)",
                    (key.connector, key.model),
                )
                sid = int(cursor.lastrowid or 0)
            else:
                sid = int(row[0])
            self._sids[key] = sid
        return sid

    def _state(self, db: sqlite3.Connection, key: StreamKey, *, count: bool = False) -> StreamState:
        sid = self._sid(db, key)
        row = db.execute(f"SELECT {_STATE_COLUMNS} FROM streams WHERE sid=?", (sid,)).fetchone()
        records = 0
        if count:
            records = db.execute("SELECT count(*) FROM seen WHERE sid=?", (sid,)).fetchone()[0]
        return StreamState(key, *row, records=records)

    def state(self, key: StreamKey) -> StreamState:
        """The stream's state, with its record count."""
        with self._tx("read stream state") as db:
            return self._state(db, key, count=True)

    def states(self) -> list[StreamState]:
        """Every stream the store knows."""
        with self._read("list streams") as db:
            keys = [
                StreamKey(c, m)
                for c, m in db.execute("SELECT connector, model FROM streams ORDER BY 1, 2")
            ]
        return [self.state(key) for key in keys]

    def begin_scan(
        self, key: StreamKey, kind: ScanKind, since: str | None, now: float
    ) -> StreamState:
        """Start a new scan: bump the scan number, no cursor yet."""
        with self._tx("begin scan") as db:
            sid = self._sid(db, key)
            db.execute(
                _SQL.begin_scan,
                (kind, since, now, sid),
            )
            return self._state(db, key)

    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, SnapshotRow]:
        """Stored rows for these ids (absent ids are simply missing from the result)."""
        rows: dict[str, SnapshotRow] = {}
        with self._read("load rows") as db:
            sid = self._sid(db, key)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for row in db.execute(_select_rows(len(chunk)), (sid, *chunk)):
                    rows[row[0]] = LoadedRow(*row)
        return rows

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
    ) -> StreamState:
        """Write a page's rows, its messages to publish, mark its ids seen by this scan and
        move the cursor: one transaction."""
        with self._tx("commit page") as db:
            sid = self._sid(db, key)
            _write_outbox(db, sid, outbox)
            scan = db.execute("SELECT scan_number FROM streams WHERE sid=?", (sid,)).fetchone()[0]
            if writes:
                dumps = orjson.dumps
                for start in range(0, len(writes), _CHUNK):
                    chunk = writes[start : start + _CHUNK]
                    rows: list[object] = []
                    marks: list[object] = []
                    for w in chunk:
                        rows += (sid, w.id, w.modified_at, w.content_hash, dumps(w.record))
                        marks += (sid, w.id, scan)
                    db.execute(_insert_rows(len(chunk)), rows)
                    db.execute(_insert_seen(len(chunk)), marks)
                written = {w.id for w in writes}
                rest: Sequence[str] = [rid for rid in seen_ids if rid not in written]
            else:
                rest = seen_ids
            for start in range(0, len(rest), _CHUNK):
                chunk = rest[start : start + _CHUNK]
                db.execute(_mark_seen(len(chunk)), (scan, sid, *chunk))
            db.execute(
                _SQL.advance,
                (next_cursor, max_modified, max_modified, sid),
            )
            return self._state(db, key)

    def begin_deletes(self, key: StreamKey) -> StreamState:
        """Every page of a full scan is committed: move on to the delete phase."""
        with self._tx("begin deletes") as db:
            sid = self._sid(db, key)
            db.execute(_SQL.begin_deletes, (sid,))
            return self._state(db, key)

    def count_missing(self, key: StreamKey) -> tuple[int, int]:
        """(rows the current scan did not see, all rows) of the stream."""
        with self._read("count missing rows") as db:
            sid = self._sid(db, key)
            missing, total = db.execute(
                "SELECT sum(scan != (SELECT scan_number FROM streams WHERE sid=?)), count(*) "
                "FROM seen WHERE sid=?",
                (sid, sid),
            ).fetchone()
            return int(missing or 0), int(total)

    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows the current scan did not see, in id order."""
        with self._read("list missing rows") as db:
            sid = self._sid(db, key)
            return [
                StoredRow(rid, modified_at, digest, orjson.loads(blob))
                for rid, modified_at, digest, blob in db.execute(
                    "SELECT r.id, r.modified_at, r.hash, r.record FROM seen s "
                    "JOIN records r ON r.sid = s.sid AND r.id = s.id WHERE s.sid=? AND "
                    "s.scan != (SELECT scan_number FROM streams WHERE sid=?) "
                    "ORDER BY s.id LIMIT ?",
                    (sid, sid, limit),
                )
            ]

    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None:
        """Forget deleted rows and keep their ``deleted`` messages to publish: one transaction."""
        with self._tx("commit deletes") as db:
            sid = self._sid(db, key)
            _write_outbox(db, sid, outbox)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for table in ("records", "seen"):
                    db.execute(
                        f"DELETE FROM {table} WHERE sid=? AND id IN ({marks})", (sid, *chunk)
                    )

    def finish_scan(self, key: StreamKey, now: float, delete_guard: str | None) -> StreamState:
        """Close the scan and move the watermark to the newest ``modified_at`` it published."""
        with self._tx("finish scan") as db:
            sid = self._sid(db, key)
            db.execute(
                _SQL.finish_scan,
                (now, delete_guard, now, sid),
            )
            return self._state(db, key)

    def record_error(self, key: StreamKey, message: str, now: float) -> None:
        """Remember why the last pass failed (shown by ``status``); the scan stays resumable."""
        with self._tx("record error") as db:
            sid = self._sid(db, key)
            db.execute(_SQL.record_error, (message, now, sid))

    def abandon_scan(self, key: StreamKey) -> None:
        """Drop the scan in progress without moving the watermark."""
        with self._tx("abandon scan") as db:
            sid = self._sid(db, key)
            db.execute(
                _SQL.abandon_scan,
                (sid,),
            )

    def reset(self, key: StreamKey) -> None:
        """Forget a stream entirely: its next pass is an initial sync."""
        with self._tx("reset stream") as db:
            sid = self._sid(db, key)
            db.execute("DELETE FROM records WHERE sid=?", (sid,))
            db.execute("DELETE FROM seen WHERE sid=?", (sid,))
            db.execute("DELETE FROM outbox WHERE sid=?", (sid,))
            db.execute("DELETE FROM streams WHERE sid=?", (sid,))
            self._sids.pop(key, None)

    def pending(self, key: StreamKey) -> list[Message]:
        """Messages committed with the last page but not yet acknowledged by Kafka."""
        with self._read("read outbox") as db:
            sid = self._sid(db, key)
            return [
                Message(
                    topic,
                    bytes(rkey),
                    None if value is None else bytes(value),
                    load_headers(headers),
                )
                for topic, rkey, value, headers in db.execute(
                    "SELECT topic, key, value, headers FROM outbox WHERE sid=? ORDER BY seq",
                    (sid,),
                )
            ]

    def clear_pending(self, key: StreamKey) -> None:
        """Kafka acknowledged the outbox: forget it."""
        with self._tx("clear outbox") as db:
            db.execute("DELETE FROM outbox WHERE sid=?", (self._sid(db, key),))

    def claim(self, key: StreamKey) -> bool:
        """SQLite state belongs to one process: every stream is always ours."""
        return True

    def ping(self) -> None:
        """Raise StateStoreError unless the store answers a query."""
        with self._read("ping") as db:
            db.execute("SELECT 1 FROM meta LIMIT 1").fetchone()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def dump_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    """Message headers as stored in an outbox row."""
    return orjson.dumps([[name, value.hex()] for name, value in headers])


def load_headers(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    """Inverse of ``dump_headers``."""
    return tuple((name, bytes.fromhex(value)) for name, value in orjson.loads(blob))


def _write_outbox(db: sqlite3.Connection, sid: int, outbox: Sequence[Message]) -> None:
    # Replaces the stream's outbox: the pass publishes (and clears) it before going on.
    db.execute("DELETE FROM outbox WHERE sid=?", (sid,))
    if outbox:
        db.executemany(
            "INSERT INTO outbox (sid, seq, topic, key, value, headers) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (sid, seq, m.topic, m.key, m.value, dump_headers(m.headers))
                for seq, m in enumerate(outbox)
            ],
        )
