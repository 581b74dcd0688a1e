"""The state store: one class over SQLite or PostgreSQL, composed of one part per job.

Every method that changes state runs in one transaction, so a crash leaves the store at
a page boundary. The parts, each a mixin over the SQL runner (``sql.StoreCore``) and
lease fencing (``leases.LeaseFencing``):

- ``snapshots``: stored rows, a page's commit, dead-lettered contents;
- ``scans``: a stream's state, scan checkpoints, deletes, the outbox, reset;
- ``seen``: the ids a full scan saw (per page), ``mark_seen`` for other writers;
- ``leases``: claiming, fencing and releasing a stream's or a named lease;
- ``replicas``: the heartbeat, freeing dead processes' leases, leaving the fleet;
- ``due``: the shared schedule (due times, requests, the fleet view);
- ``hints``: webhook hints as durable work, targeted reads' commits, walk spacing.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import select

from daemon.errors import StateStoreError
from daemon.state.due import DueTimes
from daemon.state.hints import Hints
from daemon.state.leases import DROP_LEASE
from daemon.state.replicas import Replicas
from daemon.state.scans import Scans
from daemon.state.schema import streams
from daemon.state.seen import SeenIds
from daemon.state.snapshots import Snapshots

__all__ = ["StateStore"]

# Reads the streams table, so a database without the store's tables does not pass.
_PING = select(streams.c.sid).limit(1)


class StateStore(Hints, Snapshots, Scans, SeenIds, Replicas, DueTimes):
    """The snapshot store over one backend (``dialects.SqliteBackend`` or ``PostgresBackend``).

    ``StateStore(backend, owner=..., lease_seconds=...)``: ``owner`` names this process
    in the leases it takes (default: host name and pid).
    """

    def __repr__(self) -> str:
        return f"StateStore({self.dialect}, {self.backend.where!r})"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def ping(self) -> None:
        """Raise StateStoreError unless the store answers a query."""
        with self._tx("ping", read=True) as tx:
            tx.run(_PING).fetchall()

    def close(self) -> None:
        """Give back the leases this store holds, then close the database."""
        if self._leases:
            with contextlib.suppress(StateStoreError), self._tx("release leases") as tx:
                for lease in list(self._leases.values()):
                    tx.run(DROP_LEASE, p_name=lease.name, p_token=lease.token)
            self._leases.clear()
        with self.backend.guard():
            self.backend.close()
