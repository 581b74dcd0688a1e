"""Due times: the schedule every replica shares, and the requests that move it.

Each stream's row says when it is next due (``due_at``; NULL: now). A pass's release
sets the next due time (``leases``); a request (a Bindbee sync, a hint, an operator's
``resync``) makes the stream due at once; ``fleet`` is what a replica reads to claim
its fair share of the streams due now.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy import and_, bindparam, case, func, or_, select, update

from daemon.models import DueStream, FleetView, LeaseInfo, ReplicaInfo, StreamKey
from daemon.state.leases import IS_STREAM_LEASE, LIVE, LeaseFencing
from daemon.state.replicas import LIVE_REPLICAS
from daemon.state.schema import leases, streams
from daemon.state.sql import NOW, SID, stream_update

_DUE_AT = bindparam("p_due", type_=sa.Double)
_DUE = or_(streams.c.due_at.is_(None), streams.c.due_at <= NOW)
# Streams due now that no live lease holds, oldest due first.
_DUE_STREAMS = (
    select(
        streams.c.connector,
        streams.c.model,
        streams.c.due_at,
        streams.c.connector_state,
        streams.c.resync_requested_at,
    )
    .select_from(streams.outerjoin(leases, and_(IS_STREAM_LEASE, LIVE)))
    .where(_DUE, leases.c.name.is_(None))
    .order_by(func.coalesce(streams.c.due_at, 0.0), streams.c.sid)
)
_NEXT_DUE = select(func.min(streams.c.due_at)).where(streams.c.due_at > NOW)
_LIVE_LEASES = select(
    leases.c.name, leases.c.owner, leases.c.acquired_at, leases.c.expires_at
).where(LIVE)
_EARLIER = or_(streams.c.due_at.is_(None), streams.c.due_at > NOW)
_REQUEST = stream_update().values(
    requested_at=NOW,
    requested_sync=func.coalesce(bindparam("p_sync", type_=sa.Text), streams.c.requested_sync),
    due_at=case((_EARLIER, NOW), else_=streams.c.due_at),
)
_REQUEST_RESYNC = stream_update().values(
    requested_at=NOW,
    resync_requested_at=func.coalesce(streams.c.resync_requested_at, NOW),
    due_at=case((_EARLIER, NOW), else_=streams.c.due_at),
)
_POSTPONE = stream_update().values(due_at=_DUE_AT)
_BRING_FORWARD = (
    update(streams).where(streams.c.sid == SID, streams.c.due_at > _DUE_AT).values(due_at=_DUE_AT)
)


class DueTimes(LeaseFencing):
    """When each stream is next due, and what the fleet may claim now."""

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
                for row in tx.run(LIVE_REPLICAS, p_since=now - self.lease_seconds).fetchall()
            ]
        return FleetView(due, next_due, held, alive)
