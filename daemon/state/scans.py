"""Scans: a stream's checkpoint from begin to finish, its deletes, its outbox, and reset.

A scan is numbered; its pages are committed by ``snapshots``; a full scan then finds the
rows it did not see (the delete phase) and ``finish_scan`` moves the watermark and the
sync bookmark. The outbox holds the last committed page's messages until Kafka has
them. ``reset`` forgets a stream's data but keeps its row, so every process that knows
the stream (its id, its schedule) keeps working with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import and_, bindparam, case, delete, func, or_, select

from daemon.models import Message, ScanKind, StreamKey, StreamState
from daemon.state.codec import pack_messages, unpack_messages
from daemon.state.leases import DROP_ANY_LEASE, LeaseFencing, stream_lease_name
from daemon.state.schema import outbox, records, rejected, scan_ids, streams
from daemon.state.seen import DROP_SCAN_IDS
from daemon.state.sql import CHUNK, NOW, SID, Tx, id_params, stream_update

CURRENT_SCAN = select(streams.c.scan_number).where(streams.c.sid == SID).scalar_subquery()
_CLEAR_SCAN: dict[str, Any] = {
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
_BEGIN_SCAN = stream_update().values(
    scan_number=streams.c.scan_number + 1,
    scan_kind=bindparam("p_kind", type_=sa.Text),
    scan_phase="pages",
    scan_cursor=None,
    scan_pages=0,
    scan_since=bindparam("p_since", type_=sa.Text),
    scan_started_at=NOW,
    scan_max_modified=None,
    scan_sync=bindparam("p_sync", type_=sa.Text),
)
_BEGIN_DELETES = stream_update().values(scan_phase="deletes", scan_cursor=None)
# SET expressions read the row as it was before the update: scan_kind is still the scan's.
_FINISH_SCAN = stream_update().values(
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
    last_full_scan_at=case((_FULL, NOW), else_=streams.c.last_full_scan_at),
    delete_guard=case((_FULL, bindparam("p_guard", type_=sa.Text)), else_=streams.c.delete_guard),
    # The bookmark moves only here: every page of the scan is committed and published.
    sync_bookmark=case(
        (and_(_FULL, streams.c.scan_sync.is_not(None)), streams.c.scan_sync),
        else_=streams.c.sync_bookmark,
    ),
    last_scan_at=NOW,
    last_error=None,
    last_error_at=None,
    # An operator's resync is done once a full scan that started after it completes.
    resync_requested_at=case(
        (and_(_FULL, streams.c.resync_requested_at <= streams.c.scan_started_at), None),
        else_=streams.c.resync_requested_at,
    ),
    **_CLEAR_SCAN,
)
# A completed walk (full scan): the count of syncs since the last walk starts again, the
# spacing (``full_scan_every_syncs``) and the walk's ``hint_missed`` are kept.
_MISSED = bindparam("p_missed", type_=sa.Integer)
_WALK_DONE = stream_update().values(
    walk_syncs=0,
    # A forced walk is done once a walk that started at or after the force completes.
    walk_forced_at=case(
        (streams.c.walk_forced_at <= streams.c.scan_started_at, None),
        else_=streams.c.walk_forced_at,
    ),
    walk_spacing=bindparam("p_spacing", type_=sa.Integer),
    hint_missed=_MISSED,
    hint_missed_total=streams.c.hint_missed_total + func.coalesce(_MISSED, 0),
)
_RECORD_ERROR = stream_update().values(
    last_error=bindparam("p_message", type_=sa.Text), last_error_at=NOW
)
_ABANDON_SCAN = stream_update().values(**_CLEAR_SCAN)
_CONNECTOR_STATE = stream_update().values(connector_state=bindparam("p_state", type_=sa.Text))
# A completed full scan met every bad item still there: forget the ones it did not meet
# (fixed or deleted upstream), so the same content going bad again is dead-lettered anew.
_PRUNE_REJECTED = delete(rejected).where(
    rejected.c.sid == SID,
    rejected.c.scan != CURRENT_SCAN,
    select(streams.c.scan_kind).where(streams.c.sid == SID).scalar_subquery() == "full",
)


def _delete_ids(table: sa.Table) -> Callable[[int], sa.Delete]:
    def build(count: int) -> sa.Delete:
        return delete(table).where(table.c.sid == SID, table.c.id.in_(id_params(count)))

    return build


_DELETE_ROWS = _delete_ids(records)
_LIST_STREAMS = select(streams.c.connector, streams.c.model).order_by(
    streams.c.connector, streams.c.model
)
_SELECT_OUTBOX = select(outbox.c.messages).where(outbox.c.sid == SID)
# One statement to replace the outbox (SQLite and PostgreSQL spell the upsert alike): a
# page's commit sends one statement fewer than a DELETE and an INSERT.
PUT_OUTBOX = sa.text(
    "INSERT INTO changefeed_outbox (sid, messages) VALUES (:p_sid, :p_messages)"
    " ON CONFLICT (sid) DO UPDATE SET messages = excluded.messages"
).bindparams(SID, bindparam("p_messages", type_=sa.LargeBinary))
CLEAR_OUTBOX = delete(outbox).where(outbox.c.sid == SID)
# Only while the stream's scan is where the caller last committed it: a commit that failed
# on the wire may still have landed, and then the outbox holds its page, not sent yet.
_CLEAR_OUTBOX_AT = CLEAR_OUTBOX.where(
    sa.exists().where(
        streams.c.sid == SID,
        streams.c.scan_number == bindparam("p_scan", type_=sa.Integer),
        streams.c.scan_pages == bindparam("p_pages", type_=sa.Integer),
    )
)
# Reset: the stream's data goes, its row stays (with its id, which every process caches)
# as a fresh row would be, due now. scan_number keeps counting, so nothing remembered
# about an earlier scan (a scan's progress, a late write) matches a new one; the
# connector's state and the last sync requested describe Bindbee, not this data: kept.
_RESET_DATA = tuple(
    delete(table).where(table.c.sid == SID) for table in (outbox, rejected, records, scan_ids)
)
_RESET_STREAM = stream_update().values(
    watermark=None,
    last_full_scan_started_at=None,
    last_full_scan_at=None,
    last_scan_at=None,
    delete_guard=None,
    last_error=None,
    last_error_at=None,
    sync_bookmark=None,
    resync_requested_at=None,
    due_at=None,
    **_CLEAR_SCAN,
)


def write_outbox(tx: Tx, sid: int, messages: Sequence[Message]) -> None:
    """Make ``messages`` the stream's outbox, replacing what it held: a pass commits more
    only once Kafka acknowledged what the outbox holds (the next commit is its clear)."""
    if messages:
        tx.run(PUT_OUTBOX, p_sid=sid, p_messages=pack_messages(messages))
    else:
        tx.run(CLEAR_OUTBOX, p_sid=sid)


class Scans(LeaseFencing):
    """A stream's state, its scans' checkpoints, deletes, outbox and reset."""

    def state(self, key: StreamKey, *, count: bool = True) -> StreamState:
        """The stream's state, with its record count (``count=False``: 0, without counting
        the stream's rows: what a pass or the scheduler reads, many times a day)."""
        with self._tx("read stream state") as tx:
            return self._state(tx, key, count=count)

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
            with tx.pipeline(self.dialect):  # one round trip (``Tx.pipeline``)
                fenced = self._fence_sent(tx, sid, key)
                tx.run(DROP_SCAN_IDS, p_sid=sid)  # an abandoned scan's, if any
                tx.run(_BEGIN_SCAN, p_kind=kind, p_since=since, p_now=now, p_sync=sync, p_sid=sid)
            fenced()
            return self._state(tx, key)

    def begin_deletes(self, key: StreamKey) -> StreamState:
        """Every page of a full scan is committed: move on to the delete phase."""
        with self._tx("begin deletes") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_BEGIN_DELETES, p_sid=sid)
            return self._state(tx, key)

    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None:
        """Forget deleted rows and keep their ``deleted`` messages to publish: one transaction."""
        with self._tx("commit deletes") as tx:
            sid = self._sid(tx, key)
            with tx.pipeline(self.dialect):  # one round trip (``Tx.pipeline``)
                fenced = self._fence_sent(tx, sid, key)
                write_outbox(tx, sid, outbox)
                for start in range(0, len(ids), CHUNK):
                    chunk = ids[start : start + CHUNK]
                    tx.run_ids(_DELETE_ROWS, chunk, p_sid=sid)
            fenced()
        self._forget_missing(sid, ids)

    def finish_scan(
        self,
        key: StreamKey,
        now: float,
        delete_guard: str | None,
        outbox: Sequence[Message] = (),
        walked: tuple[int, int | None] | None = None,
    ) -> StreamState:
        """Close the scan and move the watermark to the newest ``modified_at`` it published;
        ``outbox`` (the scan's marker) is kept to publish in the same transaction.
        ``walked``: a full scan's (walk spacing from now, hint_missed or None)."""
        with self._tx("finish scan") as tx:
            sid = self._sid(tx, key)
            with tx.pipeline(self.dialect):  # one round trip (``Tx.pipeline``)
                fenced = self._fence_sent(tx, sid, key)
                if outbox:
                    write_outbox(tx, sid, outbox)
                if walked is not None:
                    tx.run(_WALK_DONE, p_spacing=walked[0], p_missed=walked[1], p_sid=sid)
                tx.run(_PRUNE_REJECTED, p_sid=sid)
                tx.run(DROP_SCAN_IDS, p_sid=sid)
                tx.run(_FINISH_SCAN, p_now=now, p_guard=delete_guard, p_sid=sid)
            fenced()
            return self._state(tx, key)

    def record_error(self, key: StreamKey, message: str, now: float) -> None:
        """Remember why the last pass failed (shown by ``status``); the scan stays resumable."""
        with self._tx("record error") as tx:
            tx.run(_RECORD_ERROR, p_message=message, p_now=now, p_sid=self._sid(tx, key))

    def set_connector_state(self, key: StreamKey, state: str | None) -> None:
        """Remember why the sync watcher holds the stream's scans (None: it does not)."""
        with self._tx("record connector state") as tx:
            tx.run(_CONNECTOR_STATE, p_state=state, p_sid=self._sid(tx, key))

    def abandon_scan(self, key: StreamKey) -> None:
        """Drop the scan in progress without moving the watermark."""
        with self._tx("abandon scan") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(DROP_SCAN_IDS, p_sid=sid)
            tx.run(_ABANDON_SCAN, p_sid=sid)

    def reset(self, key: StreamKey) -> None:
        """Forget a stream's records, scans and outbox: its next pass is an initial sync,
        due now. Safe while a daemon runs: whoever holds the stream's lease loses it (its
        next write raises LeaseLost and changes nothing), and the stream stays known."""
        with self._tx("reset stream") as tx:
            sid = self._sid(tx, key)
            # The lease first, as a pass's own writes do: a holder's transaction either
            # committed before this one or fails its fence after it (and no deadlock).
            tx.run(DROP_ANY_LEASE, p_name=stream_lease_name(sid))
            for statement in _RESET_DATA:
                tx.run(statement, p_sid=sid)
            tx.run(_RESET_STREAM, p_sid=sid)

    def pending(self, key: StreamKey) -> list[Message]:
        """Messages committed with the last page but not yet acknowledged by Kafka."""
        with self._tx("read outbox", read=True) as tx:
            row = tx.one(_SELECT_OUTBOX, p_sid=self._sid(tx, key))
        return [] if row is None else unpack_messages(bytes(row[0]))

    def clear_pending(self, key: StreamKey, *, at: tuple[int, int] | None = None) -> None:
        """Kafka acknowledged the outbox: forget it. ``at``: only if the stream's scan is
        still (scan number, pages committed), as the caller's last commit left it."""
        with self._tx("clear outbox") as tx:
            sid = self._sid(tx, key)
            with tx.pipeline(self.dialect):  # one round trip (``Tx.pipeline``)
                # Another replica that took the stream over may have an outbox of its own.
                fenced = self._fence_sent(tx, sid, key)
                if at is None:
                    tx.run(CLEAR_OUTBOX, p_sid=sid)
                else:
                    tx.run(_CLEAR_OUTBOX_AT, p_sid=sid, p_scan=at[0], p_pages=at[1])
            fenced()
