"""The state store, written once against ``schema.metadata`` for SQLite and PostgreSQL.

Every method that changes state runs in one transaction, so a crash leaves the store at
a page boundary. The statements are Core expressions built at import; each store compiles them once
for its dialect and runs the SQL on the transaction's DBAPI cursor. SQLAlchemy's own
per-execution work (parameter processing, expanding IN, result rows) cost four times
what SQLite takes to run a steady page; compiled once, a page costs what hand-written
SQL did. Rows go in by executemany.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import and_, bindparam, case, delete, func, or_, select, update

from daemon.errors import LeaseLost, StateStoreError
from daemon.models import (
    DueStream,
    FleetView,
    LeaseInfo,
    Message,
    RejectWrite,
    ReplicaInfo,
    RowWrite,
    ScanKind,
    SnapshotRow,
    StoredRow,
    StreamKey,
    StreamState,
)
from daemon.state.dialects import Backend, reason
from daemon.state.rows import LoadedRow, dump_headers, load_headers
from daemon.state.schema import (
    STATE_COLUMNS,
    leases,
    outbox,
    records,
    rejected,
    replicas,
    seen,
    streams,
)

# SQLite's default limit on host parameters is 32766; pages are ≤ 100 ids anyway.
_CHUNK = 500

_SID = bindparam("p_sid", type_=sa.Integer)
_NOW = bindparam("p_now", type_=sa.Double)
_CURRENT_SCAN = select(streams.c.scan_number).where(streams.c.sid == _SID).scalar_subquery()
_CLEAR_SCAN = {
    "scan_kind": None,
    "scan_phase": None,
    "scan_cursor": None,
    "scan_pages": 0,
    "scan_since": None,
    "scan_started_at": None,
    "scan_max_modified": None,
    "scan_sync": None,
}
_FULL = streams.c.scan_kind == "full"


def _stream_update() -> sa.Update:
    return update(streams).where(streams.c.sid == _SID)


_SELECT_SID = select(streams.c.sid).where(
    streams.c.connector == bindparam("p_connector"), streams.c.model == bindparam("p_model")
)
_SELECT_STATE = select(*STATE_COLUMNS).where(streams.c.sid == _SID)
_SELECT_SCAN = select(streams.c.scan_number).where(streams.c.sid == _SID)
_COUNT = select(func.count()).select_from(seen).where(seen.c.sid == _SID)
_LIST_STREAMS = select(streams.c.connector, streams.c.model).order_by(
    streams.c.connector, streams.c.model
)
_BEGIN_SCAN = _stream_update().values(
    scan_number=streams.c.scan_number + 1,
    scan_kind=bindparam("p_kind", type_=sa.Text),
    scan_phase="pages",
    scan_cursor=None,
    scan_pages=0,
    scan_since=bindparam("p_since", type_=sa.Text),
    scan_started_at=_NOW,
    scan_max_modified=None,
    scan_sync=bindparam("p_sync", type_=sa.Text),
)
_MAX = bindparam("p_max", type_=sa.Text)
_ADVANCE = _stream_update().values(
    scan_cursor=bindparam("p_cursor", type_=sa.Text),
    scan_pages=streams.c.scan_pages + 1,
    scan_max_modified=case(
        (or_(streams.c.scan_max_modified.is_(None), streams.c.scan_max_modified < _MAX), _MAX),
        else_=streams.c.scan_max_modified,
    ),
)
_BEGIN_DELETES = _stream_update().values(scan_phase="deletes", scan_cursor=None)
# SET expressions read the row as it was before the update: scan_kind is still the scan's.
_FINISH_SCAN = _stream_update().values(
    watermark=case(
        (
            or_(streams.c.watermark.is_(None), streams.c.scan_max_modified > streams.c.watermark),
            func.coalesce(streams.c.scan_max_modified, streams.c.watermark),
        ),
        else_=streams.c.watermark,
    ),
    last_full_scan_started_at=case(
        (_FULL, streams.c.scan_started_at), else_=streams.c.last_full_scan_started_at
    ),
    last_full_scan_at=case((_FULL, _NOW), else_=streams.c.last_full_scan_at),
    delete_guard=case((_FULL, bindparam("p_guard", type_=sa.Text)), else_=streams.c.delete_guard),
    # The bookmark moves only here: every page of the scan is committed and published.
    sync_bookmark=case(
        (and_(_FULL, streams.c.scan_sync.is_not(None)), streams.c.scan_sync),
        else_=streams.c.sync_bookmark,
    ),
    last_scan_at=_NOW,
    last_error=None,
    last_error_at=None,
    # An operator's resync is done once a full scan that started after it completes.
    resync_requested_at=case(
        (
            and_(_FULL, streams.c.resync_requested_at <= streams.c.scan_started_at),
            None,
        ),
        else_=streams.c.resync_requested_at,
    ),
    **_CLEAR_SCAN,
)
_RECORD_ERROR = _stream_update().values(
    last_error=bindparam("p_message", type_=sa.Text), last_error_at=_NOW
)
_ABANDON_SCAN = _stream_update().values(**_CLEAR_SCAN)
_CONNECTOR_STATE = _stream_update().values(connector_state=bindparam("p_state", type_=sa.Text))


def _ids(count: int) -> list[sa.BindParameter[str]]:
    # One statement per id count, like hand-written SQL: no expanding IN at run time.
    return [bindparam(f"p_id{n}", type_=sa.Text) for n in range(count)]


def _select_rows(count: int) -> sa.Select[Any]:
    return select(records.c.id, records.c.modified_at, records.c.hash, records.c.record).where(
        records.c.sid == _SID, records.c.id.in_(_ids(count))
    )


def _mark_seen(count: int) -> sa.Update:
    return (
        update(seen)
        .where(seen.c.sid == _SID, seen.c.id.in_(_ids(count)))
        .values(scan=bindparam("p_scan", type_=sa.Integer))
    )


def _rows(table: sa.Table, columns: tuple[str, ...], count: int) -> list[dict[str, Any]]:
    # Multi-row VALUES: one statement per page instead of one step per row; parameters
    # named row by row so the compiled order is the rows' values, flattened.
    return [
        {c: bindparam(f"r{n:05d}_{c}", type_=table.c[c].type) for c in columns}
        for n in range(count)
    ]


def _delete_from(table: sa.Table) -> Callable[[int], sa.Delete]:
    def build(count: int) -> sa.Delete:
        return delete(table).where(table.c.sid == _SID, table.c.id.in_(_ids(count)))

    return build


_delete_rows_n = (_delete_from(records), _delete_from(seen))


_COUNT_MISSING = select(func.count().filter(seen.c.scan != _CURRENT_SCAN), func.count()).where(
    seen.c.sid == _SID
)
_MISSING_ROWS = (
    select(records.c.id, records.c.modified_at, records.c.hash, records.c.record)
    .select_from(seen.join(records, and_(records.c.sid == seen.c.sid, records.c.id == seen.c.id)))
    .where(seen.c.sid == _SID, seen.c.scan != _CURRENT_SCAN)
    .order_by(seen.c.id)
    .limit(bindparam("p_limit", type_=sa.Integer))
)
_RESET = tuple(
    delete(table).where(table.c.sid == _SID) for table in (records, seen, outbox, rejected, streams)
)


def _select_rejected(count: int) -> sa.Select[Any]:
    return select(rejected.c.fingerprint, rejected.c.record_id).where(
        rejected.c.sid == _SID, rejected.c.fingerprint.in_(_ids(count))
    )


# A stored row whose record holds ``"remote_id":<value>``: the substring narrows the rows,
# the caller checks each one's decoded record. SQLite's LIKE does not read BLOBs (instr
# does); PostgreSQL's bytea has LIKE.
_PATTERN = bindparam("p_pattern", type_=sa.LargeBinary)
_SELECT_BY_REMOTE = {
    "sqlite": select(records.c.id, records.c.record).where(
        records.c.sid == _SID, func.instr(records.c.record, _PATTERN) > 0
    ),
    "postgresql": select(records.c.id, records.c.record).where(
        records.c.sid == _SID, records.c.record.op("LIKE")(_PATTERN)
    ),
}
_COUNT_REJECTED = select(func.count()).select_from(rejected).where(rejected.c.sid == _SID)
# Rejected items of the current scan that nothing identifies: its deletes are withheld.
_COUNT_UNIDENTIFIED = (
    select(func.count())
    .select_from(rejected)
    .where(
        rejected.c.sid == _SID,
        rejected.c.scan == _CURRENT_SCAN,
        rejected.c.record_id.is_(None),
    )
)
# A completed full scan met every bad item still there: forget the ones it did not meet
# (fixed or deleted upstream), so the same content going bad again is dead-lettered anew.
_PRUNE_REJECTED = delete(rejected).where(
    rejected.c.sid == _SID,
    rejected.c.scan != _CURRENT_SCAN,
    select(streams.c.scan_kind).where(streams.c.sid == _SID).scalar_subquery() == "full",
)
_SELECT_OUTBOX = (
    select(outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
    .where(outbox.c.sid == _SID)
    .order_by(outbox.c.seq)
)
_CLEAR_OUTBOX = delete(outbox).where(outbox.c.sid == _SID)
_RECORD_COLUMNS = ("sid", "id", "modified_at", "hash", "record")
_SEEN_COLUMNS = ("sid", "id", "scan")
_OUTBOX_COLUMNS = ("sid", "seq", "topic", "key", "value", "headers")
_REJECTED_COLUMNS = ("sid", "fingerprint", "first_seen", "reason", "record_id", "scan")
_PING = select(streams.c.sid).limit(1)

# -- leases, due times, replicas ---------------------------------------------------
_NAME = bindparam("p_name", type_=sa.Text)
_TOKEN = bindparam("p_token", type_=sa.Text)
_OWNER = bindparam("p_owner", type_=sa.Text)
_EXPIRES = bindparam("p_expires", type_=sa.Double)
_LIVE = leases.c.expires_at >= _NOW
# Renewals match the token alone: a token nobody replaced means nobody took the lease over
# (takers are serialised by the row lock), so a holder that was slow (a long Retry-After,
# a late heartbeat) keeps its lease; once another replica took it, the token differs and
# the old holder's next write fails.
_LEASE_NAME = sa.literal("stream:", sa.Text) + sa.cast(streams.c.sid, sa.Text)
_STREAM_LEASE = leases.c.name == _LEASE_NAME
_RENEW = (
    update(leases)
    .where(leases.c.name == _NAME, leases.c.token == _TOKEN)
    .values(expires_at=_EXPIRES)
)
_DROP_LEASE = delete(leases).where(leases.c.name == _NAME, leases.c.token == _TOKEN)
_SELECT_DUE = select(streams.c.due_at).where(streams.c.sid == _SID)
_DUE = or_(streams.c.due_at.is_(None), streams.c.due_at <= _NOW)
# Streams due now that no live lease holds, oldest due first.
_DUE_STREAMS = (
    select(
        streams.c.connector,
        streams.c.model,
        streams.c.due_at,
        streams.c.connector_state,
        streams.c.resync_requested_at,
    )
    .select_from(streams.outerjoin(leases, and_(_STREAM_LEASE, _LIVE)))
    .where(_DUE, leases.c.name.is_(None))
    .order_by(func.coalesce(streams.c.due_at, 0.0), streams.c.sid)
)
_NEXT_DUE = select(func.min(streams.c.due_at)).where(streams.c.due_at > _NOW)
_LIVE_LEASES = select(
    leases.c.name, leases.c.owner, leases.c.acquired_at, leases.c.expires_at
).where(_LIVE)
_STREAM_LEASES = select(
    streams.c.connector,
    streams.c.model,
    leases.c.owner,
    leases.c.acquired_at,
    leases.c.expires_at,
).select_from(streams.join(leases, _STREAM_LEASE))
_REPLICA_COLUMNS = (
    replicas.c.replica,
    replicas.c.host,
    replicas.c.pid,
    replicas.c.started_at,
    replicas.c.heartbeat_at,
    replicas.c.workers,
    replicas.c.busy,
)
_LIVE_REPLICAS = (
    select(*_REPLICA_COLUMNS)
    .where(replicas.c.heartbeat_at >= bindparam("p_since", type_=sa.Double))
    .order_by(replicas.c.replica)
)
_ALL_REPLICAS = select(*_REPLICA_COLUMNS).order_by(replicas.c.replica)


def _renew_held(count: int) -> sa.Update:
    # By token, not by owner: a one-off command (`poll`) run with the same replica name
    # must not have its leases kept alive by the daemon's heartbeat.
    return (
        update(leases)
        .where(leases.c.owner == _OWNER, leases.c.token.in_(_ids(count)))
        .values(expires_at=_EXPIRES)
    )


_MY_LEASES = select(leases.c.name, leases.c.token).where(leases.c.owner == _OWNER)
_DROP_OWNER_LEASES = delete(leases).where(leases.c.owner == _OWNER)
_HOST = bindparam("p_host", type_=sa.Text)
_PID = bindparam("p_pid", type_=sa.Integer)
_LOCAL_PIDS = select(leases.c.pid).where(leases.c.host == _HOST).distinct()
_DROP_PID_LEASES = delete(leases).where(leases.c.host == _HOST, leases.c.pid == _PID)
_DROP_PID_REPLICAS = delete(replicas).where(replicas.c.host == _HOST, replicas.c.pid == _PID)
_DROP_REPLICA = delete(replicas).where(replicas.c.replica == _OWNER)
_PRUNE_REPLICAS = delete(replicas).where(
    replicas.c.heartbeat_at < bindparam("p_since", type_=sa.Double)
)
_EARLIER = or_(streams.c.due_at.is_(None), streams.c.due_at > _NOW)
_REQUEST = _stream_update().values(
    requested_at=_NOW,
    requested_sync=func.coalesce(bindparam("p_sync", type_=sa.Text), streams.c.requested_sync),
    due_at=case((_EARLIER, _NOW), else_=streams.c.due_at),
)
_REQUEST_RESYNC = _stream_update().values(
    requested_at=_NOW,
    resync_requested_at=func.coalesce(streams.c.resync_requested_at, _NOW),
    due_at=case((_EARLIER, _NOW), else_=streams.c.due_at),
)
# A request newer than what the pass saw keeps the stream due at once (its trailing pass).
_SET_DUE = _stream_update().values(
    due_at=case(
        (
            # Any other request time than the one the pass saw: requesters' clocks (another
            # replica, the `resync` command's host) need not agree with ours.
            func.coalesce(streams.c.requested_at, -1.0) != bindparam("p_seen", type_=sa.Double),
            streams.c.requested_at,
        ),
        else_=bindparam("p_due", type_=sa.Double),
    )
)
_POSTPONE = _stream_update().values(due_at=bindparam("p_due", type_=sa.Double))
_BRING_FORWARD = (
    update(streams)
    .where(streams.c.sid == _SID, streams.c.due_at > bindparam("p_due", type_=sa.Double))
    .values(due_at=bindparam("p_due", type_=sa.Double))
)


def _remote_pattern(dialect: str, remote_id: str) -> bytes:
    needle = b'"remote_id":' + orjson.dumps(remote_id)  # orjson writes compact JSON
    if dialect == "sqlite":
        return needle
    # LIKE, without an ESCAPE clause: what LIKE treats specially (PostgreSQL's default
    # escape, backslash, too) matches any one character instead.
    for special in (b"\\", b"%"):
        needle = needle.replace(special, b"_")
    return b"%" + needle + b"%"


def default_owner() -> str:
    """This process's name when none is configured: host name and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def local_host() -> str:
    """This host as a lease records it: the host name, plus the pid namespace where there
    is one (two containers with one host name, e.g. with host networking, differ)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/pidns:{namespace}"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


class _NotDue(Exception):
    """Raised inside a claim's transaction to roll the lease back."""


class _Lease:
    __slots__ = ("acquired_at", "confirmed", "key", "lost", "name", "token")

    def __init__(self, name: str, token: str, acquired_at: float, key: StreamKey | None) -> None:
        self.name = name
        self.token = token
        self.acquired_at = acquired_at
        self.key = key
        # Set by a heartbeat that found the lease gone: the holder's next write fails.
        self.lost = False
        # When the store last knew the lease was its own (monotonic): a check soon after
        # needs no round trip, since no one can take it before it expires.
        self.confirmed = time.monotonic()


class _Sql:
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
        # An id list (``_ids``) is one run of parameters: its values go in as one slice.
        ids = [i for i, n in enumerate(self.names) if n.startswith("p_id")]
        self.ids_at = ids[0] if ids else -1
        if ids:
            assert ids == list(range(ids[0], ids[0] + len(ids)))
            self.names = (*self.names[: ids[0]], "", *self.names[ids[-1] + 1 :])
            self.consts[""] = None  # the slot the ids replace

    def args(self, params: Mapping[str, Any], ids: Sequence[str] = ()) -> tuple[Any, ...]:
        consts = self.consts
        if consts:
            values = [consts[n] if n in consts else params[n] for n in self.names]
        else:
            values = [params[n] for n in self.names]
        if self.ids_at >= 0:
            values[self.ids_at : self.ids_at + 1] = ids
        return tuple(values)


class _Tx:
    """A transaction's DBAPI cursor and the store's compiled statements."""

    __slots__ = ("cursor", "sql")

    def __init__(self, cursor: Any, sql: Callable[..., _Sql]) -> None:
        self.cursor = cursor
        self.sql = sql

    def run(self, statement: object, /, **params: Any) -> Any:
        compiled = self.sql(statement, None)
        self.cursor.execute(compiled.sql, compiled.args(params))
        return self.cursor

    def run_ids(self, statement: object, ids: Sequence[str], /, **params: Any) -> Any:
        """``statement`` is a builder of one statement per id count (see ``_ids``)."""
        compiled = self.sql(statement, len(ids))
        self.cursor.execute(compiled.sql, compiled.args(params, ids))
        return self.cursor

    def values(self, statement: object, rows: Sequence[Sequence[Any]]) -> None:
        """One multi-row INSERT: ``statement`` builds it for a row count (``_rows``)."""
        compiled = self.sql(statement, len(rows))
        self.cursor.execute(compiled.sql, [value for row in rows for value in row])

    def one(self, statement: object, /, **params: Any) -> Any:
        return self.run(statement, **params).fetchone()


class StateStore:
    """The snapshot store over one backend (``dialects.SqliteBackend`` or ``PostgresBackend``)."""

    def __init__(
        self, backend: Backend, *, owner: str | None = None, lease_seconds: float = 30.0
    ) -> None:
        self.backend = backend
        self.owner = owner or default_owner()
        self.host = local_host()
        self.lease_seconds = lease_seconds
        self._leases: dict[str, _Lease] = {}
        self.dialect = backend.name
        self._engine = backend.engine
        self._errors: tuple[type[BaseException], ...] = (
            sa.exc.SQLAlchemyError,
            backend.engine.dialect.loaded_dbapi.Error,
        )
        self._sids: dict[StreamKey, int] = {}
        insert = backend.insert
        self._insert_stream = (
            insert(streams)
            .values(connector=bindparam("p_connector"), model=bindparam("p_model"))
            .on_conflict_do_nothing(index_elements=[streams.c.connector, streams.c.model])
        )

        def upsert(table: sa.Table, columns: tuple[str, ...]) -> Callable[[int], sa.Insert]:
            keys = [c for c in table.primary_key.columns]
            update = [c for c in columns if c not in {k.name for k in keys}]

            def build(count: int) -> sa.Insert:
                stmt = insert(table).values(_rows(table, columns, count))
                return stmt.on_conflict_do_update(
                    index_elements=keys, set_={c: stmt.excluded[c] for c in update}
                )

            return build

        self._upsert_records = upsert(records, _RECORD_COLUMNS)
        self._upsert_seen = upsert(seen, _SEEN_COLUMNS)

        def upsert_rejected(count: int) -> sa.Insert:
            # Seen again: a newer scan, and the record it stands for if now known; the
            # first sighting and its reason stay.
            stmt = insert(rejected).values(_rows(rejected, _REJECTED_COLUMNS, count))
            return stmt.on_conflict_do_update(
                index_elements=[rejected.c.sid, rejected.c.fingerprint],
                set_={
                    "scan": stmt.excluded.scan,
                    "record_id": func.coalesce(stmt.excluded.record_id, rejected.c.record_id),
                },
            )

        self._upsert_rejected = upsert_rejected
        take = insert(leases).values(
            name=_NAME,
            owner=_OWNER,
            token=_TOKEN,
            acquired_at=_NOW,
            expires_at=_EXPIRES,
            host=bindparam("p_host", type_=sa.Text),
            pid=bindparam("p_pid", type_=sa.Integer),
        )
        # Only a lease nobody renewed in time is taken over: the upsert does nothing
        # (rowcount 0) while the holder's is live.
        self._take_lease = take.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={
                c: take.excluded[c]
                for c in ("owner", "token", "acquired_at", "expires_at", "host", "pid")
            },
            where=leases.c.expires_at < _NOW,
        )
        beat = insert(replicas).values(
            replica=_OWNER,
            host=bindparam("p_host", type_=sa.Text),
            pid=bindparam("p_pid", type_=sa.Integer),
            started_at=bindparam("p_started", type_=sa.Double),
            heartbeat_at=_NOW,
            workers=bindparam("p_workers", type_=sa.Integer),
            busy=bindparam("p_busy", type_=sa.Integer),
        )
        self._upsert_replica = beat.on_conflict_do_update(
            index_elements=[replicas.c.replica],
            set_={c: beat.excluded[c] for c in ("host", "pid", "heartbeat_at", "workers", "busy")},
        )
        self._insert_outbox = lambda count: sa.insert(outbox).values(
            _rows(outbox, _OUTBOX_COLUMNS, count)
        )
        self._compiled = functools.lru_cache(maxsize=64)(self._compile)

    def _compile(self, statement: object, count: int | None) -> _Sql:
        # ``statement`` is a Core statement, or a builder of one per id count.
        if count is not None:
            statement = statement(count)  # type: ignore[operator]
        compiled = _Sql(statement, self._engine.dialect)  # type: ignore[arg-type]
        if compiled.names and compiled.names[0].startswith("r00000_"):
            # ``_Tx.values`` passes the rows' values flattened: the SQL must take them so.
            rows = [name.split("_", 1)[0] for name in compiled.names]
            assert rows == sorted(rows), compiled.names
        return compiled

    def __repr__(self) -> str:
        return f"StateStore({self.dialect}, {self.backend.where!r})"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, what: str, *, read: bool = False) -> Iterator[_Tx]:
        known = len(self._sids)
        try:
            with self.backend.transaction(read=read) as conn:
                cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                try:
                    yield _Tx(cursor, self._compiled)
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

    def _sid(self, tx: _Tx, key: StreamKey) -> int:
        sid = self._sids.get(key)
        if sid is None:
            names = {"p_connector": key.connector, "p_model": key.model}
            row = tx.one(_SELECT_SID, **names)
            if row is None:
                tx.run(self._insert_stream, **names)
                row = tx.one(_SELECT_SID, **names)
            sid = self._sids[key] = int(row[0])
        return sid

    def _state(self, tx: _Tx, key: StreamKey, *, count: bool = False) -> StreamState:
        sid = self._sid(tx, key)
        row = tx.one(_SELECT_STATE, p_sid=sid)
        records_ = tx.one(_COUNT, p_sid=sid)[0] if count else 0
        return StreamState(key, *row, records=int(records_))

    def state(self, key: StreamKey) -> StreamState:
        """The stream's state, with its record count."""
        with self._tx("read stream state") as tx:
            return self._state(tx, key, count=True)

    def states(self) -> list[StreamState]:
        """Every stream the store knows."""
        with self._tx("list streams", read=True) as tx:
            keys = [StreamKey(c, m) for c, m in tx.run(_LIST_STREAMS).fetchall()]
        return [self.state(key) for key in keys]

    def begin_scan(
        self,
        key: StreamKey,
        kind: ScanKind,
        since: str | None,
        now: float,
        sync: str | None = None,
    ) -> StreamState:
        """Start a new scan: bump the scan number, no cursor yet. ``sync`` is the Bindbee
        sync (its start time) the scan covers: the bookmark moves to it when it completes."""
        with self._tx("begin scan") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_BEGIN_SCAN, p_kind=kind, p_since=since, p_now=now, p_sync=sync, p_sid=sid)
            return self._state(tx, key)

    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, SnapshotRow]:
        """Stored rows for these ids (absent ids are simply missing from the result)."""
        rows: dict[str, SnapshotRow] = {}
        with self._tx("load rows", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                found = tx.run_ids(_select_rows, chunk, p_sid=sid)
                for row in found.fetchall():
                    rows[row[0]] = LoadedRow(*row)
        return rows

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
        rejected: Sequence[RejectWrite] = (),
    ) -> StreamState:
        """Write a page's rows, its messages to publish (dead letters included), the
        contents it rejected, mark its ids seen by this scan and move the cursor: one
        transaction."""
        with self._tx("commit page") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            self._write_outbox(tx, sid, outbox)
            scan = tx.one(_SELECT_SCAN, p_sid=sid)[0]
            if rejected:
                unique = {r.fingerprint: r for r in rejected}.values()
                rows = [(sid, r.fingerprint, r.first_seen, r.reason, r.record_id, scan)
                        for r in unique]  # fmt: skip
                for start in range(0, len(rows), _CHUNK):
                    tx.values(self._upsert_rejected, rows[start : start + _CHUNK])
            rest: Sequence[str] = seen_ids
            if writes:
                dumps = orjson.dumps
                for start in range(0, len(writes), _CHUNK):
                    chunk = writes[start : start + _CHUNK]
                    rows = [(sid, w.id, w.modified_at, w.content_hash, dumps(w.record))
                            for w in chunk]  # fmt: skip
                    tx.values(self._upsert_records, rows)
                    tx.values(self._upsert_seen, [(sid, w.id, scan) for w in chunk])
                written = {w.id for w in writes}
                rest = [rid for rid in seen_ids if rid not in written]
            for start in range(0, len(rest), _CHUNK):
                chunk = rest[start : start + _CHUNK]
                tx.run_ids(_mark_seen, chunk, p_scan=scan, p_sid=sid)
            tx.run(_ADVANCE, p_cursor=next_cursor, p_max=max_modified, p_sid=sid)
            return self._state(tx, key)

    def known_rejections(
        self, key: StreamKey, fingerprints: Sequence[str]
    ) -> dict[str, str | None]:
        """Fingerprint -> record id (or None) of the contents already dead-lettered."""
        known: dict[str, str | None] = {}
        if not fingerprints:
            return known
        with self._tx("read rejected items", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(fingerprints), _CHUNK):
                chunk = fingerprints[start : start + _CHUNK]
                for fingerprint, record_id in tx.run_ids(
                    _select_rejected, chunk, p_sid=sid
                ).fetchall():
                    known[fingerprint] = record_id
        return known

    def find_remote_ids(self, key: StreamKey, remote_ids: Sequence[str]) -> dict[str, str]:
        """remote_id -> id of the stored rows whose record has that ``remote_id``.

        Reads every row of the stream (no index on it): for rejected items only, whose
        answer is remembered with them.
        """
        found: dict[str, str] = {}
        with self._tx("find rows by remote_id", read=True) as tx:
            sid = self._sid(tx, key)
            statement = _SELECT_BY_REMOTE[self.dialect]
            for remote_id in dict.fromkeys(remote_ids):
                pattern = _remote_pattern(self.dialect, remote_id)
                for rid, blob in tx.run(statement, p_pattern=pattern, p_sid=sid).fetchall():
                    record = orjson.loads(bytes(blob))
                    if isinstance(record, dict) and record.get("remote_id") == remote_id:
                        found[remote_id] = rid
                        break
        return found

    def count_unidentified(self, key: StreamKey) -> int:
        """Items the current scan rejected that no stored row is known for."""
        with self._tx("count unidentified rejected items", read=True) as tx:
            return int(tx.one(_COUNT_UNIDENTIFIED, p_sid=self._sid(tx, key))[0])

    def rejected_count(self, key: StreamKey) -> int:
        """Distinct bad contents the stream dead-lettered and still meets (for status)."""
        with self._tx("count rejected items", read=True) as tx:
            return int(tx.one(_COUNT_REJECTED, p_sid=self._sid(tx, key))[0])

    def begin_deletes(self, key: StreamKey) -> StreamState:
        """Every page of a full scan is committed: move on to the delete phase."""
        with self._tx("begin deletes") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_BEGIN_DELETES, p_sid=sid)
            return self._state(tx, key)

    def count_missing(self, key: StreamKey) -> tuple[int, int]:
        """(rows the current scan did not see, all rows) of the stream."""
        with self._tx("count missing rows", read=True) as tx:
            missing, total = tx.one(_COUNT_MISSING, p_sid=self._sid(tx, key))
            return int(missing or 0), int(total)

    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows the current scan did not see, in id order."""
        with self._tx("list missing rows", read=True) as tx:
            sid = self._sid(tx, key)
            return [
                StoredRow(rid, modified_at, digest, orjson.loads(blob))
                for rid, modified_at, digest, blob in tx.run(
                    _MISSING_ROWS, p_sid=sid, p_limit=limit
                ).fetchall()
            ]

    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None:
        """Forget deleted rows and keep their ``deleted`` messages to publish: one transaction."""
        with self._tx("commit deletes") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            self._write_outbox(tx, sid, outbox)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for n in range(2):  # records, then seen
                    tx.run_ids(_delete_rows_n[n], chunk, p_sid=sid)

    def finish_scan(
        self,
        key: StreamKey,
        now: float,
        delete_guard: str | None,
        outbox: Sequence[Message] = (),
    ) -> StreamState:
        """Close the scan and move the watermark to the newest ``modified_at`` it published;
        ``outbox`` (the scan's marker) is kept to publish in the same transaction."""
        with self._tx("finish scan") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            if outbox:
                self._write_outbox(tx, sid, outbox)
            tx.run(_PRUNE_REJECTED, p_sid=sid)
            tx.run(_FINISH_SCAN, p_now=now, p_guard=delete_guard, p_sid=sid)
            return self._state(tx, key)

    def record_error(self, key: StreamKey, message: str, now: float) -> None:
        """Remember why the last pass failed (shown by ``status``); the scan stays resumable."""
        with self._tx("record error") as tx:
            sid = self._sid(tx, key)
            tx.run(_RECORD_ERROR, p_message=message, p_now=now, p_sid=sid)

    def set_connector_state(self, key: StreamKey, state: str | None) -> None:
        """Remember why the sync watcher holds the stream's scans (None: it does not)."""
        with self._tx("record connector state") as tx:
            tx.run(_CONNECTOR_STATE, p_state=state, p_sid=self._sid(tx, key))

    def abandon_scan(self, key: StreamKey) -> None:
        """Drop the scan in progress without moving the watermark."""
        with self._tx("abandon scan") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_ABANDON_SCAN, p_sid=sid)

    def reset(self, key: StreamKey) -> None:
        """Forget a stream entirely: its next pass is an initial sync."""
        with self._tx("reset stream") as tx:
            sid = self._sid(tx, key)
            for statement in _RESET:
                tx.run(statement, p_sid=sid)
            self._sids.pop(key, None)

    def pending(self, key: StreamKey) -> list[Message]:
        """Messages committed with the last page but not yet acknowledged by Kafka."""
        with self._tx("read outbox", read=True) as tx:
            sid = self._sid(tx, key)
            return [
                Message(
                    topic,
                    bytes(rkey),
                    None if value is None else bytes(value),
                    load_headers(bytes(headers)),
                )
                for topic, rkey, value, headers in tx.run(_SELECT_OUTBOX, p_sid=sid).fetchall()
            ]

    def clear_pending(self, key: StreamKey) -> None:
        """Kafka acknowledged the outbox: forget it."""
        with self._tx("clear outbox") as tx:
            sid = self._sid(tx, key)
            # Another replica that took the stream over may have an outbox of its own.
            self._fence(tx, sid, key)
            tx.run(_CLEAR_OUTBOX, p_sid=sid)

    # -- leases, due times, replicas --------------------------------------------------

    def claim(self, key: StreamKey, *, now: float | None = None, due_only: bool = False) -> bool:
        """Take the stream's lease for this process; False while another holder's lease
        is live (or, with ``due_only``, when the stream is not due). Holding it already:
        True. Every write of the stream checks the lease from then on (fencing)."""
        now = time.time() if now is None else now
        token = uuid.uuid4().hex
        try:
            with self._tx("claim stream") as tx:
                sid = self._sid(tx, key)
                name = f"stream:{sid}"
                held = self._leases.get(name)
                if held is not None and not held.lost:
                    return True
                if not self._take(tx, name, token, now):
                    return False
                if due_only:
                    due = tx.one(_SELECT_DUE, p_sid=sid)
                    if due is None or (due[0] is not None and due[0] > now):
                        raise _NotDue  # rolls the lease back
        except _NotDue:
            return False
        self._leases[name] = _Lease(name, token, now, key)
        return True

    def claim_named(self, name: str, *, now: float | None = None) -> bool:
        """Take a fleet-wide lease that is not a stream's (``sync-watcher``)."""
        now = time.time() if now is None else now
        if self.holds(name):
            return True
        token = uuid.uuid4().hex
        with self._tx(f"claim {name}") as tx:
            if not self._take(tx, name, token, now):
                return False
        self._leases[name] = _Lease(name, token, now, None)
        return True

    def holds(self, name: str) -> bool:
        """True while this store holds the named lease (as far as it knows)."""
        lease = self._leases.get(name)
        return lease is not None and not lease.lost

    def _take(self, tx: _Tx, name: str, token: str, now: float) -> bool:
        cursor = tx.run(
            self._take_lease,
            p_name=name,
            p_owner=self.owner,
            p_token=token,
            p_now=now,
            p_expires=now + self.lease_seconds,
            p_host=self.host,
            p_pid=os.getpid(),
        )
        return bool(cursor.rowcount == 1)

    def _fence(self, tx: _Tx, sid: int, key: StreamKey) -> None:
        lease = self._leases.get(f"stream:{sid}")
        if lease is None:
            return  # not claimed here: an operator command, or a single-process test
        if lease.lost:
            # Stays lost until the pass releases it: no later write of it gets through.
            raise LeaseLost(f"{key}: lease lost (not renewed for {self.lease_seconds:g}s)")
        now = time.time()
        confirmed = time.monotonic()
        cursor = tx.run(
            _RENEW,
            p_name=lease.name,
            p_token=lease.token,
            p_now=now,
            p_expires=now + self.lease_seconds,
        )
        if cursor.rowcount != 1:
            lease.lost = True
            raise LeaseLost(f"{key}: lease lost (not renewed for {self.lease_seconds:g}s)")
        lease.confirmed = confirmed

    def check_lease(self, key: StreamKey) -> None:
        """Raise LeaseLost unless this store still holds the stream's lease (renewing it);
        nothing when it holds none. Before a send: a holder that lost its lease while
        paused must not put an older page after the new holder's newer one."""
        lease = next((held for held in list(self._leases.values()) if held.key == key), None)
        if lease is None:
            return
        if lease.lost:
            raise LeaseLost(f"{key}: lease lost (not renewed for {self.lease_seconds:g}s)")
        if time.monotonic() - lease.confirmed < self.lease_seconds / 2:
            return  # renewed moments ago (the page's commit): nobody can hold it yet
        with self._tx("check lease") as tx:
            self._fence(tx, self._sid(tx, key), key)

    def release(
        self,
        key: StreamKey,
        *,
        next_due: float | None = None,
        seen_request: float | None = None,
    ) -> bool:
        """Give the stream's lease back, first setting when it is next due (unless a
        request newer than ``seen_request`` arrived: then it stays due). False when the
        lease was lost: another holder decides the stream's due time then."""
        lease = next((held for held in list(self._leases.values()) if held.key == key), None)
        if lease is None:
            return False
        self._leases.pop(lease.name, None)
        sid = int(lease.name.removeprefix("stream:"))
        with self._tx("release stream") as tx:
            if tx.run(_DROP_LEASE, p_name=lease.name, p_token=lease.token).rowcount != 1:
                return False
            if next_due is not None:
                seen = -1.0 if seen_request is None else seen_request
                tx.run(_SET_DUE, p_sid=sid, p_due=next_due, p_seen=seen)
        return True

    def release_named(self, name: str) -> None:
        """Give a named lease back (shutdown, or the watcher stepping down)."""
        lease = self._leases.pop(name, None)
        if lease is not None:
            with self._tx(f"release {name}") as tx:
                tx.run(_DROP_LEASE, p_name=lease.name, p_token=lease.token)

    def request_scan(
        self, key: StreamKey, now: float, *, sync: str | None = None, resync: bool = False
    ) -> None:
        """Make the stream due now for whichever replica is free: a Bindbee sync (``sync``
        is its start time), a hint, or an operator's ``resync`` (a full, comparing scan;
        shown by ``status`` until one that started after the request completes)."""
        with self._tx("request scan") as tx:
            sid = self._sid(tx, key)
            if resync:
                tx.run(_REQUEST_RESYNC, p_sid=sid, p_now=now)
            else:
                tx.run(_REQUEST, p_sid=sid, p_now=now, p_sync=sync)

    def postpone(self, key: StreamKey, due: float) -> None:
        """Set when the stream is next due without a pass (e.g. its connector is blocked)."""
        with self._tx("postpone stream") as tx:
            tx.run(_POSTPONE, p_sid=self._sid(tx, key), p_due=due)

    def bring_forward(self, key: StreamKey, due: float) -> None:
        """Make the stream due no later than ``due`` (a shorter interval after a reload)."""
        with self._tx("reschedule stream") as tx:
            tx.run(_BRING_FORWARD, p_sid=self._sid(tx, key), p_due=due)

    def ensure_streams(self, keys: Sequence[StreamKey]) -> None:
        """Create the rows of streams the store has not seen yet (due at once)."""
        with self._tx("add streams") as tx:
            for key in keys:
                self._sid(tx, key)

    def fleet(self, now: float) -> FleetView:
        """What a replica needs to claim fairly: due streams no live lease holds, the
        next due time after now, the live leases and the live replicas."""
        with self._tx("read due streams", read=True) as tx:
            due = [
                DueStream(StreamKey(c, m), due_at, state, resync)
                for c, m, due_at, state, resync in tx.run(_DUE_STREAMS, p_now=now).fetchall()
            ]
            next_due = tx.one(_NEXT_DUE, p_now=now)[0]
            held = [LeaseInfo(*row) for row in tx.run(_LIVE_LEASES, p_now=now).fetchall()]
            alive = [
                ReplicaInfo(*row)
                for row in tx.run(_LIVE_REPLICAS, p_since=now - self.lease_seconds).fetchall()
            ]
        return FleetView(due, next_due, held, alive)

    def heartbeat(
        self, now: float, *, workers: int, busy: int, host: str, pid: int, started_at: float
    ) -> list[str]:
        """Announce this replica and renew every lease it holds; returns the names of the
        leases it had and lost (their holders must stop writing: fencing stops them)."""
        held = [lease for lease in list(self._leases.values()) if not lease.lost]
        confirmed = time.monotonic()
        with self._tx("heartbeat") as tx:
            tx.run(
                self._upsert_replica,
                p_owner=self.owner,
                p_host=host,
                p_pid=pid,
                p_started=started_at,
                p_now=now,
                p_workers=workers,
                p_busy=busy,
            )
            tokens = [lease.token for lease in held]
            for start in range(0, len(tokens), _CHUNK):
                tx.run_ids(
                    _renew_held,
                    tokens[start : start + _CHUNK],
                    p_owner=self.owner,
                    p_now=now,
                    p_expires=now + self.lease_seconds,
                )
            mine = dict(tx.run(_MY_LEASES, p_owner=self.owner).fetchall())
            # A replica silent for ten lease periods is gone: forget its row.
            tx.run(_PRUNE_REPLICAS, p_since=now - 10 * self.lease_seconds)
        lost = []
        for lease in held:  # a lease claimed during this heartbeat is not judged by it
            name = lease.name
            if lease.lost:
                continue
            if mine.get(name) != lease.token:
                lease.lost = True  # its holder's next write fails (fencing)
                lost.append(name)
            else:
                lease.confirmed = max(lease.confirmed, confirmed)
        return lost

    def free_dead_leases(self, alive: Callable[[int], bool] = pid_alive) -> int:
        """Free the leases of processes on this host that are gone (a killed `run` or
        `poll` restarted here need not wait out its own lease); returns how many."""
        me = os.getpid()
        with self._tx("free dead leases") as tx:
            dead = {
                pid
                for (pid,) in tx.run(_LOCAL_PIDS, p_host=self.host).fetchall()
                if pid != me and not alive(pid)
            }
            for pid in dead:
                tx.run(_DROP_PID_LEASES, p_host=self.host, p_pid=pid)
                tx.run(_DROP_PID_REPLICAS, p_host=self.host, p_pid=pid)
        return len(dead)

    def free_own_leases(self) -> None:
        """Free the leases held under this replica's name by an earlier life (a restarted
        pod keeps its name): only the daemon does this at start, never a one-off command."""
        with self._tx("free own leases") as tx:
            tx.run(_DROP_OWNER_LEASES, p_owner=self.owner)

    def retire(self) -> None:
        """A clean exit: give back every lease this store holds and drop its replica row."""
        self._leases.clear()
        with self._tx("retire replica") as tx:
            tx.run(_DROP_OWNER_LEASES, p_owner=self.owner)
            tx.run(_DROP_REPLICA, p_owner=self.owner)

    def stream_leases(self) -> dict[StreamKey, LeaseInfo]:
        """Who holds which stream's lease (live or expired, as stored), for ``status``."""
        with self._tx("list leases", read=True) as tx:
            return {
                StreamKey(c, m): LeaseInfo(f"{c}/{m}", owner, acquired, expires)
                for c, m, owner, acquired, expires in tx.run(_STREAM_LEASES).fetchall()
            }

    def replicas(self) -> list[ReplicaInfo]:
        """Every replica row (live or not yet pruned), for ``status``."""
        with self._tx("list replicas", read=True) as tx:
            return [ReplicaInfo(*row) for row in tx.run(_ALL_REPLICAS).fetchall()]

    def ping(self) -> None:
        """Raise StateStoreError unless the store answers a query."""
        with self._tx("ping", read=True) as tx:
            tx.run(_PING).fetchall()

    def close(self) -> None:
        """Give back the leases this store holds, then close the database."""
        if self._leases:
            with contextlib.suppress(StateStoreError), self._tx("release leases") as tx:
                for lease in list(self._leases.values()):
                    tx.run(_DROP_LEASE, p_name=lease.name, p_token=lease.token)
            self._leases.clear()
        with self.backend.guard():
            self.backend.close()

    def _write_outbox(self, tx: _Tx, sid: int, messages: Sequence[Message]) -> None:
        # Replaces the stream's outbox: the pass publishes (and clears) it before going on.
        tx.run(_CLEAR_OUTBOX, p_sid=sid)
        if messages:
            rows = [
                (sid, seq, m.topic, m.key, m.value, dump_headers(m.headers))
                for seq, m in enumerate(messages)
            ]
            for start in range(0, len(rows), _CHUNK):
                tx.values(self._insert_outbox, rows[start : start + _CHUNK])
