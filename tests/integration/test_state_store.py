"""The state store's contract, on a real SQLite file and on the machine's PostgreSQL.

Every test taking ``store`` runs against both databases: one implementation, one set of
expectations (ported from the former test_snapshot.py, test_snapshot_schema.py and the
store-level parts of test_postgres.py).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import LeaseLost, StateStoreError, StoredRowsFound
from daemon.models import Message, RejectWrite, RowWrite, StreamKey
from daemon.settings import StateSettings
from daemon.state import LoadedRow, SnapshotStore, StateStore, head_revision, open_store
from daemon.state.dialects import engine_url
from daemon.timestamps import normalize_time
from tests.harness import wait_until

KEY = StreamKey("acme", "enrollments")
OTHER = StreamKey("globex", "enrollments")


def write(rid: str, modified: str = "2025-01-01T00:00:00.000000Z", grade: int = 1) -> RowWrite:
    return RowWrite(rid, modified, f"h-{rid}-{grade}", {"id": rid, "grade": grade})


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives: a SQLite path or a PostgreSQL URL (a fresh schema)."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "changefeed.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def store(target: str):
    s = open_store(target)
    yield s
    s.close()


def count(store: StateStore, table: str) -> int:
    with store.backend.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_the_store_satisfies_the_protocol(store: StateStore) -> None:
    typed: SnapshotStore = store
    assert typed is store
    assert store.dialect in ("sqlite", "postgresql")


def test_page_commit_and_reload(store: StateStore, target: str) -> None:
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
    assert isinstance(rows["a"], LoadedRow)  # decoded lazily
    # The bytes the differ compares a new record's encoding with, on either database.
    assert type(rows["a"].blob) is bytes and rows["a"].blob == orjson.dumps(rows["a"].record)
    store.close()
    reopened = open_store(target)
    state = reopened.state(KEY)
    assert state.in_progress and state.scan_cursor == "c1" and state.records == 2
    done = reopened.finish_scan(KEY, 200.0, None)
    assert done.watermark == "2025-02-01T00:00:00.000000Z"
    assert done.last_full_scan_at == 200.0 and done.last_full_scan_started_at == 100.0
    assert not done.in_progress
    reopened.close()


def test_watermark_never_moves_back(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a")], ["a"], None, "2025-05-01T00:00:00.000000Z")
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(KEY, "incremental", "2025-04-30T00:00:00Z", 3.0)
    store.commit_page(KEY, [], [], None, "2025-01-01T00:00:00.000000Z")
    state = store.finish_scan(KEY, 4.0, None)
    assert state.watermark == "2025-05-01T00:00:00.000000Z"
    assert state.last_full_scan_at == 2.0  # incremental scans do not count as full


def test_missing_rows_are_those_not_seen_by_the_current_scan(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write(r) for r in "abcd"], list("abcd"), None, None)
    store.finish_scan(KEY, 2.0, None)
    store.begin_scan(OTHER, "full", None, 1.0)
    store.commit_page(OTHER, [write("x")], ["x"], None, None)
    store.begin_scan(KEY, "full", None, 3.0)
    store.commit_page(KEY, [], ["a", "c"], "p2", None)  # unchanged rows: only marked seen
    assert store.count_missing(KEY) == (2, 4)
    assert [r.id for r in store.missing_rows(KEY, 10)] == ["b", "d"]
    assert store.missing_rows(KEY, 10)[0].record == {"id": "b", "grade": 1}
    assert [r.id for r in store.missing_rows(KEY, 1)] == ["b"]
    state = store.begin_deletes(KEY)
    assert state.scan_phase == "deletes" and state.scan_cursor is None
    store.commit_deletes(KEY, ["b", "d"])
    assert store.count_missing(KEY) == (0, 2)
    assert store.state(OTHER).records == 1  # streams are independent


def test_rewritten_rows_replace_the_stored_ones(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a"), write("b")], ["a", "b"], None, None)
    store.begin_scan(KEY, "full", None, 2.0)
    store.commit_page(KEY, [write("a", grade=2)], ["a", "b"], None, None)
    rows = store.load_rows(KEY, ["a", "b"])
    assert rows["a"].content_hash == "h-a-2" and rows["a"].record["grade"] == 2
    assert store.count_missing(KEY) == (0, 2) and store.state(KEY).records == 2


def test_a_page_of_more_ids_than_one_statement_takes(store: StateStore) -> None:
    ids = [f"r{n:05d}" for n in range(1_203)]
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write(r) for r in ids], ids, None, None)
    assert len(store.load_rows(KEY, ids)) == len(ids)
    store.begin_scan(KEY, "full", None, 2.0)
    store.commit_page(KEY, [], ids[:700], None, None)
    assert store.count_missing(KEY) == (503, 1_203)
    store.commit_deletes(KEY, ids[700:])
    assert store.count_missing(KEY) == (0, 700)


def test_reset_forgets_one_stream(store: StateStore) -> None:
    for key in (KEY, OTHER):
        store.begin_scan(key, "full", None, 1.0)
        store.commit_page(key, [write("a")], ["a"], None, "2025-01-01T00:00:00.000000Z")
        store.finish_scan(key, 2.0, None)
    store.reset(KEY)
    assert store.state(KEY).watermark is None and store.state(KEY).records == 0
    assert store.state(OTHER).records == 1
    assert [s.key for s in store.states()] == [KEY, OTHER]


def test_deletes_and_reset_clear_the_scan_marks_too(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    writes = [RowWrite(r, "2025-01-01T00:00:00.000000Z", f"h{r}", {"id": r}) for r in "abc"]
    store.commit_page(KEY, writes, list("abc"), None, None)
    store.commit_deletes(KEY, ["b"])
    assert store.state(KEY).records == 2 and store.count_missing(KEY) == (0, 2)
    # One row of seen ids for the page, not one per record.
    assert count(store, "changefeed_scan_ids") == 1 and count(store, "changefeed_records") == 2
    store.reset(KEY)
    assert count(store, "changefeed_scan_ids") == 0


def test_errors_are_recorded_and_cleared(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.record_error(KEY, "AuthError: 401", 5.0)
    assert store.state(KEY).last_error == "AuthError: 401"
    assert store.state(KEY).last_error_at == 5.0
    assert store.state(KEY).in_progress  # the scan stays resumable
    assert store.finish_scan(KEY, 6.0, None).last_error is None


def test_abandoned_scan_keeps_the_watermark(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a")], ["a"], None, "2025-05-01T00:00:00.000000Z")
    store.finish_scan(KEY, 2.0, "guard: too many deletes")
    store.begin_scan(KEY, "incremental", None, 3.0)
    store.commit_page(KEY, [], ["a"], "c", "2026-01-01T00:00:00.000000Z")
    store.abandon_scan(KEY)
    state = store.state(KEY)
    assert not state.in_progress and state.scan_cursor is None and state.scan_pages == 0
    assert state.watermark == "2025-05-01T00:00:00.000000Z" and state.scan_number == 2
    assert state.delete_guard == "guard: too many deletes"


def test_outbox_holds_the_last_page_until_cleared(store: StateStore) -> None:
    messages = [
        Message("t.enrollments", b"a", b'{"id":"a"}', (("ce_id", b"1"), ("x", b"\x00\xff"))),
        Message("t.enrollments", b"b", None),  # a tombstone
    ]
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a")], ["a"], "c1", None, messages)
    assert store.pending(KEY) == messages
    store.commit_page(KEY, [], ["a"], "c2", None, messages[1:])  # replaces, never appends
    assert store.pending(KEY) == messages[1:]
    store.clear_pending(KEY)
    assert store.pending(KEY) == []
    store.commit_deletes(KEY, ["a"], messages[:1])
    assert store.pending(KEY) == messages[:1] and store.state(KEY).records == 0
    assert store.pending(OTHER) == []


def test_new_rows_commit_refuses_a_page_with_a_stored_row(store: StateStore) -> None:
    """An initial sync's page is diffed without loading and committed as new rows only:
    one row already stored and nothing of the page is committed (the walk reloads it)."""
    old = [Message("t.enrollments", b"a", b'{"id":"a"}')]
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [write("a")], ["a"], "c1", None, old, new_rows=True)
    before = store.state(KEY)
    page = [write(r, grade=2) for r in ("b", "a", "c")]
    new = [Message("t.enrollments", b"b", b'{"id":"b"}')]
    with pytest.raises(StoredRowsFound, match="1 of the page's 3 rows"):
        store.commit_page(KEY, page, ["b", "a", "c"], "c2", None, new, new_rows=True)
    after = store.state(KEY)
    assert (after.scan_cursor, after.scan_pages, after.records) == ("c1", 1, 1)
    assert after.scan_pages == before.scan_pages
    assert store.pending(KEY) == old  # the outbox is the last committed page's still
    assert set(store.load_rows(KEY, ["a", "b", "c"])) == {"a"}
    assert store.load_rows(KEY, ["a"])["a"].record == {"id": "a", "grade": 1}
    # Loaded and diffed again, the page commits as an ordinary upsert.
    store.commit_page(KEY, page, ["b", "a", "c"], "c2", None, new)
    rows = store.load_rows(KEY, ["a", "b", "c"])
    assert {r: rows[r].record["grade"] for r in rows} == {"a": 2, "b": 2, "c": 2}
    assert store.state(KEY).scan_cursor == "c2"


def test_a_conditional_clear_keeps_a_later_commits_outbox(store: StateStore) -> None:
    """The walk clears a sent page's outbox only where that page's commit left the scan: a
    later commit that failed on the wire but landed holds its own, unsent page there."""
    first = [Message("t.enrollments", b"a", b'{"id":"a"}')]
    later = [Message("t.enrollments", b"b", b'{"id":"b"}')]
    store.begin_scan(KEY, "full", None, 1.0)
    sent = store.commit_page(KEY, [write("a")], ["a"], "c1", None, first)
    store.commit_page(KEY, [write("b")], ["b"], "c2", None, later)  # "failed", yet landed
    store.clear_pending(KEY, at=(sent.scan_number, sent.scan_pages))
    assert store.pending(KEY) == later
    now = store.state(KEY)
    store.clear_pending(KEY, at=(now.scan_number, now.scan_pages))
    assert store.pending(KEY) == []


def test_claims_and_ping(store: StateStore) -> None:
    assert store.claim(KEY) and store.claim(KEY)
    store.ping()


def test_a_store_not_at_head_is_refused_without_auto_migrate(target: str) -> None:
    state = _state_settings(target, auto_migrate=False)
    with pytest.raises(StateStoreError, match="run `lms-changefeed migrate`"):
        open_store(state)
    with open_store(_state_settings(target)) as store:
        assert store.state(KEY).records == 0
    open_store(state).close()  # at head now: auto_migrate=false opens it
    from daemon.state import current_revision

    assert current_revision(state) == head_revision()


def _state_settings(target: str, **fields: object) -> StateSettings:
    if target.startswith("postgresql"):
        return StateSettings(url=target, **fields)
    return StateSettings(path=Path(target), **fields)


# ---- SQLite only -------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path):
    s = open_store(tmp_path / "state" / "changefeed.db")
    yield s
    s.close()


def test_sqlite_runs_in_wal_mode(sqlite_store: StateStore) -> None:
    with sqlite_store.backend.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_locked_database_is_a_state_store_error(sqlite_store: StateStore, tmp_path: Path) -> None:
    store = sqlite_store
    store.ping()
    with store.backend.transaction(read=True) as conn:
        conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(tmp_path / "state" / "changefeed.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
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
        open_store(blocker / "x.db")
    with pytest.raises(StateStoreError, match="cannot open state store"):
        open_store(StateSettings(path=blocker / "x.db"))


def test_worker_threads_share_one_sqlite_store(sqlite_store: StateStore) -> None:
    import threading

    keys = [StreamKey(f"c{n}", "enrollments") for n in range(4)]
    failures: list[BaseException] = []

    def work(key: StreamKey) -> None:
        try:
            for scan in range(5):
                sqlite_store.begin_scan(key, "full", None, float(scan))
                sqlite_store.commit_page(key, [write(f"{key.connector}-{scan}")], [], None, None)
                sqlite_store.load_rows(key, [f"{key.connector}-{scan}"])
                sqlite_store.finish_scan(key, float(scan), None)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert [s.records for s in sqlite_store.states()] == [5] * 4


# ---- PostgreSQL only ---------------------------------------------------------------


def test_postgres_claims_are_exclusive_between_replicas(pg_schema: str) -> None:
    first, second = open_store(pg_schema), open_store(pg_schema)
    try:
        assert first.claim(KEY) and first.claim(KEY)
        assert not second.claim(KEY)
        assert second.claim(OTHER)
        first.close()
        # Closing gives the leases back at once (a dead replica's expire: test_state_leases).
        assert second.claim(KEY)
    finally:
        first.close()
        second.close()


def test_a_reset_during_a_page_commit_is_no_deadlock(pg_schema: str) -> None:
    """``reset`` takes the stream's lease first and its row last; a page's commit must
    lock them in that order too. Here the reset has dropped the lease when the commit
    comes: the commit waits for the lease's row, holding nothing the reset needs, and
    ends with LeaseLost once the reset commits (the other order: a deadlock)."""
    store = open_store(pg_schema)
    try:
        assert store.claim(KEY)
        store.begin_scan(KEY, "full", None, 1.0)
        with psycopg.connect(pg_schema) as reset, psycopg.connect(pg_schema) as watch:
            reset.execute("DELETE FROM changefeed_leases")  # reset's first step, uncommitted
            outcome: dict[str, BaseException | None] = {}

            def commit() -> None:
                try:
                    store.commit_page(KEY, [write("a")], ["a"], "c1", None)
                    outcome["error"] = None
                except BaseException as exc:
                    outcome["error"] = exc

            committing = threading.Thread(target=commit)
            committing.start()
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            wait_until(lambda: watch.execute(waiting).fetchone()[0] > 0, 10, "the commit waiting")
            # reset's last step: the stream's row, free (the commit has not locked it).
            reset.execute("UPDATE changefeed_streams SET scan_cursor = NULL")
            reset.commit()
            committing.join(10)
        assert isinstance(outcome["error"], LeaseLost), outcome
        assert store.load_rows(KEY, ["a"]) == {}
    finally:
        store.close()


def test_postgres_url_never_shows_its_password() -> None:
    url = "postgresql://postgres:pw-s3cret@127.0.0.1:1/test"
    with pytest.raises(StateStoreError) as info:
        open_store(url)
    assert "pw-s3cret" not in str(info.value)
    assert "127.0.0.1:1/test" in str(info.value)
    with pytest.raises(StateStoreError) as info:
        open_store(StateSettings(url=url))
    assert "pw-s3cret" not in str(info.value)
    with pytest.raises(StateStoreError) as info:
        open_store("postgresql://postgres:pw-s3cret@[bad")
    assert "pw-s3cret" not in str(info.value)


def test_postgres_store_repr_and_errors_hide_the_password(pg_schema: str) -> None:
    parts = urlsplit(pg_schema)
    where = f"{parts.hostname}:{parts.port or 5432}"
    # trust auth ignores the password
    url = pg_schema.replace(parts.netloc, f"{parts.username}:pw-s3cret@{where}", 1)
    store = open_store(url)
    try:
        assert "pw-s3cret" not in repr(store) and f"{where}{parts.path}" in repr(store)
        store.backend.engine.dispose()
        assert "pw-s3cret" not in repr(store.backend.engine)
    finally:
        store.close()


@pytest.mark.parametrize("written", ["postgresql://u:p@h:5432/db", "postgres://u:p@h:5432/db"])
def test_postgres_urls_as_users_write_them_use_psycopg_3(written: str) -> None:
    url = engine_url(written)
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.password) == ("h", 5432, "db", "p")


# ---- the timestamp fast path the scan relies on (ex test_snapshot_schema.py) --------


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


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_multi_row_inserts_take_the_rows_values_in_order(dialect: str, tmp_path: Path) -> None:
    """``_Tx.values`` flattens rows: the compiled SQL must take them row by row, in order."""
    from daemon.state import snapshots
    from daemon.state.dialects import PostgresBackend, SqliteBackend

    backend = (
        SqliteBackend(tmp_path / "x.db")
        if dialect == "sqlite"
        else PostgresBackend(engine_url("postgresql://u@127.0.0.1:1/db"))
    )
    try:
        store = StateStore(backend)
        for builder, columns in ((store._upsert_records, snapshots.RECORD_COLUMNS),):
            names = store._compile(builder, 3).names
            assert names == tuple(f"r{n:05d}_{c}" for n in range(3) for c in columns)
    finally:
        backend.close()


# ---- poison records: the dead-lettered contents ---------------------------------------------


def reject(fingerprint: str, record_id: str | None, first_seen: float = 1.0) -> RejectWrite:
    return RejectWrite(fingerprint, "no_id", record_id, first_seen)


def test_rejected_contents_commit_with_the_page_and_are_known_after(
    store: StateStore, target: str
) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    letter = Message("dlq", b"f1", b"{}", ())
    store.commit_page(
        KEY, [write("a")], ["a"], "c1", None, [letter], [reject("f1", None), reject("f2", "b")]
    )
    assert store.pending(KEY) == [letter]  # the dead letter waits in the outbox like events
    assert store.known_rejections(KEY, ["f1", "f2", "f3"]) == {"f1": None, "f2": "b"}
    assert store.known_rejections(OTHER, ["f1"]) == {}
    assert store.known_rejections(KEY, []) == {}
    assert store.rejected_count(KEY) == 2 and store.rejected_count(OTHER) == 0
    assert store.count_unidentified(KEY) == 1
    store.close()
    reopened = open_store(target)
    # Seen again by a later scan: the first sighting stays, a record id found later is kept.
    reopened.begin_scan(KEY, "incremental", None, 2.0)
    assert reopened.count_unidentified(KEY) == 0  # f1 belongs to the previous scan
    reopened.commit_page(KEY, [], [], None, None, (), [reject("f1", "a", 9.0)])
    assert reopened.known_rejections(KEY, ["f1"]) == {"f1": "a"}
    reopened.commit_page(KEY, [], [], None, None, (), [reject("f1", None, 9.0)])
    assert reopened.known_rejections(KEY, ["f1"]) == {"f1": "a"}  # not forgotten
    with reopened.backend.engine.connect() as conn:
        first_seen = conn.execute(
            sa.text("SELECT first_seen FROM changefeed_rejected WHERE fingerprint = 'f1'")
        ).scalar_one()
    assert first_seen == 1.0
    reopened.close()


def test_a_full_scan_forgets_the_contents_it_no_longer_meets(store: StateStore) -> None:
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, [], [], None, None, (), [reject("f1", None), reject("f2", "b")])
    store.finish_scan(KEY, 2.0, None)
    assert store.rejected_count(KEY) == 2
    store.begin_scan(KEY, "incremental", None, 3.0)
    store.commit_page(KEY, [], [], None, None)
    store.finish_scan(KEY, 4.0, None)
    assert store.rejected_count(KEY) == 2  # an incremental scan sees only changes
    store.begin_scan(KEY, "full", None, 5.0)
    store.commit_page(KEY, [], [], None, None, (), [reject("f2", "b")])
    store.finish_scan(KEY, 6.0, None)
    assert store.known_rejections(KEY, ["f1", "f2"]) == {"f2": "b"}  # f1 was fixed
    store.reset(KEY)
    assert store.rejected_count(KEY) == 0


@pytest.mark.parametrize("remote_id", ["LMS-7", "50%_off", 'quo"te', "back\\slash", "ünï"])
def test_rows_are_found_by_remote_id(store: StateStore, remote_id: str) -> None:
    rows = [
        RowWrite("a", "2025-01-01T00:00:00.000000Z", "h", {"id": "a", "remote_id": remote_id}),
        # Near misses: another value, the value in another field, a wildcard's match.
        RowWrite("b", "2025-01-01T00:00:00.000000Z", "h", {"id": "b", "remote_id": "LMS-70"}),
        RowWrite("c", "2025-01-01T00:00:00.000000Z", "h", {"id": "c", "name": remote_id}),
        RowWrite("d", "2025-01-01T00:00:00.000000Z", "h", {"id": "d", "remote_id": "50x_off"}),
    ]
    store.begin_scan(KEY, "full", None, 1.0)
    store.commit_page(KEY, rows, [r.id for r in rows], None, None)
    assert store.find_remote_ids(KEY, [remote_id, "absent"]) == {remote_id: "a"}
    assert store.find_remote_ids(OTHER, [remote_id]) == {}
