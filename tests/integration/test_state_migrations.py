"""Alembic migrations: stores written by 0.1.0 upgrade in place, nothing lost, nothing re-sent.

The fixtures under tests/fixtures/state-0.1.0 were written by the 0.1.0 code itself
(make_fixtures.py there): a SQLite file and a PostgreSQL dump, each with a completed
scan on globex/enrollments and, on acme/enrollments, an initial sync stuck after page 2
with page 2's 100 ``created`` messages in the outbox, never sent.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bindbee_sim import SimServer
from daemon.models import StreamKey
from daemon.runtime import Runtime
from daemon.settings import StateSettings, load_settings
from daemon.state import current_revision, head_revision, migrate, open_store
from tests.harness import cli
from tests.kafka_read import read_topic

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state-0.1.0"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import SIM, TOPICS  # noqa: E402

ACME, GLOBEX = StreamKey("acme", "enrollments"), StreamKey("globex", "enrollments")
STREAM_COLUMNS = (
    "sid, connector, model, watermark, scan_number, scan_kind, scan_phase, scan_cursor, "
    "scan_pages, scan_since, scan_started_at, scan_max_modified, last_full_scan_started_at, "
    "last_full_scan_at, last_scan_at, delete_guard, last_error, last_error_at"
)


def _rows(url: str, sql: str) -> list[tuple]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return sorted(
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(sa.text(sql))
            )
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _snapshot(url: str, prefix: str, seen_from_records: bool) -> dict[str, list[tuple]]:
    """Everything a store holds, read with plain SQL (before the upgrade): the marks are
    those of the full scans in progress, all that 0005 keeps of them."""
    marks = f"{prefix}records" if seen_from_records else f"{prefix}seen"
    seen = (
        f"SELECT s.sid, s.id FROM {marks} s JOIN {prefix}streams t ON t.sid = s.sid "
        "WHERE s.scan = t.scan_number AND t.scan_phase IS NOT NULL AND t.scan_kind = 'full'"
    )
    return {
        "streams": _rows(url, f"SELECT {STREAM_COLUMNS} FROM {prefix}streams"),
        "records": _rows(url, f"SELECT sid, id, modified_at, hash, record FROM {prefix}records"),
        "seen": _rows(url, seen),
        "outbox": _rows(url, f"SELECT sid, seq, topic, key, value, headers FROM {prefix}outbox"),
    }


def _upgraded(url: str) -> dict[str, list[tuple]]:
    """The same, read from a store at 0005 or later (packed hashes, seen ids per page)."""
    from daemon.state import dump_headers
    from daemon.state.codec import unpack_hash, unpack_messages

    ids = _rows(url, "SELECT sid, ids FROM changefeed_scan_ids WHERE ids IS NOT NULL")
    records = "SELECT sid, id, modified_at, hash, record FROM changefeed_records"
    return {
        "streams": _rows(url, f"SELECT {STREAM_COLUMNS} FROM changefeed_streams"),
        "records": sorted((s, i, m, unpack_hash(h), r) for s, i, m, h, r in _rows(url, records)),
        "seen": sorted((sid, rid) for sid, blob in ids for rid in orjson.loads(blob)),
        "outbox": sorted(
            (sid, seq, m.topic, m.key, m.value, dump_headers(m.headers))
            for sid, blob in _rows(url, "SELECT sid, messages FROM changefeed_outbox")
            for seq, m in enumerate(unpack_messages(blob))
        ),
    }


def _sqlite_fixture(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "state.db"
    shutil.copy(FIXTURES / "sqlite.db", path)
    return path, f"sqlite:///{path}"


def _postgres_fixture(url: str) -> str:
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(FIXTURES / "postgres.sql")],
        check=True,
        capture_output=True,
    )
    return url


def test_the_sqlite_010_store_upgrades_in_place(tmp_path: Path) -> None:
    path, url = _sqlite_fixture(tmp_path)
    before = _snapshot(url, "", seen_from_records=False)
    assert len(before["records"]) == 500 and len(before["outbox"]) == 100
    assert current_revision(path) is None
    assert migrate(path) == head_revision()
    assert _upgraded(url) == before
    assert "meta" not in _tables(url) and current_revision(path) == head_revision()
    assert migrate(path) == head_revision()  # again: nothing to do
    with open_store(path) as store:
        _check_story(store)


def test_the_postgres_010_store_upgrades_in_place(pg_database: str) -> None:
    url = _postgres_fixture(pg_database)
    before = _snapshot(url, "changefeed_", seen_from_records=True)
    assert len(before["records"]) == 500 and len(before["outbox"]) == 100
    assert migrate(url) == head_revision()
    assert _upgraded(url) == before
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        columns = {c["name"] for c in sa.inspect(engine).get_columns("changefeed_records")}
    finally:
        engine.dispose()
    assert "scan" not in columns
    with open_store(url) as store:
        _check_story(store)


def _check_story(store) -> None:
    globex, acme = store.state(GLOBEX), store.state(ACME)
    assert globex.records == 300 and globex.watermark and globex.last_full_scan_at
    assert not globex.in_progress
    assert acme.in_progress and acme.scan_pages == 2 and acme.scan_cursor and acme.records == 200
    assert store.count_missing(ACME) == (0, 200)
    assert len(store.pending(ACME)) == 100 and store.pending(GLOBEX) == []


# What schema 1 (records.scan) of the 0.1.0 SQLite store looked like on disk.
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


def test_a_schema_1_sqlite_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_1)
    store = open_store(path)  # auto_migrate is the default
    try:
        state = store.state(ACME)
        assert state.in_progress and state.scan_cursor == "p2" and state.records == 4
        # The scan in progress (number 2) saw a and c: b and d are still missing.
        assert store.count_missing(ACME) == (2, 4)
        assert [row.id for row in store.missing_rows(ACME, 10)] == ["b", "d"]
        assert store.load_rows(ACME, ["a"])["a"].record == {"id": "a"}
        store.commit_page(ACME, [], ["b"], None, None)
        assert store.count_missing(ACME) == (1, 4)
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "meta" not in tables and "changefeed_scan_ids" in tables
        columns = [row[1] for row in conn.execute("PRAGMA table_info(changefeed_records)")]
        assert "scan" not in columns
        (revision,) = conn.execute("SELECT version_num FROM changefeed_alembic_version").fetchone()
        assert revision == head_revision()
    open_store(path).close()  # opening a migrated store again changes nothing


def test_an_unknown_010_schema_version_is_refused(tmp_path: Path) -> None:
    from daemon.errors import StateStoreError

    path = tmp_path / "odd.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_1.replace("'schema_version', '1'", "'schema_version', '7'"))
    with pytest.raises(StateStoreError, match="schema_version '7'"):
        migrate(path)
    with sqlite3.connect(path) as conn:  # rolled back: still the old store
        assert conn.execute("SELECT value FROM meta").fetchone() == ("7",)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_replicas_migrating_together_upgrade_once(backend: str, tmp_path: Path, request) -> None:
    if backend == "sqlite":
        path, url = _sqlite_fixture(tmp_path)
        target: object = path
    else:
        url = target = _postgres_fixture(request.getfixturevalue("pg_database"))
    results: list[object] = []

    def run() -> None:
        try:
            results.append(migrate(target))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [head_revision()] * 4
    assert len(_rows(url, "SELECT * FROM changefeed_records")) == 500


# ---- the upgraded store in a real pass ---------------------------------------------


def _feed_settings(sim: SimServer, broker, state: dict, template: str):
    return load_settings(
        None,
        bindbee={
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "page_size": 100,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 0.1,
        },
        connectors=[{"name": n, "token": t} for n, t in SIM["connectors"].items()],
        models={"enrollments": {"lookback_seconds": 0}},
        kafka={"bootstrap_servers": broker.bootstrap, "topic_template": template},
        state=state,
        http={"enabled": False},
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_upgraded_store_sends_its_outbox_once_and_nothing_twice(
    backend: str, broker, tmp_path: Path, request
) -> None:
    if backend == "sqlite":
        path, _ = _sqlite_fixture(tmp_path)
        state: dict = {"path": str(path)}
    else:
        state = {"url": _postgres_fixture(request.getfixturevalue("pg_database"))}
    template = TOPICS[backend]
    with SimServer(**SIM) as sim:
        settings = _feed_settings(sim, broker, state, template)
        with open_store(StateSettings(**state)) as store:  # the upgrade happens here
            outbox = [orjson.loads(m.value) for m in store.pending(ACME)]
        assert len(outbox) == 100
        runtime = Runtime.open(settings)
        try:
            by_key = {p.key: p for p in runtime.passes()}
            acme = by_key[ACME].run()
            globex = by_key[GLOBEX].run(force_full=True)
            assert acme.completed and acme.resumed
            assert (acme.stats.created, acme.stats.pages) == (100, 1)  # only page 3 was new
            assert globex.stats.unchanged == 300 and globex.stats.created == 0
            assert runtime.store.state(ACME).records == runtime.store.state(GLOBEX).records == 300
            assert runtime.store.pending(ACME) == []
        finally:
            runtime.close()
        ids = sim.ids("acme", "enrollments")
    topic = settings.kafka.topic_for("acme", "enrollments")
    events = [orjson.loads(r.value) for r in read_topic(broker.bootstrap, topic, expected=200)]
    per_id = Counter(e["id"] for e in events)
    assert all(per_id[e["id"]] == 1 for e in outbox)  # the outbox went out exactly once
    assert set(per_id.values()) == {1} and len(events) == 200
    # Page 2 (the outbox) and page 3 (new): nothing of page 1 or of globex came again.
    assert sorted(e["subject"] for e in events) == sorted(ids[100:300])
    assert {e["subject"] for e in outbox} == set(ids[100:200])


# ---- the CLI ---------------------------------------------------------------------


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--config", str(config), timeout=120)


def test_migrate_command_and_status_revision(tmp_path: Path) -> None:
    import yaml

    path, _ = _sqlite_fixture(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "bindbee": {"base_url": "http://127.0.0.1:1", "api_key": "k"},
                "connectors": [{"name": "acme", "token": "t"}],
                "models": {"enrollments": {}},
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},
                "state": {"path": str(path), "auto_migrate": False},
                "http": {"enabled": False},
            }
        )
    )
    status = _cli("status", config=config)
    # Unmigrated: a refusal (exit 2), one line naming the fix.
    assert status.returncode == 2 and "schema revision none" in status.stderr
    assert "lms-changefeed migrate" in status.stderr
    poll = _cli("poll", config=config)  # auto_migrate is false: refuses, names the fix
    assert poll.returncode == 1 and "run `lms-changefeed migrate`" in poll.stderr
    migrated = _cli("migrate", config=config)
    assert migrated.returncode == 0, migrated.stderr
    assert f"none -> {head_revision()}" in migrated.stdout
    again = _cli("migrate", config=config)
    assert again.returncode == 0 and f"already at schema revision {head_revision()}" in again.stdout
    status = _cli("status", config=config)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"schema revision: {head_revision()}" in status.stdout
    assert "acme/enrollments" in status.stdout and "globex/enrollments" in status.stdout


def test_the_head_constant_is_alembics_head() -> None:
    # The store checks its revision without importing Alembic: the constant must follow.
    from daemon.state.migration import HEAD_REVISION, script_head

    assert script_head() == HEAD_REVISION
