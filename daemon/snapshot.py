"""The snapshot store: per-record rows, watermarks and scan checkpoints (SQLite, WAL).

Every method that changes state runs in one transaction, so a crash leaves the
store at a page boundary.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import orjson

from daemon.diff import RowWrite
from daemon.errors import StateStoreError
from daemon.models import ScanKind, StoredRow, StreamKey, StreamState

SCHEMA_VERSION = 1
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
    scan INTEGER NOT NULL,
    PRIMARY KEY (sid, id)
) WITHOUT ROWID;
"""
_STATE_COLUMNS = (
    "watermark, scan_number, scan_kind, scan_phase, scan_cursor, scan_pages, scan_since, "
    "scan_started_at, scan_max_modified, last_full_scan_started_at, last_full_scan_at, "
    "last_scan_at, delete_guard, last_error, last_error_at"
)
# SQLite's default limit on host parameters is 32766; pages are ≤ 100 ids anyway.
_CHUNK = 500


class SnapshotStore(Protocol):
    """What the stream needs from a state backend (SQLite now, PostgreSQL later)."""

    def state(self, key: StreamKey) -> StreamState: ...
    def states(self) -> list[StreamState]: ...
    def begin_scan(
        self, key: StreamKey, kind: ScanKind, since: str | None, now: float
    ) -> StreamState: ...
    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, StoredRow]: ...
    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
    ) -> StreamState: ...
    def begin_deletes(self, key: StreamKey) -> StreamState: ...
    def count_missing(self, key: StreamKey) -> tuple[int, int]: ...
    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]: ...
    def commit_deletes(self, key: StreamKey, ids: Sequence[str]) -> None: ...
    def finish_scan(self, key: StreamKey, now: float, delete_guard: str | None) -> StreamState: ...
    def record_error(self, key: StreamKey, message: str, now: float) -> None: ...
    def abandon_scan(self, key: StreamKey) -> None: ...
    def reset(self, key: StreamKey) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


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
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except (sqlite3.Error, OSError) as exc:
            raise StateStoreError(f"cannot open state store {self.path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SqliteSnapshotStore({str(self.path)!r})"

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
            records = db.execute("SELECT count(*) FROM records WHERE sid=?", (sid,)).fetchone()[0]
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
                "UPDATE streams SET scan_number=scan_number+1, scan_kind=?, scan_phase='pages', "
                "scan_cursor=NULL, scan_pages=0, scan_since=?, scan_started_at=?, "
                "scan_max_modified=NULL WHERE sid=?",
                (kind, since, now, sid),
            )
            return self._state(db, key)

    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, StoredRow]:
        """Stored rows for these ids (absent ids are simply missing from the result)."""
        rows: dict[str, StoredRow] = {}
        with self._read("load rows") as db:
            sid = self._sid(db, key)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for rid, modified_at, digest, blob in db.execute(
                    f"SELECT id, modified_at, hash, record FROM records "
                    f"WHERE sid=? AND id IN ({marks})",
                    (sid, *chunk),
                ):
                    rows[rid] = StoredRow(rid, modified_at, digest, orjson.loads(blob))
        return rows

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
    ) -> StreamState:
        """Write a page's rows, mark its ids seen by this scan, move the cursor: one transaction."""
        with self._tx("commit page") as db:
            sid = self._sid(db, key)
            scan = db.execute("SELECT scan_number FROM streams WHERE sid=?", (sid,)).fetchone()[0]
            db.executemany(
                "INSERT OR REPLACE INTO records (sid, id, modified_at, hash, record, scan) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (sid, w.id, w.modified_at, w.content_hash, orjson.dumps(w.record), scan)
                    for w in writes
                ],
            )
            written = {w.id for w in writes}
            rest = [rid for rid in seen_ids if rid not in written]
            for start in range(0, len(rest), _CHUNK):
                chunk = rest[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"UPDATE records SET scan=? WHERE sid=? AND id IN ({marks})",
                    (scan, sid, *chunk),
                )
            db.execute(
                "UPDATE streams SET scan_cursor=?, scan_pages=scan_pages+1, "
                "scan_max_modified=CASE WHEN scan_max_modified IS NULL OR ? > scan_max_modified "
                "THEN ? ELSE scan_max_modified END WHERE sid=?",
                (next_cursor, max_modified, max_modified, sid),
            )
            return self._state(db, key)

    def begin_deletes(self, key: StreamKey) -> StreamState:
        """Every page of a full scan is committed: move on to the delete phase."""
        with self._tx("begin deletes") as db:
            sid = self._sid(db, key)
            db.execute(
                "UPDATE streams SET scan_phase='deletes', scan_cursor=NULL WHERE sid=?", (sid,)
            )
            return self._state(db, key)

    def count_missing(self, key: StreamKey) -> tuple[int, int]:
        """(rows the current scan did not see, all rows) of the stream."""
        with self._read("count missing rows") as db:
            sid = self._sid(db, key)
            missing, total = db.execute(
                "SELECT sum(scan != (SELECT scan_number FROM streams WHERE sid=?)), count(*) "
                "FROM records WHERE sid=?",
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
                    "SELECT id, modified_at, hash, record FROM records WHERE sid=? AND "
                    "scan != (SELECT scan_number FROM streams WHERE sid=?) ORDER BY id LIMIT ?",
                    (sid, sid, limit),
                )
            ]

    def commit_deletes(self, key: StreamKey, ids: Sequence[str]) -> None:
        """Forget rows whose ``deleted`` events Kafka acknowledged."""
        with self._tx("commit deletes") as db:
            sid = self._sid(db, key)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM records WHERE sid=? AND id IN ({marks})", (sid, *chunk))

    def finish_scan(self, key: StreamKey, now: float, delete_guard: str | None) -> StreamState:
        """Close the scan and move the watermark to the newest ``modified_at`` it published."""
        with self._tx("finish scan") as db:
            sid = self._sid(db, key)
            db.execute(
                "UPDATE streams SET "
                "watermark=CASE WHEN watermark IS NULL OR scan_max_modified > watermark "
                "  THEN coalesce(scan_max_modified, watermark) ELSE watermark END, "
                "last_full_scan_started_at=CASE WHEN scan_kind='full' THEN scan_started_at "
                "  ELSE last_full_scan_started_at END, "
                "last_full_scan_at=CASE WHEN scan_kind='full' THEN ? ELSE last_full_scan_at END, "
                "delete_guard=CASE WHEN scan_kind='full' THEN ? ELSE delete_guard END, "
                "last_scan_at=?, last_error=NULL, last_error_at=NULL, "
                "scan_kind=NULL, scan_phase=NULL, scan_cursor=NULL, "
                "scan_pages=0, scan_since=NULL, scan_started_at=NULL, scan_max_modified=NULL "
                "WHERE sid=?",
                (now, delete_guard, now, sid),
            )
            return self._state(db, key)

    def record_error(self, key: StreamKey, message: str, now: float) -> None:
        """Remember why the last pass failed (shown by ``status``); the scan stays resumable."""
        with self._tx("record error") as db:
            sid = self._sid(db, key)
            db.execute(
                "UPDATE streams SET last_error=?, last_error_at=? WHERE sid=?", (message, now, sid)
            )

    def abandon_scan(self, key: StreamKey) -> None:
        """Drop the scan in progress without moving the watermark."""
        with self._tx("abandon scan") as db:
            sid = self._sid(db, key)
            db.execute(
                "UPDATE streams SET scan_kind=NULL, scan_phase=NULL, scan_cursor=NULL, "
                "scan_pages=0, scan_since=NULL, scan_started_at=NULL, scan_max_modified=NULL "
                "WHERE sid=?",
                (sid,),
            )

    def reset(self, key: StreamKey) -> None:
        """Forget a stream entirely: its next pass is an initial sync."""
        with self._tx("reset stream") as db:
            sid = self._sid(db, key)
            db.execute("DELETE FROM records WHERE sid=?", (sid,))
            db.execute("DELETE FROM streams WHERE sid=?", (sid,))
            self._sids.pop(key, None)

    def ping(self) -> None:
        """Raise StateStoreError unless the store answers a query."""
        with self._read("ping") as db:
            db.execute("SELECT 1 FROM meta LIMIT 1").fetchone()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
