"""Replicas: each running process's heartbeat, which renews its leases and frees dead ones.

A replica's row (its name, host, pid, workers and busy workers) is what makes claims
fair (``due.fleet``); the heartbeat renews every lease the replica holds and reports the
ones it lost. A process on this host that is gone has its leases freed at once by the
next process here, and a restarted replica (same name) frees its earlier life's leases.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import bindparam, delete, select, update

from daemon.models import ReplicaInfo
from daemon.state.leases import EXPIRES, OWNER, LeaseFencing, pid_alive
from daemon.state.schema import leases, replicas
from daemon.state.sql import CHUNK, NOW, id_params

_SINCE = bindparam("p_since", type_=sa.Double)
_HOST = bindparam("p_host", type_=sa.Text)
_PID = bindparam("p_pid", type_=sa.Integer)
_REPLICA_COLUMNS = (
    replicas.c.replica,
    replicas.c.host,
    replicas.c.pid,
    replicas.c.started_at,
    replicas.c.heartbeat_at,
    replicas.c.workers,
    replicas.c.busy,
)
LIVE_REPLICAS = (
    select(*_REPLICA_COLUMNS).where(replicas.c.heartbeat_at >= _SINCE).order_by(replicas.c.replica)
)
_ALL_REPLICAS = select(*_REPLICA_COLUMNS).order_by(replicas.c.replica)


def _renew_held(count: int) -> sa.Update:
    # By token, not by owner: a one-off command (`poll`) run with the same replica name
    # must not have its leases kept alive by the daemon's heartbeat.
    return (
        update(leases)
        .where(leases.c.owner == OWNER, leases.c.token.in_(id_params(count)))
        .values(expires_at=EXPIRES)
    )


_MY_LEASES = select(leases.c.name, leases.c.token).where(leases.c.owner == OWNER)
_DROP_OWNER_LEASES = delete(leases).where(leases.c.owner == OWNER)
_LOCAL_PIDS = select(leases.c.pid).where(leases.c.host == _HOST).distinct()
_DROP_PID_LEASES = delete(leases).where(leases.c.host == _HOST, leases.c.pid == _PID)
_DROP_PID_REPLICAS = delete(replicas).where(replicas.c.host == _HOST, replicas.c.pid == _PID)
_DROP_REPLICA = delete(replicas).where(replicas.c.replica == OWNER)
_PRUNE_REPLICAS = delete(replicas).where(replicas.c.heartbeat_at < _SINCE)


class Replicas(LeaseFencing):
    """This replica's row in the fleet, and the leases it renews or frees."""

    @functools.cached_property
    def _upsert_replica(self) -> sa.Insert:
        beat = self.backend.insert(replicas).values(
            replica=OWNER,
            host=_HOST,
            pid=_PID,
            started_at=bindparam("p_started", type_=sa.Double),
            heartbeat_at=NOW,
            workers=bindparam("p_workers", type_=sa.Integer),
            busy=bindparam("p_busy", type_=sa.Integer),
        )
        return beat.on_conflict_do_update(
            index_elements=[replicas.c.replica],
            set_={c: beat.excluded[c] for c in ("host", "pid", "heartbeat_at", "workers", "busy")},
        )

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
            for start in range(0, len(tokens), CHUNK):
                tx.run_ids(
                    _renew_held,
                    tokens[start : start + CHUNK],
                    p_owner=self.owner,
                    p_now=now,
                    p_expires=now + self.lease_seconds,
                )
            mine = dict(tx.run(_MY_LEASES, p_owner=self.owner).fetchall())
            # A replica silent for ten lease periods is gone: forget its row.
            tx.run(_PRUNE_REPLICAS, p_since=now - 10 * self.lease_seconds)
        lost = []
        for lease in held:  # a lease claimed during this heartbeat is not judged by it
            if lease.lost:
                continue
            if mine.get(lease.name) != lease.token:
                lease.lost = True  # its holder's next write fails (fencing)
                lost.append(lease.name)
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

    def replicas(self) -> list[ReplicaInfo]:
        """Every replica row (live or not yet pruned), for ``status``."""
        with self._tx("list replicas", read=True) as tx:
            return [ReplicaInfo(*row) for row in tx.run(_ALL_REPLICAS).fetchall()]
