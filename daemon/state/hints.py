"""Hints: Bindbee's ``connector_data_modified`` ids as durable work, and walk spacing.

A verified delivery is written here before it is answered 200 (``add_hint``; a replay
has the same dedupe key and adds nothing). A stream's targeted read takes the hints its
connector received since the stream's last completed walk started and that it has not
read (``unread_hints``), reads their ids by id, and commits the rows, their events
(the outbox) and "read" in one fenced transaction (``commit_reads``), so each hint is
read once per stream, fleet-wide, and a crash leaves either all or none of a batch.

The walk-spacing count (``walks``) and ``hint_status`` (what ``status`` shows) sit beside.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import and_, bindparam, case, delete, exists, func, select

from daemon.models import (
    Hint,
    HintStatus,
    Message,
    RejectWrite,
    RowWrite,
    StreamKey,
)
from daemon.state.scans import write_outbox
from daemon.state.schema import hint_reads, hints, records, streams
from daemon.state.seen import write_seen_extra
from daemon.state.snapshots import REJECTED_COLUMNS, Snapshots
from daemon.state.sql import CHUNK, NOW, SID, id_params, row_params, stream_update
from daemon.state.walks import Walks

_CONNECTOR_ID = bindparam("p_connector_id", type_=sa.Text)
_SINCE = bindparam("p_since", type_=sa.Double)
_HINT_COLUMNS = ("connector_id", "sync_id", "dedupe", "ids", "walk", "received_at")
_PRUNE_EVERY = 60.0  # seconds between two prunings of old hints (per process)
_READ = exists().where(hint_reads.c.hid == hints.c.hid, hint_reads.c.sid == SID)
_OF_CONNECTOR = and_(hints.c.connector_id == _CONNECTOR_ID, hints.c.received_at >= _SINCE)
_UNREAD = (
    select(*(hints.c[c] for c in ("hid", "connector_id", "sync_id", "ids", "walk", "received_at")))
    .where(_OF_CONNECTOR, ~_READ)
    .order_by(hints.c.hid)
)
_COUNT_UNREAD = select(func.count()).select_from(hints).where(_OF_CONNECTOR, ~_READ)
_HINTED_IDS = select(hints.c.ids).where(_OF_CONNECTOR)
_HINTED_IDS_AFTER = select(hints.c.hid, hints.c.ids).where(
    _OF_CONNECTOR, hints.c.hid > bindparam("p_after", type_=sa.Integer)
)
_HINTS_SINCE = select(func.count()).select_from(hints).where(_OF_CONNECTOR)
_LAST_WALK = select(streams.c.last_full_scan_started_at).where(streams.c.sid == SID)
_SCAN = select(streams.c.scan_number).where(streams.c.sid == SID)
_EARLIER = sa.or_(streams.c.due_at.is_(None), streams.c.due_at > NOW)
# A hint makes the stream due now; the due time it pushed aside is kept, so a pass that
# only reads the hint (an interval stream between its polls) puts it back.
_REQUEST_HINT = stream_update().values(
    requested_at=NOW,
    due_before_hint=case(
        (streams.c.due_at > NOW, streams.c.due_at), else_=streams.c.due_before_hint
    ),
    due_at=case((_EARLIER, NOW), else_=streams.c.due_at),
)
_SELECT_HINT_DUE = select(streams.c.due_before_hint).where(streams.c.sid == SID)
_CLEAR_HINT_DUE = stream_update().values(due_before_hint=None)
_PRUNE_HINTS = delete(hints).where(hints.c.received_at < bindparam("p_before", type_=sa.Double))
_PRUNE_READS = delete(hint_reads).where(~exists().where(hints.c.hid == hint_reads.c.hid))
# The Bindbee ids under which a stream has read hints: ``status`` (another process) does
# not know a configured connector's id, but the hints the stream read say it.
_READ_CONNECTOR_IDS = (
    select(hints.c.connector_id)
    .select_from(hints.join(hint_reads, hint_reads.c.hid == hints.c.hid))
    .where(hint_reads.c.sid == SID)
    .distinct()
)


def _locate(count: int) -> sa.Select[Any]:
    """(id, model) of the stored records of one connector among ``count`` ids."""
    return (
        select(records.c.id, streams.c.model)
        .select_from(records.join(streams, records.c.sid == streams.c.sid))
        .where(
            streams.c.connector == bindparam("p_connector", type_=sa.Text),
            records.c.id.in_(id_params(count)),
        )
    )


def _delete_ids(table: sa.Table) -> Callable[[int], sa.Delete]:
    def build(count: int) -> sa.Delete:
        return delete(table).where(table.c.sid == SID, table.c.id.in_(id_params(count)))

    return build


_DELETE_RECORDS = _delete_ids(records)


class Hints(Snapshots, Walks):
    """Hints, targeted reads' commits, and the walk-spacing count."""

    @functools.cached_property
    def _insert_hint(self) -> sa.Insert:
        # Not ``p_...``: a parameter named ``p_id*`` is taken for an id list (``sql.id_params``).
        values = {c: bindparam(f"h_{c}", type_=hints.c[c].type) for c in _HINT_COLUMNS}
        stmt = self.backend.insert(hints).values(**values)
        return stmt.on_conflict_do_nothing(index_elements=[hints.c.dedupe])

    @functools.cached_property
    def _insert_read(self) -> Callable[[int], sa.Insert]:
        insert = self.backend.insert

        def build(count: int) -> sa.Insert:
            stmt = insert(hint_reads).values(
                row_params(hint_reads, ("hid", "sid", "done_at"), count)
            )
            return stmt.on_conflict_do_nothing(index_elements=[hint_reads.c.hid, hint_reads.c.sid])

        return build

    # -- receiving -------------------------------------------------------------------

    def add_hint(
        self,
        connector_id: str,
        sync_id: str | None,
        dedupe: str,
        ids: Sequence[str],
        *,
        walk: bool,
        now: float,
        retention_seconds: float,
    ) -> bool:
        """Keep a verified delivery's ids; False when its dedupe key is known (a replay).
        Hints older than ``retention_seconds`` go in the same transaction, at most once a
        minute per process (not on every delivery)."""
        with self._tx("store hint") as tx:
            cursor = tx.run(
                self._insert_hint,
                h_connector_id=connector_id,
                h_sync_id=sync_id,
                h_dedupe=dedupe,
                h_ids=orjson.dumps(list(ids)),
                h_walk=1 if walk else 0,
                h_received_at=now,
            )
            added = cursor.rowcount == 1
            pruned = getattr(self, "_hints_pruned_at", None)
            prune = pruned is None or not 0 <= now - pruned < _PRUNE_EVERY
            if prune:
                tx.run(_PRUNE_HINTS, p_before=now - retention_seconds)
                tx.run(_PRUNE_READS)
        if prune:
            self._hints_pruned_at = now
        return added

    def request_hint(self, keys: Sequence[StreamKey], now: float) -> None:
        """Make the streams due now for a hint (the due time they had is kept)."""
        with self._tx("request hint read") as tx:
            for key in keys:
                tx.run(_REQUEST_HINT, p_sid=self._sid(tx, key), p_now=now)

    def take_hint_due(self, key: StreamKey) -> float | None:
        """The due time a hint pushed aside (None: none), forgotten from now on."""
        with self._tx("take hint due time") as tx:
            sid = self._sid(tx, key)
            row = tx.one(_SELECT_HINT_DUE, p_sid=sid)
            if row is not None and row[0] is not None:
                tx.run(_CLEAR_HINT_DUE, p_sid=sid)
            return None if row is None else row[0]

    # -- reading ---------------------------------------------------------------------

    def unread_hints(self, key: StreamKey, connector_id: str) -> list[Hint]:
        """Hints of the connector received since the stream's last completed walk started
        that the stream has not read; none before its first full scan completed."""
        with self._tx("read hints", read=True) as tx:
            sid = self._sid(tx, key)
            since = tx.one(_LAST_WALK, p_sid=sid)[0]
            if since is None:
                return []
            found = tx.run(
                _UNREAD, p_sid=sid, p_connector_id=connector_id, p_since=since
            ).fetchall()
        return [
            Hint(hid, cid, sync, tuple(orjson.loads(bytes(blob))), bool(walk), received)
            for hid, cid, sync, blob, walk, received in found
        ]

    def hinted_ids(self, connector_id: str, since: float) -> set[str]:
        """Every id the connector's hints received at or after ``since`` named."""
        with self._tx("read hinted ids", read=True) as tx:
            rows = tx.run(_HINTED_IDS, p_connector_id=connector_id, p_since=since).fetchall()
        return {rid for (blob,) in rows for rid in orjson.loads(bytes(blob))}

    def hinted_ids_after(self, connector_id: str, since: float, after: int) -> tuple[set[str], int]:
        """The ids named by the connector's hints received at or after ``since`` whose
        ``hid`` is above ``after``, and the highest ``hid`` met (``after`` if none)."""
        with self._tx("read hinted ids", read=True) as tx:
            rows = tx.run(
                _HINTED_IDS_AFTER, p_connector_id=connector_id, p_since=since, p_after=after
            ).fetchall()
        ids = {rid for _hid, blob in rows for rid in orjson.loads(bytes(blob))}
        return ids, max((int(hid) for hid, _blob in rows), default=after)

    def hints_since(self, connector_id: str, since: float) -> int:
        """How many hints of the connector were received at or after ``since``."""
        with self._tx("count hints", read=True) as tx:
            return int(tx.one(_HINTS_SINCE, p_connector_id=connector_id, p_since=since)[0])

    def locate(self, connector: str, ids: Sequence[str]) -> dict[str, str]:
        """id -> model of the ids stored in any stream of ``connector`` (its store key)."""
        found: dict[str, str] = {}
        with self._tx("locate ids", read=True) as tx:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                found.update(tx.run_ids(_locate, chunk, p_connector=connector).fetchall())
        return found

    def commit_reads(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        deleted: Sequence[str],
        outbox: Sequence[Message],
        rejected: Sequence[RejectWrite] = (),
        read_hints: Sequence[int] = (),
        now: float = 0.0,
    ) -> None:
        """A targeted read's batch: its rows, deletes, messages (the outbox), dead-lettered
        contents and, on its last batch, the hints it read: one fenced transaction. The
        rows written count as seen by a full scan in progress."""
        trained: tuple[int, bytes] | None = None
        with self._tx("commit targeted reads") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            write_outbox(tx, sid, outbox)
            scan = tx.one(_SCAN, p_sid=sid)[0]
            if rejected:
                rows = [(sid, r.fingerprint, r.first_seen, r.reason, r.record_id, scan)
                        for r in {r.fingerprint: r for r in rejected}.values()]  # fmt: skip
                assert len(rows[0]) == len(REJECTED_COLUMNS)
                tx.values(self._upsert_rejected, rows)
            if writes:
                self._prepare_codec(tx, sid)
                self._write_rows(tx, sid, writes)
                trained = self._train(tx, sid, writes)
                # Seen by a full scan in progress: its end must not take them for deleted.
                write_seen_extra(tx, self.dialect, sid, [w.id for w in writes])
            for start in range(0, len(deleted), CHUNK):
                tx.run_ids(_DELETE_RECORDS, deleted[start : start + CHUNK], p_sid=sid)
            if read_hints:
                tx.values(self._insert_read, [(hid, sid, now) for hid in read_hints])
        if trained is not None:  # only once committed: blobs name it from now on
            self.codec.add(*trained, sid)
        if writes or deleted:
            self._missing.pop(sid, None)  # seen or gone now: not the delete phase's any more

    def hint_status(self, key: StreamKey, connector_id: str | None = None) -> HintStatus:
        """What ``status`` shows: spacing, syncs since the last walk, ``hint_missed``
        (last walk, total) and the hints not read yet (``connector_id``: Bindbee's id of
        the stream's connector; None: the ids of the hints the stream has read)."""
        with self._tx("read hint status", read=True) as tx:
            sid = self._sid(tx, key)
            walk = self._walk_state(tx, sid)
            since = tx.one(_LAST_WALK, p_sid=sid)[0]
            if connector_id is not None:
                known = [connector_id]
            else:
                known = [row[0] for row in tx.run(_READ_CONNECTOR_IDS, p_sid=sid).fetchall()]
            unread = 0
            for cid in known if since is not None else []:
                found = tx.one(_COUNT_UNREAD, p_sid=sid, p_connector_id=cid, p_since=since)
                unread += int(found[0])
        return HintStatus(
            walk.spacing, walk.syncs, walk.hint_missed, walk.hint_missed_total, unread
        )
