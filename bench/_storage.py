"""Where the daemon's state lives during a benchmark, and what it takes on disk.

``Workspace`` holds a case's files; its stores are SQLite files, or (with ``state_url``)
one fresh schema per store in a PostgreSQL database. ``BenchDatabase`` creates that
database for a run and drops it after. Sizes count every table of the daemon, indexes
and TOAST included, and never VACUUM anything.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def connect(url: str) -> Any:
    """An autocommit psycopg connection (each statement sees fresh statistics)."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


@dataclass
class Workspace:
    """A temporary directory for state files, configs and logs; removed at exit.

    With ``state_url`` (a PostgreSQL URL) every state "file" a case names becomes a
    fresh schema in that database instead (dropped at exit), so the same cases measure
    the PostgreSQL store.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lms-bench-")))
    state_url: str | None = None
    _schemas: dict[Path, str] = field(default_factory=dict)

    @property
    def store(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self.state_url is None else "postgresql"

    def path(self, name: str) -> Path:
        return self.root / name

    def schema(self, state: Path) -> str:
        """The PostgreSQL schema standing for the store called ``state`` (created once)."""
        assert self.state_url is not None
        schema = self._schemas.get(state)
        if schema is None:
            schema = self._schemas[state] = f"bench_{uuid.uuid4().hex[:10]}"
            with connect(self.state_url) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")
        return schema

    def state_config(self, state: Path) -> dict[str, Any]:
        """The ``state`` section for the store called ``state``."""
        if self.state_url is None:
            return {"path": str(state)}
        glue = "&" if "?" in self.state_url else "?"
        schema = self.schema(state)
        # application_name: the bench tells the daemon's sessions from anyone else's
        # (bench/_writes.py waits for them to end before reading their statistics).
        query = f"options=-csearch_path%3D{schema}&application_name={schema}"
        return {"url": f"{self.state_url}{glue}{query}"}

    def state_size(self, state: Path) -> int:
        """Bytes of the store: the SQLite file plus any WAL, or the schema's relations."""
        return sum(self.state_sizes(state).values())

    def state_sizes(self, state: Path) -> dict[str, int]:
        """Bytes per file (SQLite) or per table with its indexes and TOAST (PostgreSQL)."""
        if self.state_url is None:
            return sqlite_sizes(state)
        with connect(self.state_url) as admin:
            rows = admin.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm') ORDER BY 1",
                (self._schemas[state],),
            ).fetchall()
        return {name: int(size) for name, size in rows}

    def cleanup(self) -> None:
        if self.state_url is not None and self._schemas:
            with connect(self.state_url) as admin:
                for schema in self._schemas.values():
                    admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        shutil.rmtree(self.root, ignore_errors=True)


def sqlite_sizes(path: Path) -> dict[str, int]:
    """The SQLite database file and its WAL (if any), in bytes."""
    files = (path, Path(f"{path}-wal"))
    return {p.name: p.stat().st_size for p in files if p.exists()}


def state_size(path: Path) -> int:
    """Bytes of the SQLite store: the database plus any WAL left behind."""
    return sum(sqlite_sizes(path).values())


class BenchDatabase:
    """A fresh PostgreSQL database for one bench run, created on ``admin_url``'s server
    and dropped at exit. Its name is unique per run (``changefeed_bench_<hex>``), so two
    people benchmarking on one server never drop each other's database."""

    def __init__(self, admin_url: str = PG_ADMIN_URL, name: str | None = None) -> None:
        self.admin_url = admin_url
        self.name = name or f"changefeed_bench_{uuid.uuid4().hex[:8]}"
        self.url = admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def __enter__(self) -> str:
        with connect(self.admin_url) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {self.name}")
        return self.url

    def __exit__(self, *exc_info: object) -> None:
        with connect(self.admin_url) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def server_settings(url: str) -> dict[str, str]:
    """The server settings that bear on the write figures (recorded beside them)."""
    names = (
        "server_version",
        "autovacuum",
        "synchronous_commit",
        "full_page_writes",
        "checkpoint_timeout",
        "wal_compression",
    )
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
    return dict(rows)


def wait_until(condition: Any, timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``condition()`` until true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(step)
