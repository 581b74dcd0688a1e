"""The snapshot store on PostgreSQL, for state shared by several daemon replicas.

Same contract as the SQLite store: every state change is one transaction, so a crash
leaves the store at a page boundary. Streams are claimed with session advisory locks,
so two replicas never run a pass over the same stream at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import orjson
import psycopg
from psycopg.rows import TupleRow

from daemon.errors import StateStoreError
from daemon.models import Message, RowWrite, ScanKind, StoredRow, StreamKey, StreamState
from daemon.state.sqlite import dump_headers, load_headers
from daemon.state.stream_sql import StreamSql

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changefeed_streams (
    sid SERIAL PRIMARY KEY,
    connector TEXT NOT NULL,
    model TEXT NOT NULL,
    watermark TEXT,
    scan_number INTEGER NOT NULL DEFAULT 0,
    scan_kind TEXT,
    scan_phase TEXT,
    scan_cursor TEXT,
    scan_pages INTEGER NOT NULL DEFAULT 0,
    scan_since TEXT,
    scan_started_at DOUBLE PRECISION,
    scan_max_modified TEXT,
    last_full_scan_started_at DOUBLE PRECISION,
    last_full_scan_at DOUBLE PRECISION,
    last_scan_at DOUBLE PRECISION,
    delete_guard TEXT,
    last_error TEXT,
    last_error_at DOUBLE PRECISION,
    UNIQUE (connector, model)
);
CREATE TABLE IF NOT EXISTS changefeed_records (
    sid INTEGER NOT NULL,
    id TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    hash TEXT NOT NULL,
    record BYTEA NOT NULL,
    scan INTEGER NOT NULL,
    PRIMARY KEY (sid, id)
);
CREATE TABLE IF NOT EXISTS changefeed_outbox (
    sid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    key BYTEA NOT NULL,
    value BYTEA,
    headers BYTEA NOT NULL,
    PRIMARY KEY (sid, seq)
);
"""
_STATE_COLUMNS = (
    "watermark, scan_number, scan_kind, scan_phase, scan_cursor, scan_pages, scan_since, "
    "scan_started_at, scan_max_modified, last_full_scan_started_at, last_full_scan_at, "
    "last_scan_at, delete_guard, last_error, last_error_at"
)
_SQL = StreamSql.for_store("changefeed_streams", "%s")
# Advisory lock keys live in one shared namespace: tag ours.
_LOCK_NAMESPACE = 0x4C4D5343  # "LMSC"


class PostgresSnapshotStore:
    """PostgreSQL implementation; one connection shared by the worker threads under a lock."""

    def __init__(self, dsn: str) -> None:
        self._lock = threading.RLock()
        self._sids: dict[StreamKey, int] = {}
        self._claimed: set[StreamKey] = set()
        try:
            self._db: psycopg.Connection[TupleRow] = psycopg.connect(dsn, connect_timeout=10)
            with self._db.transaction():
                # Two replicas starting together must not race on CREATE TABLE.
                self._db.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_NAMESPACE,))
                self._db.execute(_SCHEMA)
            self._where = self._describe()
        except psycopg.Error as exc:
            # psycopg messages can echo the DSN's host and user, never its password.
            raise StateStoreError(f"cannot open PostgreSQL state store: {_reason(exc)}") from None

    def _describe(self) -> str:
        info = self._db.info
        return f"postgresql://{info.host}:{info.port}/{info.dbname}"

    def __repr__(self) -> str:
        return f"PostgresSnapshotStore({getattr(self, '_where', '?')!r})"

    @contextmanager
    def _tx(self, what: str) -> Iterator[psycopg.Connection[TupleRow]]:
        with self._lock:
            try:
                with self._db.transaction():
                    yield self._db
            except psycopg.Error as exc:
                raise StateStoreError(
                    f"state store {self._where}: {what} failed: {_reason(exc)}"
                ) from None

    def _sid(self, db: psycopg.Connection[TupleRow], key: StreamKey) -> int:
        sid = self._sids.get(key)
        if sid is None:
            row = db.execute(
                "INSERT INTO changefeed_streams (connector, model) VALUES (%s, %s) "
                "ON CONFLICT (connector, model) DO UPDATE SET connector = EXCLUDED.connector "
                "RETURNING sid",
                (key.connector, key.model),
            ).fetchone()
            assert row is not None
            sid = int(row[0])
            self._sids[key] = sid
        return sid

    def _state(
        self, db: psycopg.Connection[TupleRow], key: StreamKey, *, count: bool = False
    ) -> StreamState:
        sid = self._sid(db, key)
        row = db.execute(
            f"SELECT {_STATE_COLUMNS} FROM changefeed_streams WHERE sid=%s", (sid,)
        ).fetchone()
        assert row is not None
        records = 0
        if count:
            counted = db.execute(
                "SELECT count(*) FROM changefeed_records WHERE sid=%s", (sid,)
            ).fetchone()
            records = int(counted[0]) if counted else 0
        return StreamState(key, *row, records=records)

    def state(self, key: StreamKey) -> StreamState:
        """The stream's state, with its record count."""
        with self._tx("read stream state") as db:
            return self._state(db, key, count=True)

    def states(self) -> list[StreamState]:
        """Every stream the store knows."""
        with self._tx("list streams") as db:
            keys = [
                StreamKey(c, m)
                for c, m in db.execute(
                    "SELECT connector, model FROM changefeed_streams ORDER BY 1, 2"
                )
            ]
        return [self.state(key) for key in keys]

    def claim(self, key: StreamKey) -> bool:
        """Take this stream for this process; False while another replica holds it."""
        with self._tx("claim stream") as db:
            sid = self._sid(db, key)
            if key in self._claimed:
                return True
            row = db.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_NAMESPACE, sid)
            ).fetchone()
            if row and row[0]:
                self._claimed.add(key)
                return True
            return False

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

    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, StoredRow]:
        """Stored rows for these ids (absent ids are simply missing from the result)."""
        with self._tx("load rows") as db:
            sid = self._sid(db, key)
            return {
                rid: StoredRow(rid, modified_at, digest, orjson.loads(blob))
                for rid, modified_at, digest, blob in db.execute(
                    "SELECT id, modified_at, hash, record FROM changefeed_records "
                    "WHERE sid=%s AND id = ANY(%s)",
                    (sid, list(ids)),
                )
            }

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
    ) -> StreamState:
        """Write a page's rows and messages, mark its ids seen, move the cursor: one transaction."""
        with self._tx("commit page") as db:
            sid = self._sid(db, key)
            _write_outbox(db, sid, outbox)
            row = db.execute(
                "SELECT scan_number FROM changefeed_streams WHERE sid=%s", (sid,)
            ).fetchone()
            assert row is not None
            scan = int(row[0])
            if writes:
                with db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO changefeed_records (sid, id, modified_at, hash, record, scan) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (sid, id) DO UPDATE SET "
                        "modified_at=EXCLUDED.modified_at, hash=EXCLUDED.hash, "
                        "record=EXCLUDED.record, scan=EXCLUDED.scan",
                        [
                            (sid, w.id, w.modified_at, w.content_hash, orjson.dumps(w.record), scan)
                            for w in writes
                        ],
                    )
            written = {w.id for w in writes}
            rest = [rid for rid in seen_ids if rid not in written]
            if rest:
                db.execute(
                    "UPDATE changefeed_records SET scan=%s WHERE sid=%s AND id = ANY(%s)",
                    (scan, sid, rest),
                )
            db.execute(
                _SQL.advance,
                (next_cursor, max_modified, max_modified, sid),
            )
            return self._state(db, key)

    def begin_deletes(self, key: StreamKey) -> StreamState:
        """Every page of a full scan is committed: move on to the delete phase."""
        with self._tx("begin deletes") as db:
            sid = self._sid(db, key)
            db.execute(
                _SQL.begin_deletes,
                (sid,),
            )
            return self._state(db, key)

    def count_missing(self, key: StreamKey) -> tuple[int, int]:
        """(rows the current scan did not see, all rows) of the stream."""
        with self._tx("count missing rows") as db:
            sid = self._sid(db, key)
            row = db.execute(
                "SELECT count(*) FILTER (WHERE r.scan <> s.scan_number), count(*) "
                "FROM changefeed_records r JOIN changefeed_streams s ON s.sid = r.sid "
                "WHERE r.sid=%s",
                (sid,),
            ).fetchone()
            return (int(row[0]), int(row[1])) if row else (0, 0)

    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows the current scan did not see, in id order."""
        with self._tx("list missing rows") as db:
            sid = self._sid(db, key)
            return [
                StoredRow(rid, modified_at, digest, orjson.loads(blob))
                for rid, modified_at, digest, blob in db.execute(
                    "SELECT r.id, r.modified_at, r.hash, r.record FROM changefeed_records r "
                    "JOIN changefeed_streams s ON s.sid = r.sid "
                    "WHERE r.sid=%s AND r.scan <> s.scan_number ORDER BY r.id LIMIT %s",
                    (sid, limit),
                )
            ]

    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None:
        """Forget deleted rows and keep their ``deleted`` messages to publish: one transaction."""
        with self._tx("commit deletes") as db:
            sid = self._sid(db, key)
            _write_outbox(db, sid, outbox)
            db.execute(
                "DELETE FROM changefeed_records WHERE sid=%s AND id = ANY(%s)", (sid, list(ids))
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
            db.execute(
                _SQL.record_error,
                (message, now, sid),
            )

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
            db.execute("DELETE FROM changefeed_records WHERE sid=%s", (sid,))
            db.execute("DELETE FROM changefeed_outbox WHERE sid=%s", (sid,))
            db.execute("DELETE FROM changefeed_streams WHERE sid=%s", (sid,))
            self._sids.pop(key, None)

    def pending(self, key: StreamKey) -> list[Message]:
        """Messages committed with the last page but not yet acknowledged by Kafka."""
        with self._tx("read outbox") as db:
            sid = self._sid(db, key)
            return [
                Message(
                    topic,
                    bytes(rkey),
                    None if value is None else bytes(value),
                    load_headers(bytes(headers)),
                )
                for topic, rkey, value, headers in db.execute(
                    "SELECT topic, key, value, headers FROM changefeed_outbox "
                    "WHERE sid=%s ORDER BY seq",
                    (sid,),
                )
            ]

    def clear_pending(self, key: StreamKey) -> None:
        """Kafka acknowledged the outbox: forget it."""
        with self._tx("clear outbox") as db:
            db.execute("DELETE FROM changefeed_outbox WHERE sid=%s", (self._sid(db, key),))

    def ping(self) -> None:
        """Raise StateStoreError unless the store answers a query."""
        with self._tx("ping") as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close the connection (which also releases this process's stream claims)."""
        with self._lock:
            self._db.close()


def _reason(exc: psycopg.Error) -> str:
    # The first line of the server's message; psycopg never includes the password.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def _write_outbox(db: psycopg.Connection[TupleRow], sid: int, outbox: Sequence[Message]) -> None:
    db.execute("DELETE FROM changefeed_outbox WHERE sid=%s", (sid,))
    if outbox:
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO changefeed_outbox (sid, seq, topic, key, value, headers) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (sid, seq, m.topic, m.key, m.value, dump_headers(m.headers))
                    for seq, m in enumerate(outbox)
                ],
            )
