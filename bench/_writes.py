"""What a pass writes to the state store: rows, WAL and dead tuples, for either store.

A probe brackets one daemon process (``begin`` before it starts, ``end`` after it
exited) and reads the store from outside:

- PostgreSQL: ``pg_stat_user_tables`` deltas over the store's schema (n_tup_ins, _upd,
  _del, n_dead_tup), and ``pg_current_wal_lsn()`` before and after. A backend flushes its
  table statistics when it exits, so ``end`` first waits until no session of the daemon
  (its ``application_name``, set by the bench) is left, then until two reads of the
  counters agree. WAL is cluster-wide and the server is shared: with ``pg_walinspect``
  the records of the range are read back and only those touching the store's relations
  (tables, indexes, TOAST), or written by a transaction that did (its commit record),
  are counted; the raw LSN difference is kept beside it. ``begin`` runs a CHECKPOINT first,
  as a scan long after the previous one would follow one: each page it changes is then
  logged whole once (full-page images), whatever the timing of the server's own.
- SQLite keeps no such statistics, and ``total_changes`` lives in the writer's own
  connection. ``begin`` installs AFTER INSERT/UPDATE/DELETE triggers on every table of
  the store that count rows into a side table (UPSERTs fire the trigger of what they did,
  as PostgreSQL counts them); ``end`` reads and removes both. The triggers slow the pass,
  so a probed pass is never one of the timed ones.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from _storage import Workspace, connect, wait_until

OPS = ("ins", "upd", "del")
_SIDE = "bench_write_counts"
_WALINSPECT_MAX = 1 << 30  # WAL ranges larger than this are not read back
# The files of every relation of a schema: tables, indexes, sequences, TOAST and its index.
_FILENODES = """
SELECT pg_relation_filenode(c.oid) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s
UNION SELECT pg_relation_filenode(c.reltoastrelid) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s AND c.reltoastrelid <> 0
UNION SELECT pg_relation_filenode(i.indexrelid) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_index i ON i.indrelid = c.reltoastrelid
  WHERE n.nspname = %(s)s AND c.reltoastrelid <> 0
"""


class Probe(Protocol):
    def begin(self) -> None: ...
    def end(self) -> dict[str, Any]: ...
    def at_rest(self) -> dict[str, Any]: ...


def probe_for(ws: Workspace, state: Path) -> Probe:
    """The probe for the store called ``state`` in ``ws``."""
    if ws.state_url is None:
        return SqliteProbe(state)
    return PostgresProbe(ws.state_url, ws.schema(state))


def per_record(figures: dict[str, Any], n: int) -> dict[str, Any]:
    """A probe's ``end`` figures, per record of a scan of ``n``."""

    def per(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(value / n, digits)

    return {
        "rows_written_per_record": per(figures["rows_written"]),
        "wal_bytes_per_record": per(figures.get("wal_bytes"), 1),
        "dead_tuples_per_record": per(figures.get("dead_tuples_added")),
    }


class SqliteProbe:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._tables: list[str] = []

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def begin(self) -> None:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._tables = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' AND name <> ? ORDER BY name",
                    (_SIDE,),
                )
            ]
            conn.execute(
                f"CREATE TABLE {_SIDE} (tbl TEXT, op TEXT, n INTEGER NOT NULL, "
                "PRIMARY KEY (tbl, op))"
            )
            for i, table in enumerate(self._tables):
                for op, event in zip(OPS, ("INSERT", "UPDATE", "DELETE"), strict=True):
                    conn.execute(f"INSERT INTO {_SIDE} VALUES (?, ?, 0)", (table, op))
                    conn.execute(
                        f'CREATE TRIGGER bench_w{i}_{op} AFTER {event} ON "{table}" BEGIN '
                        f"UPDATE {_SIDE} SET n = n + 1 WHERE tbl = '{table}' AND op = '{op}'; "
                        "END"
                    )
            conn.execute("COMMIT")
        finally:
            conn.close()

    def end(self) -> dict[str, Any]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows: dict[str, dict[str, int]] = {}
            for table, op, n in conn.execute(f"SELECT tbl, op, n FROM {_SIDE}"):
                rows.setdefault(table, {})[op] = n
            for i in range(len(self._tables)):
                for op in OPS:
                    conn.execute(f"DROP TRIGGER bench_w{i}_{op}")
            conn.execute(f"DROP TABLE {_SIDE}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        return {
            "how": "AFTER INSERT/UPDATE/DELETE triggers counting into a side table",
            "rows": rows,
            "rows_written": sum(sum(per.values()) for per in rows.values()),
            "wal_bytes": None,
            "dead_tuples_added": None,
        }

    def at_rest(self) -> dict[str, Any]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        finally:
            conn.close()
        return {"dead_tuples": None, "page_size": page, "pages": pages, "freelist_pages": free}


class PostgresProbe:
    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._before: dict[str, tuple[int, ...]] = {}
        self._lsn = ""
        self._checkpoints = 0
        self._checkpoint_age = 0.0
        self._slot: Any = None

    # pg_stat_user_tables columns, in this order, per table of the schema
    _COLUMNS = (
        "n_tup_ins",
        "n_tup_upd",
        "n_tup_hot_upd",
        "n_tup_del",
        "n_dead_tup",
        "n_live_tup",
        "autovacuum_count",
        "vacuum_count",
        "autoanalyze_count",
    )

    def _counters(self, conn: Any) -> dict[str, tuple[int, ...]]:
        rows = conn.execute(
            f"SELECT relname, {', '.join(self._COLUMNS)} FROM pg_stat_user_tables "
            "WHERE schemaname = %s ORDER BY relname",
            (self.schema,),
        ).fetchall()
        return {row[0]: tuple(int(v) for v in row[1:]) for row in rows}

    def _settled(self, conn: Any) -> dict[str, tuple[int, ...]]:
        """The counters once the daemon's sessions ended and their statistics were flushed."""
        daemons = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s"
        )
        wait_until(
            lambda: conn.execute(daemons, (self.schema,)).fetchone()[0] == 0,
            60,
            "the daemon's sessions to end",
        )
        last: list[dict[str, tuple[int, ...]]] = [{}]

        def stable() -> bool:
            current = self._counters(conn)
            same, last[0] = current == last[0], current
            return same

        wait_until(stable, 10, "the statistics to settle", step=0.05)
        return last[0]

    def _checkpoint_count(self, conn: Any) -> int:
        row = conn.execute(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        ).fetchone()
        return int(row[0])

    def begin(self) -> None:
        with connect(self.url) as conn:
            self._before = self._settled(conn)
            # As for a scan hours after the last one (a daily sync): a checkpoint lies
            # between, so every page the scan changes is logged whole once. Without it the
            # figure depends on whether a timed checkpoint fell since the previous scan.
            conn.execute("CHECKPOINT")
        # Keep the scan's WAL until it is read back: any checkpoint during the scan (the
        # server's, or one asked for by someone else's work) may otherwise recycle it. A
        # temporary slot, held by a session of its own: it goes when the session does,
        # even if the bench dies.
        self._slot = connect(self.url)
        self._slot.execute(
            "SELECT pg_create_physical_replication_slot(%s, true, true)", (self.schema,)
        )
        with connect(self.url) as conn:
            self._lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            self._checkpoints = self._checkpoint_count(conn)
            age = "SELECT extract(epoch FROM now() - checkpoint_time) FROM pg_control_checkpoint()"
            self._checkpoint_age = float(conn.execute(age).fetchone()[0])

    def end(self) -> dict[str, Any]:
        with connect(self.url) as conn:
            after = self._settled(conn)
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            wal = int(
                conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn, self._lsn)).fetchone()[0]
            )
            own_error = None
            try:
                own = self._own_wal(conn, self._lsn, lsn, wal)
            except Exception as exc:  # the figure falls back to the LSN difference
                own, own_error = None, f"{type(exc).__name__}: {exc}"
            finally:
                if self._slot is not None:
                    self._slot.close()
                    self._slot = None
            checkpoints = self._checkpoint_count(conn) - self._checkpoints
        delta = {
            table: [
                a - b for a, b in zip(now, self._before.get(table, (0,) * len(now)), strict=True)
            ]
            for table, now in after.items()
        }
        col = {name: i for i, name in enumerate(self._COLUMNS)}
        rows = {
            table: {
                "ins": d[col["n_tup_ins"]],
                "upd": d[col["n_tup_upd"]],
                "hot_upd": d[col["n_tup_hot_upd"]],
                "del": d[col["n_tup_del"]],
            }
            for table, d in delta.items()
        }
        return {
            "how": "pg_stat_user_tables deltas, read after the daemon's sessions ended",
            "rows": rows,
            "rows_written": sum(r["ins"] + r["upd"] + r["del"] for r in rows.values()),
            "wal_bytes": own["bytes"] if own else wal,
            "wal_bytes_lsn_diff": wal,
            "wal_own": own,
            "wal_own_error": own_error,
            "checkpoints_during": checkpoints,
            # A page's first change after a checkpoint is logged whole (full_page_writes):
            # ``begin`` checkpoints, so this is the age of its own checkpoint.
            "last_checkpoint_age_s_before": round(self._checkpoint_age, 1),
            "dead_tuples_added": sum(d[col["n_dead_tup"]] for d in delta.values()),
            "autovacuum_runs": sum(d[col["autovacuum_count"]] for d in delta.values()),
        }

    def _own_wal(self, conn: Any, start: str, end: str, span: int) -> dict[str, Any] | None:
        """WAL records of [start, end) that touch this database, or that a transaction
        touching it wrote (its commit record); None without pg_walinspect."""
        if span > _WALINSPECT_MAX:
            return None
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except Exception:
            return None
        flushed = "SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), %s) >= 0"
        wait_until(lambda: conn.execute(flushed, (end,)).fetchone()[0], 10, "the WAL flush")
        dboid = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        nodes = [str(node) for (node,) in conn.execute(_FILENODES, {"s": self.schema}) if node]
        ours = rf" rel \d+/{dboid}/({'|'.join(nodes)}) "
        row = conn.execute(
            "WITH r AS (SELECT xid::text AS x, record_length, fpi_length, block_ref "
            "FROM pg_get_wal_records_info(%s, %s)), "
            "tx AS (SELECT DISTINCT x FROM r WHERE x <> '0' AND block_ref ~ %s) "
            "SELECT count(*), coalesce(sum(record_length), 0), coalesce(sum(fpi_length), 0) "
            "FROM r WHERE block_ref ~ %s OR x IN (SELECT x FROM tx)",
            (start, end, ours, ours),
        ).fetchone()
        return {"records": int(row[0]), "bytes": int(row[1]), "fpi_bytes": int(row[2])}

    def at_rest(self) -> dict[str, Any]:
        with connect(self.url) as conn:
            now = self._settled(conn)
        col = {name: i for i, name in enumerate(self._COLUMNS)}
        return {
            "dead_tuples": sum(c[col["n_dead_tup"]] for c in now.values()),
            "live_tuples": sum(c[col["n_live_tup"]] for c in now.values()),
            "autovacuum_runs": sum(c[col["autovacuum_count"]] for c in now.values()),
            "vacuum_runs": sum(c[col["vacuum_count"]] for c in now.values()),
            "autoanalyze_runs": sum(c[col["autoanalyze_count"]] for c in now.values()),
            "per_table": {
                table: {
                    "n_dead_tup": c[col["n_dead_tup"]],
                    "n_live_tup": c[col["n_live_tup"]],
                    "autovacuum_count": c[col["autovacuum_count"]],
                }
                for table, c in now.items()
            },
        }
