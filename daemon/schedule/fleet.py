"""How many due streams this replica may claim now: its fair share of the fleet's work.

Pure: the scheduler reads the shared schedule (``StateStore.fleet``) and asks here. A
replica takes at most ``ceil(work / live replicas)`` streams (work = due streams nobody
holds + streams being scanned) while another live replica has a free worker, so a
replica that starts later gets work at the next round instead of none; when every other
replica is busy, it takes whatever its free workers allow (idle capacity helps, never
waits).
"""

from __future__ import annotations

import math

from daemon.models import FleetView

STREAM_LEASE = "stream:"
WATCHER_LEASE = "sync-watcher"


def claim_budget(view: FleetView, me: str, free_workers: int, candidates: int) -> int:
    """How many of ``candidates`` (due streams nobody holds) this replica claims now."""
    if free_workers <= 0 or candidates <= 0:
        return 0
    alive = {r.replica: r for r in view.replicas}
    others_free = any(r.workers > r.busy for name, r in alive.items() if name != me)
    if not others_free:
        return min(free_workers, candidates)
    replicas = len(alive.keys() | {me})
    stream_leases = [lease for lease in view.leases if lease.name.startswith(STREAM_LEASE)]
    mine = sum(1 for lease in stream_leases if lease.owner == me)
    share = math.ceil((candidates + len(stream_leases)) / replicas)
    return max(0, min(free_workers, candidates, share - mine))
