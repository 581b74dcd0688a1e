"""Walk spacing: the syncs since a stream's last completed walk, counted once per sync.

The stream row's walk columns count the syncs completed since the last completed walk
(``count_sync``: once per sync, by its ``last_sync_start_time``, whichever replica asks,
before or after a restart), keep the current spacing (``full_scan_every_syncs: auto``)
and a forced walk; ``finish_scan`` (``scans``) starts the count again and keeps the walk's
``hint_missed``. A sync not walked is covered by its hinted reads (``cover_sync``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy import bindparam, select

from daemon.models import StreamKey, WalkState
from daemon.state.leases import LeaseFencing
from daemon.state.schema import hints, streams
from daemon.state.sql import SID, Tx, stream_update

_SYNC = bindparam("p_sync", type_=sa.Text)
_WALK_STATE = select(
    streams.c.walk_syncs,
    streams.c.walk_counted_sync,
    streams.c.walk_spacing,
    streams.c.walk_forced_at,
    streams.c.hint_missed,
    streams.c.hint_missed_total,
).where(streams.c.sid == SID)
# Idempotent per sync: a sync already counted (by any replica, before a restart) is not.
_COUNT_SYNC = (
    stream_update()
    .where(sa.or_(streams.c.walk_counted_sync.is_(None), streams.c.walk_counted_sync != _SYNC))
    .values(walk_syncs=streams.c.walk_syncs + 1, walk_counted_sync=_SYNC)
)
_COVER_SYNC = stream_update().values(sync_bookmark=_SYNC)
_NOW = bindparam("p_now", type_=sa.Double)
# The latest force is kept (an older walk's end must not clear a newer one), and the
# stream is made due now: the refused sync is walked, not the next one.
_FORCE_WALK = stream_update().values(
    walk_forced_at=_NOW,
    due_at=sa.case(
        (sa.or_(streams.c.due_at.is_(None), streams.c.due_at > _NOW), _NOW),
        else_=streams.c.due_at,
    ),
)
_WALK_HINTS = (
    select(sa.func.count())
    .select_from(hints)
    .where(
        hints.c.connector_id == bindparam("p_connector_id", type_=sa.Text),
        hints.c.received_at >= bindparam("p_since", type_=sa.Double),
        hints.c.walk == 1,
    )
)


class Walks(LeaseFencing):
    """The walk-spacing count of each stream."""

    def walk_state(self, key: StreamKey) -> WalkState:
        """The stream's walk spacing as the store has it."""
        with self._tx("read walk state", read=True) as tx:
            return self._walk_state(tx, self._sid(tx, key))

    def _walk_state(self, tx: Tx, sid: int) -> WalkState:
        syncs, counted, spacing, forced_at, missed, total = tx.one(_WALK_STATE, p_sid=sid)
        return WalkState(int(syncs), counted, int(spacing), forced_at, missed, int(total))

    def count_sync(self, key: StreamKey, sync: str) -> WalkState:
        """Count the completed sync ``sync`` (its start time) once; the walk state after."""
        with self._tx("count sync") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_COUNT_SYNC, p_sync=sync, p_sid=sid)
            return self._walk_state(tx, sid)

    def cover_sync(self, key: StreamKey, sync: str) -> None:
        """The sync is handled without a walk (its hinted ids are read): move the sync
        bookmark to it, so it asks for no pass of its own."""
        with self._tx("cover sync") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            tx.run(_COVER_SYNC, p_sync=sync, p_sid=sid)

    def force_walk(self, keys: Sequence[StreamKey], now: float) -> None:
        """A hint could not be read (413): the streams walk now, and again after a walk
        in progress that started before ``now`` (they are made due now)."""
        with self._tx("force walk") as tx:
            for key in keys:
                tx.run(_FORCE_WALK, p_sid=self._sid(tx, key), p_now=now)

    def hints_unreadable(self, key: StreamKey, connector_id: str, since: float) -> bool:
        """Whether a hint received at or after ``since`` could not be read by id: one of the
        connector's stored as "walk instead" (over max_hint_ids, an unsafe id), or a 413
        that forced the stream's walk. A walk over such a window cannot measure the hints."""
        with self._tx("read unreadable hints", read=True) as tx:
            sid = self._sid(tx, key)
            forced_at = self._walk_state(tx, sid).forced_at
            if forced_at is not None and forced_at >= since:
                return True
            found = tx.one(_WALK_HINTS, p_connector_id=connector_id, p_since=since)
            return int(found[0]) > 0
