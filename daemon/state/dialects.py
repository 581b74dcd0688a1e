"""What differs between SQLite and PostgreSQL: engines, pools and the migration lock.

Everything else (the statements, the transactions, the migrations) is written once
against ``schema.metadata``; a ``Backend`` supplies only the parts below.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import StaticPool

from daemon.errors import StateStoreError, StoreMissing

# Advisory lock keys live in one shared namespace: tag ours. Key (namespace, 0) guards
# migrations (0.1.0 used it around CREATE TABLE, and (namespace, sid) to claim a stream
# for the life of a process: leases in the store replaced those).
LOCK_NAMESPACE = 0x4C4D5343  # "LMSC"


class Backend:
    """One database: its engine, how it names itself in errors, its migration lock."""

    name: str
    engine: Engine
    where: str  # for messages and repr: never a password
    insert: Callable[..., Any]  # the dialect's insert(), with on_conflict_do_*

    @contextlib.contextmanager
    def transaction(self, *, read: bool = False) -> Iterator[Connection]:
        """A connection in a transaction for one store method (committed at the end)."""
        with self.engine.begin() as conn:
            yield conn

    def guard(self) -> AbstractContextManager[object]:
        """Held around closing (SQLite shares one connection between threads)."""
        return contextlib.nullcontext()

    def migration_lock(self, conn: Connection) -> None:
        """Serialise migrations between processes, inside the migration transaction."""

    def close(self) -> None:
        """Close every connection."""
        self.engine.dispose()


class SqliteBackend(Backend):
    """A file, WAL journal, one connection shared by the worker threads under a lock.

    pysqlite's own transaction handling is switched off and transactions start with
    BEGIN IMMEDIATE (the SQLAlchemy recipe for pysqlite): a writer takes the write lock
    up front instead of failing to upgrade a read lock half-way through a page.
    """

    name = "sqlite"
    insert = staticmethod(sqlite.insert)

    def __init__(
        self, path: Path | str, *, busy_timeout: float = 10.0, create: bool = True
    ) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        memory = str(path) == ":memory:"
        url = URL.create("sqlite", database=str(path))
        if not memory and create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not memory:
            if not self.path.is_file():
                raise StoreMissing(self.where)
            # mode=rw: should the file vanish before the first connect, SQLite must fail
            # rather than create an empty store in its place.
            url = URL.create(
                "sqlite",
                database=f"file:{quote(str(self.path.resolve()))}",
                query={"mode": "rw", "uri": "true"},
            )
        self.engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False, "timeout": busy_timeout},
            hide_parameters=True,
        )
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        event.listen(self.engine, "connect", _sqlite_connect)
        event.listen(self.engine, "begin", _sqlite_begin)

    @contextlib.contextmanager
    def transaction(self, *, read: bool = False) -> Iterator[Connection]:
        # One connection, held for the store's life: no pool round per method.
        with self._lock:
            if self._conn is None:
                self._conn = self.engine.connect()
            if read:
                # A read is one statement: autocommit, as pysqlite ran it before.
                yield self._conn
                return
            # BEGIN IMMEDIATE / COMMIT on the driver connection itself: SQLAlchemy's
            # Transaction object and its begin/commit events cost more than the page's
            # statements (the store runs its SQL on the DBAPI cursor anyway).
            raw = self._conn.connection.driver_connection
            assert raw is not None
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:  # also when COMMIT itself failed (busy, disk full)
                    raw.execute("ROLLBACK")
                raise

    def guard(self) -> AbstractContextManager[object]:
        return self._lock

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()

    # BEGIN IMMEDIATE (from the begin listener) already holds the database's write lock
    # for the whole migration transaction.


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None
    # WAL + NORMAL survives a process crash; a power loss may roll back the last commits,
    # which only means pages get published again (same ids).
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _sqlite_begin(conn: Connection) -> None:
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


class PostgresBackend(Backend):
    """A bounded connection pool shared by the workers (``state.pool_size``)."""

    name = "postgresql"
    insert = staticmethod(postgresql.insert)

    def __init__(self, url: URL, *, pool_size: int = 5, lease_seconds: float = 30.0) -> None:
        self.where = f"postgresql://{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
        self.engine = sa.create_engine(
            url,
            # Bounded: workers wait for a connection rather than each opening its own, so
            # replicas x pool_size stays below the server's max_connections.
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=30,
            # Pinged on checkout only after a second idle (``_checkout``), not each time.
            # Positional, as on SQLite: the store runs its compiled SQL on the DBAPI cursor.
            paramstyle="format",
            # No server-side prepared statements: a generic plan for ``id IN (...)`` made
            # on young tables' statistics scans the whole stream (13x slower per page).
            # Measured again with 0005 (600 page loads of 100 ids, 20,000 records): off
            # 5.4-6.0 s, prepared with forced custom plans 6.0 s, prepared with psycopg's
            # automatic plans 7.6 s. A page is one statement to load and one to commit:
            # parsing is not where the time goes.
            connect_args={"connect_timeout": 10, "prepare_threshold": None},
            hide_parameters=True,
        )
        # A replica paused (or cut off) inside a transaction holds its row locks: the
        # server ends such a session after a lease period, so the others' claims and
        # commits go on; and no statement waits longer than that for a lock.
        self._session_timeout_ms = max(1000, int(lease_seconds * 1000))
        event.listen(self.engine, "connect", self._session_settings)
        event.listen(self.engine, "checkin", _checked_in)
        event.listen(self.engine, "checkout", self._checkout)

    @contextlib.contextmanager
    def transaction(self, *, read: bool = False) -> Iterator[Connection]:
        if not read:
            with self.engine.begin() as conn:
                yield conn
            return
        # A read is one statement (or a few, each its own snapshot under READ COMMITTED
        # anyway): autocommit, without the BEGIN and COMMIT round trips around it.
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.autocommit = True
            try:
                yield conn
            finally:
                if not raw.closed:
                    raw.autocommit = False

    def _checkout(self, dbapi_connection: Any, record: Any, _proxy: object) -> None:
        """Ping a connection that sat idle in the pool (the server may have closed it
        meanwhile): SQLAlchemy's ``pool_pre_ping`` pinged on every checkout, one more
        round trip per store method. One used moments ago is handed out as it is; should
        the server have gone since, that method fails as it would mid-transaction."""
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            self.engine.dialect.do_ping(dbapi_connection)
        except self.engine.dialect.loaded_dbapi.Error as exc:
            # The pool reconnects this slot and checks it out again.
            raise sa.exc.DisconnectionError(str(exc)) from exc

    def _session_settings(self, dbapi_connection: Any, _record: object) -> None:
        ms = self._session_timeout_ms
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {ms}")
            cursor.execute(f"SET lock_timeout = {ms}")
        dbapi_connection.commit()

    def migration_lock(self, conn: Connection) -> None:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_NAMESPACE, 0)))

    def close(self) -> None:
        self.engine.dispose()


_IDLE_SINCE = "changefeed_idle_since"
PING_AFTER_IDLE_S = 1.0


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


def engine_url(raw: str) -> URL:
    """A PostgreSQL URL as users write it (``postgres://``, ``postgresql://``), on psycopg 3.

    SQLAlchemy's default PostgreSQL driver is psycopg2; the daemon ships psycopg 3.
    """
    try:
        url = sa.make_url(raw)
    except sa.exc.ArgumentError:
        # The parser's message quotes the whole URL, password included.
        raise StateStoreError("state.url is not a valid PostgreSQL URL") from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if not url.drivername.startswith("postgresql"):
        raise StateStoreError(f"state.url: unsupported database {url.drivername!r}")
    return url


def backend_for(target: Any, *, create: bool = True) -> Backend:
    """The backend for StateSettings (``url`` set: PostgreSQL, else ``path``: SQLite),
    a URL string or a SQLite path.

    ``create=False`` opens only an existing SQLite file (StoreMissing otherwise) and
    creates neither it nor its folder; a PostgreSQL database is never created anyway.
    """
    state = getattr(target, "state", target)  # Settings or StateSettings
    url = getattr(state, "url", None)
    path = getattr(state, "path", None)
    if url is not None:
        raw = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
        return _postgres(
            raw, int(getattr(state, "pool_size", 5)), float(getattr(state, "lease_seconds", 30.0))
        )
    if path is not None:
        return _sqlite(path, create)
    text = str(target)
    if text.startswith(("postgres://", "postgresql://", "postgresql+")):
        return _postgres(text)
    if text.startswith("sqlite:///"):
        text = text.removeprefix("sqlite:///")
    return _sqlite(text, create)


def _sqlite(path: Path | str, create: bool) -> Backend:
    try:
        return SqliteBackend(path, create=create)
    except OSError as exc:
        raise StateStoreError(f"cannot open state store {path}: {exc}") from None


def _postgres(raw: str, pool_size: int = 5, lease_seconds: float = 30.0) -> Backend:
    url = engine_url(raw)
    try:
        return PostgresBackend(url, pool_size=pool_size, lease_seconds=lease_seconds)
    except sa.exc.SQLAlchemyError as exc:
        raise StateStoreError(
            f"cannot open PostgreSQL state store: {_scrub(str(exc), url)}"
        ) from None


def reason(exc: BaseException, url: URL | None = None) -> str:
    """The driver's first line of explanation: never the statement, parameters or URL."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else type(orig).__name__
    return _scrub(first, url)


def _scrub(text: str, url: URL | None) -> str:
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text


@contextlib.contextmanager
def opening(backend: Backend) -> Iterator[None]:
    """Errors while opening a store, as StateStoreError naming the store (no secrets)."""
    try:
        yield
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        what = "PostgreSQL state store" if backend.name == "postgresql" else "state store"
        raise StateStoreError(
            f"cannot open {what} {backend.where}: {reason(exc, backend.engine.url)}"
        ) from None
