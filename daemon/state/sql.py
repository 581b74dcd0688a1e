"""The store's SQL runner: statements compiled once per dialect, run on a DBAPI cursor.

The statements are Core expressions built at import (``snapshots``, ``scans``,
``leases``, ``replicas``, ``due``); each store compiles them once for its dialect and
runs the SQL on the transaction's DBAPI cursor. SQLAlchemy's own per-execution work
(parameter processing, expanding IN, result rows) cost four times what SQLite takes to
run a steady page; compiled once, a page costs what hand-written SQL did. Rows go in as
one multi-row INSERT per chunk.

``StoreCore`` is what every part of the store stands on: the backend, the compiled
statements, transactions (database errors become StateStoreError) and stream ids.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import bindparam, func, select, update

from daemon.errors import StateStoreError
from daemon.models import StreamKey, StreamState
from daemon.state.codec import BlobCodec
from daemon.state.dialects import Backend, reason
from daemon.state.schema import STATE_COLUMNS, dictionaries, records, streams

# SQLite's default limit on host parameters is 32766; pages are ≤ 100 ids anyway.
CHUNK = 500

SID = bindparam("p_sid", type_=sa.Integer)
NOW = bindparam("p_now", type_=sa.Double)


def stream_update() -> sa.Update:
    """UPDATE of the stream ``p_sid``'s row."""
    return update(streams).where(streams.c.sid == SID)


def id_params(count: int) -> list[sa.BindParameter[str]]:
    """``count`` id parameters: one statement per id count, like hand-written SQL (no
    expanding IN at run time). ``Tx.run_ids`` passes the ids as one slice."""
    return [bindparam(f"p_id{n}", type_=sa.Text) for n in range(count)]


def row_params(table: sa.Table, columns: tuple[str, ...], count: int) -> list[dict[str, Any]]:
    """The VALUES of a ``count``-row INSERT into ``table``."""
    # Multi-row VALUES: one statement per page instead of one step per row; parameters
    # named row by row so the compiled order is the rows' values, flattened.
    return [
        {c: bindparam(f"r{n:05d}_{c}", type_=table.c[c].type) for c in columns}
        for n in range(count)
    ]


_SELECT_SID = select(streams.c.sid).where(
    streams.c.connector == bindparam("p_connector"), streams.c.model == bindparam("p_model")
)
_SELECT_STATE = select(*STATE_COLUMNS).where(streams.c.sid == SID)
_DICTIONARY = select(dictionaries.c.data).where(
    dictionaries.c.num == bindparam("p_num", type_=sa.Integer)
)
_COUNT_RECORDS = select(func.count()).select_from(records).where(records.c.sid == SID)


def _select_rows(count: int) -> sa.Select[Any]:
    return select(records.c.id, records.c.modified_at, records.c.hash, records.c.record).where(
        records.c.sid == SID, records.c.id.in_(id_params(count))
    )


# PostgreSQL: one primary-key probe per id, whatever the statistics say. ``id IN (...)``
# is planned from them, and the records table is analyzed by the migration while empty
# (and never again where autovacuum is off, as on the dev server): the planner then took
# a stream for ~50 rows and read all of it for every page (a bitmap scan on ``sid``,
# filtered by id): 4.6 ms a page at 20,000 records, linear in N. A lateral with LIMIT 1
# is never flattened into a hash join, so it stays 100 index probes (0.5 ms).
_SELECT_ROWS_PG = sa.text(
    "SELECT r.id, r.modified_at, r.hash, r.record"
    " FROM json_array_elements_text(CAST(:p_keys AS json)) WITH ORDINALITY AS k(id, n)"
    " CROSS JOIN LATERAL (SELECT id, modified_at, hash, record FROM changefeed_records"
    " WHERE sid = :p_sid AND id = k.id LIMIT 1) AS r ORDER BY k.n"
)


def select_rows(tx: Tx, dialect: str, sid: int, ids: Sequence[str]) -> list[Any]:
    """The stored rows (id, modified_at, hash, blob) of these ids of stream ``sid``, in
    the order of ``ids`` on PostgreSQL; absent ids are missing."""
    if dialect == "postgresql":
        # The ids as one JSON text: psycopg dumps a text[] element by element in Python
        # (a fifth of the call's CPU), orjson the whole list at once.
        keys = orjson.dumps(list(ids)).decode()
        return tx.run(_SELECT_ROWS_PG, p_sid=sid, p_keys=keys).fetchall()
    return tx.run_ids(_select_rows, ids, p_sid=sid).fetchall()


class CompiledSql:
    """One statement compiled for one dialect: its SQL text and its parameters' order."""

    __slots__ = ("consts", "ids_at", "names", "sql")

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        assert compiled.positiontup is not None, "the engine must use a positional paramstyle"
        self.names = tuple(compiled.positiontup)
        # Literals in the expression (``scan_number + 1``, ``scan_phase='pages'``) are
        # bound parameters too, with their value already known.
        binds = compiled.binds
        self.consts = {n: binds[n].value for n in self.names if not binds[n].required}
        # An id list (``id_params``) is one run of parameters: its values go in as one slice.
        ids = [i for i, n in enumerate(self.names) if n.startswith("p_id")]
        self.ids_at = ids[0] if ids else -1
        if ids:
            assert ids == list(range(ids[0], ids[0] + len(ids)))
            self.names = (*self.names[: ids[0]], "", *self.names[ids[-1] + 1 :])
            self.consts[""] = None  # the slot the ids replace

    def args(self, params: Mapping[str, Any], ids: Sequence[str] = ()) -> tuple[Any, ...]:
        """The positional arguments of one execution."""
        consts = self.consts
        if consts:
            values = [consts[n] if n in consts else params[n] for n in self.names]
        else:
            values = [params[n] for n in self.names]
        if self.ids_at >= 0:
            values[self.ids_at : self.ids_at + 1] = ids
        return tuple(values)


class Tx:
    """A transaction's DBAPI cursor and the store's compiled statements."""

    __slots__ = ("cursor", "sql")

    def __init__(self, cursor: Any, sql: Callable[..., CompiledSql]) -> None:
        self.cursor = cursor
        self.sql = sql

    def run(self, statement: object, /, **params: Any) -> Any:
        compiled = self.sql(statement, None)
        self.cursor.execute(compiled.sql, compiled.args(params))
        return self.cursor

    def run_ids(self, statement: object, ids: Sequence[str], /, **params: Any) -> Any:
        """``statement`` is a builder of one statement per id count (see ``id_params``)."""
        compiled = self.sql(statement, len(ids))
        self.cursor.execute(compiled.sql, compiled.args(params, ids))
        return self.cursor

    def values(self, statement: object, rows: Sequence[Sequence[Any]]) -> None:
        """One multi-row INSERT: ``statement`` builds it for a row count (``row_params``)."""
        compiled = self.sql(statement, len(rows))
        self.cursor.execute(compiled.sql, [value for row in rows for value in row])

    def one(self, statement: object, /, **params: Any) -> Any:
        return self.run(statement, **params).fetchone()

    def fresh(self) -> Tx:
        """Another cursor in the same transaction (its results kept apart from this one's)."""
        return Tx(self.cursor.connection.cursor(), self.sql)

    def pipeline(self, dialect: str) -> AbstractContextManager[object]:
        """PostgreSQL: the statements run in it are sent without waiting for each answer
        (psycopg's pipeline mode), all answered at its end; a fetch inside waits for what
        was sent before it. A cursor's rowcount and rows are known only after it ends."""
        if dialect == "postgresql":
            return self.cursor.connection.pipeline()  # type: ignore[no-any-return]
        return nullcontext()


class StoreCore:
    """The backend, its compiled statements, transactions and the streams' ids."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.dialect = backend.name
        self._engine = backend.engine
        self._errors: tuple[type[BaseException], ...] = (
            sa.exc.SQLAlchemyError,
            backend.engine.dialect.loaded_dbapi.Error,
        )
        # Stream ids by key: a stream's row (and so its id) outlives a reset.
        self._sids: dict[StreamKey, int] = {}
        self._insert_stream = (
            backend.insert(streams)
            .values(connector=bindparam("p_connector"), model=bindparam("p_model"))
            .on_conflict_do_nothing(index_elements=[streams.c.connector, streams.c.model])
        )
        self._compiled = functools.lru_cache(maxsize=64)(self._compile)
        self.codec = BlobCodec()  # record blobs: zstd, a dictionary per stream
        self._codec_ready: set[int] = set()  # streams whose dictionary was looked up
        # Stream id -> ((scan, lease token), the ids its delete phase has left): ``seen``.
        self._missing: dict[int, tuple[tuple[int, str | None], dict[str, None]]] = {}

    def _compile(self, statement: object, count: int | None) -> CompiledSql:
        # ``statement`` is a Core statement, or a builder of one per id or row count.
        if count is not None:
            statement = statement(count)  # type: ignore[operator]
        compiled = CompiledSql(statement, self._engine.dialect)  # type: ignore[arg-type]
        if compiled.names and compiled.names[0].startswith("r00000_"):
            # ``Tx.values`` passes the rows' values flattened: the SQL must take them so.
            rows = [name.split("_", 1)[0] for name in compiled.names]
            assert rows == sorted(rows), compiled.names
        return compiled

    @contextmanager
    def _tx(self, what: str, *, read: bool = False) -> Iterator[Tx]:
        known = len(self._sids)
        try:
            with self.backend.transaction(read=read) as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    yield Tx(cursor, self._compiled)
                finally:
                    cursor.close()
        except BaseException as exc:
            if len(self._sids) != known:
                # A stream row inserted by this transaction was rolled back with it.
                self._sids.clear()
            if not isinstance(exc, self._errors):
                raise
            raise StateStoreError(
                f"state store {self.backend.where}: {what} failed: {reason(exc)}"
            ) from None

    def _sid(self, tx: Tx, key: StreamKey) -> int:
        """The stream's id, its row created on first use (due at once)."""
        sid = self._sids.get(key)
        if sid is None:
            names = {"p_connector": key.connector, "p_model": key.model}
            row = tx.one(_SELECT_SID, **names)
            if row is None:
                tx.run(self._insert_stream, **names)
                row = tx.one(_SELECT_SID, **names)
            sid = self._sids[key] = int(row[0])
        return sid

    def _state(self, tx: Tx, key: StreamKey, *, count: bool = False) -> StreamState:
        sid = self._sid(tx, key)
        row = tx.one(_SELECT_STATE, p_sid=sid)
        records_ = tx.one(_COUNT_RECORDS, p_sid=sid)[0] if count else 0
        return StreamState(key, *row, records=int(records_))

    def _load_dictionaries(self, tx: Tx, blobs: Sequence[bytes]) -> None:
        """Read the dictionaries ``blobs`` were written with that this process lacks."""
        codec = self.codec
        for number in codec.dictionaries(blobs):
            if not codec.known(number):
                codec.add(number, bytes(tx.one(_DICTIONARY, p_num=number)[0]))

    def _forget_missing(self, sid: int, ids: Sequence[str]) -> None:
        """These ids were deleted: the delete phase does not hand them out again."""
        cached = self._missing.get(sid)
        if cached is not None:
            for rid in ids:
                cached[1].pop(rid, None)
