"""The SQLite store's schema 2 (scan marks in their own table) and its fast paths."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.models import StreamKey
from daemon.state.sqlite import SqliteSnapshotStore
from daemon.timestamps import normalize_time

KEY = StreamKey("acme", "enrollments")

# What schema 1 (records.scan) looked like on disk.
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE streams (
    sid INTEGER PRIMARY KEY, connector TEXT NOT NULL, model TEXT NOT NULL, watermark TEXT,
    scan_number INTEGER NOT NULL DEFAULT 0, scan_kind TEXT, scan_phase TEXT, scan_cursor TEXT,
    scan_pages INTEGER NOT NULL DEFAULT 0, scan_since TEXT, scan_started_at REAL,
    scan_max_modified TEXT, last_full_scan_started_at REAL, last_full_scan_at REAL,
    last_scan_at REAL, delete_guard TEXT, last_error TEXT, last_error_at REAL,
    UNIQUE (connector, model)
);
CREATE TABLE records (
    sid INTEGER NOT NULL, id TEXT NOT NULL, modified_at TEXT NOT NULL, hash TEXT NOT NULL,
    record BLOB NOT NULL, scan INTEGER NOT NULL, PRIMARY KEY (sid, id)
) WITHOUT ROWID;
INSERT INTO streams (sid, connector, model, watermark, scan_number, scan_kind, scan_phase,
                     scan_cursor, scan_pages, last_full_scan_at)
    VALUES (1, 'acme', 'enrollments', '2025-01-01T00:00:00.000000Z', 2, 'full', 'pages',
            'p2', 1, 5.0);
INSERT INTO records VALUES
    (1, 'a', '2025-01-01T00:00:00.000000Z', 'ha', '{"id":"a"}', 2),
    (1, 'b', '2025-01-01T00:00:00.000000Z', 'hb', '{"id":"b"}', 1),
    (1, 'c', '2025-01-01T00:00:00.000000Z', 'hc', '{"id":"c"}', 2),
    (1, 'd', '2025-01-01T00:00:00.000000Z', 'hd', '{"id":"d"}', 1);
"""


def test_a_schema_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_1)
    store = SqliteSnapshotStore(path)
    try:
        state = store.state(KEY)
        assert state.in_progress and state.scan_cursor == "p2" and state.records == 4
        # The scan in progress (number 2) saw a and c: b and d are still missing.
        assert store.count_missing(KEY) == (2, 4)
        assert [row.id for row in store.missing_rows(KEY, 10)] == ["b", "d"]
        assert store.load_rows(KEY, ["a"])["a"].record == {"id": "a"}
        store.commit_page(KEY, [], ["b"], None, None)
        assert store.count_missing(KEY) == (1, 4)
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == ("2",)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(records)")]
        assert "scan" not in columns
    SqliteSnapshotStore(path).close()  # opening a migrated store again changes nothing


def test_deletes_and_reset_clear_the_scan_marks_too(tmp_path: Path) -> None:
    from daemon.models import RowWrite

    store = SqliteSnapshotStore(tmp_path / "s.db")
    try:
        store.begin_scan(KEY, "full", None, 1.0)
        writes = [RowWrite(r, "2025-01-01T00:00:00.000000Z", f"h{r}", {"id": r}) for r in "abc"]
        store.commit_page(KEY, writes, list("abc"), None, None)
        store.commit_deletes(KEY, ["b"])
        assert store.state(KEY).records == 2 and store.count_missing(KEY) == (0, 2)
        store.reset(KEY)
        rows = store._db.execute("SELECT count(*) FROM seen").fetchone()[0]
        assert rows == 0
    finally:
        store.close()


def _reference_normalize(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _outcome(fn, value: str) -> tuple[str, object]:
    try:
        return "ok", fn(value)
    except ValueError as exc:
        return "error", type(exc)


@settings(max_examples=500, deadline=None)
@given(st.datetimes(timezones=st.none() | st.timezones()), st.integers(0, 26), st.characters())
def test_normalize_time_fast_path_matches_the_slow_one(
    when: datetime, position: int, char: str
) -> None:
    canonical = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for value in (
        canonical,
        when.isoformat(),
        canonical[:position] + char + canonical[position + 1 :],
    ):
        assert _outcome(normalize_time, value) == _outcome(_reference_normalize, value)
