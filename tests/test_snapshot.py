"""The SQLite snapshot store on a real file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from daemon.errors import StateStoreError
from daemon.models import RowWrite, StreamKey
from daemon.state.sqlite import SqliteSnapshotStore

KEY = StreamKey("acme", "enrollments")
OTHER = StreamKey("globex", "enrollments")


def write(rid: str, modified: str = "2025-01-01T00:00:00.000000Z", grade: int = 1) -> RowWrite:
    return RowWrite(rid, modified, f"h-{rid}-{grade}", {"id": rid, "grade": grade})


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        s = SqliteSnapshotStore(tmp_path / "state" / "changefeed.db")
    else:
        from daemon.state.postgres import PostgresSnapshotStore

        s = PostgresSnapshotStore(request.getfixturevalue("pg_schema"))
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path):
    s = SqliteSnapshotStore(tmp_path / "state" / "changefeed.db")
    yield s
    s.close()


def test_page_commit_and_reload(sqlite_store: SqliteSnapshotStore, tmp_path: Path) -> None:
    store = sqlite_store
    store.begin_scan(KEY, "full", None, 100.0)
    state = store.commit_page(
        KEY,
        [write("a"), write("b", "2025-02-01T00:00:00.000000Z")],
        ["a", "b"],
        "c1",
        "2025-02-01T00:00:00.000000Z",
    )
    assert state.scan_cursor == "c1" and state.scan_pages == 1
    assert state.watermark is None  # only a finished scan moves it
    rows = store.load_rows(KEY, ["a", "b", "zzz"])
    assert set(rows) == {"a", "b"} and rows["a"].record == {"id": "a", "grade": 1}
    store.close()
    reopened = SqliteSnapshotStore(tmp_path / "state" / "changefeed.db")
    state = reopened.state(KEY)
    assert state.in_progress and state.scan_cursor == "c1" and state.records == 2
    done = reopened.finish_scan(KEY, 200.0, None)
    assert done.watermark == "2025-02-01T00:00:00.000000Z"
    assert done.last_full_scan_at == 200.0 and done.last_full_scan_started_at == 100.0
    assert not done.in_progress
    reopened.close()


def test_watermark_never_moves_back(store: SqliteSnapshotStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a")], ["a"], None, "2025-05-01T00:00:00.000000Z")
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(KEY, "incremental", "2025-04-30T00:00:00Z", 3.0)
    store.commit_page(KEY, [], [], None, "2025-01-01T00:00:00.000000Z")
    state = store.finish_scan(KEY, 4.0, None)
    assert state.watermark == "2025-05-01T00:00:00.000000Z"
    assert state.last_full_scan_at == 2.0  # incremental scans do not count as full


def test_missing_rows_are_those_not_seen_by_the_current_scan(store: SqliteSnapshotStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write(r) for r in "abcd"], list("abcd"), None, None)
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(OTHER, "full", None, 1.0)
    store.commit_page(OTHER, [write("x")], ["x"], None, None)
    store.begin_scan(KEY, "full", None, 3.0)
    store.commit_page(KEY, [], ["a", "c"], "p2", None)  # unchanged rows: only marked seen
    assert store.count_missing(KEY) == (2, 4)
    assert [r.id for r in store.missing_rows(KEY, 10)] == ["b", "d"]
    store.begin_deletes(KEY)
    store.commit_deletes(KEY, ["b", "d"])
    assert store.count_missing(KEY) == (0, 2)
    assert store.state(OTHER).records == 1  # streams are independent


def test_reset_forgets_one_stream(store: SqliteSnapshotStore) -> None:
    for key in (KEY, OTHER):
        store.begin_scan(key, "full", None, 1.0)
        store.commit_page(key, [write("a")], ["a"], None, "2025-01-01T00:00:00.000000Z")
        store.finish_scan(key, 2.0, None)
    store.reset(KEY)
    assert store.state(KEY).watermark is None and store.state(KEY).records == 0
    assert store.state(OTHER).records == 1


def test_errors_are_recorded_and_cleared(store: SqliteSnapshotStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.record_error(KEY, "AuthError: 401", 5.0)
    assert store.state(KEY).last_error == "AuthError: 401"
    assert store.state(KEY).in_progress  # the scan stays resumable
    assert store.finish_scan(KEY, 6.0, None).last_error is None


def test_locked_database_is_a_state_store_error(
    sqlite_store: SqliteSnapshotStore, tmp_path: Path
) -> None:
    store = sqlite_store
    other = sqlite3.connect(tmp_path / "state" / "changefeed.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        store._db.execute("PRAGMA busy_timeout=100")
        with pytest.raises(StateStoreError, match="begin scan failed: database is locked"):
            store.begin_scan(KEY, "full", None, 1.0)
    finally:
        other.rollback()
        other.close()
    assert store.begin_scan(KEY, "full", None, 1.0).scan_number == 1


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StateStoreError, match="cannot open state store"):
        SqliteSnapshotStore(blocker / "x.db")


def test_postgres_claims_are_exclusive_between_replicas(pg_schema: str) -> None:
    from daemon.state.postgres import PostgresSnapshotStore

    first, second = PostgresSnapshotStore(pg_schema), PostgresSnapshotStore(pg_schema)
    try:
        assert first.claim(KEY) and first.claim(KEY)
        assert not second.claim(KEY)
        assert second.claim(OTHER)
        first.close()
        # A replica that dies releases its streams once the server notices the session end.
        deadline = time.monotonic() + 10
        while not second.claim(KEY):
            assert time.monotonic() < deadline, "the claim was never released"
            time.sleep(0.05)
    finally:
        first.close()
        second.close()


def test_postgres_url_never_shows_its_password() -> None:
    from daemon.state.postgres import PostgresSnapshotStore

    with pytest.raises(StateStoreError) as info:
        PostgresSnapshotStore("postgresql://postgres:pw-s3cret@127.0.0.1:1/test")
    assert "pw-s3cret" not in str(info.value)
