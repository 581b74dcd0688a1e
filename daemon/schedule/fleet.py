"""How many due streams this replica may claim now: its fair share of the fleet's work.

Pure: the scheduler reads the shared schedule (``StateStore.fleet``) and asks here. A
replica takes at most ``ceil(work / live replicas)`` streams (work = due streams nobody
holds + streams being scanned), and of the streams due at this moment only its part
(``ceil(due / live replicas)``), while another live replica has a free worker, so a
replica that starts later gets work at the next round instead of none; when every other
replica is busy, it takes whatever its free workers allow (idle capacity helps, never
waits).
"""

from __future__ import annotations

import math
from collections import Counter

from daemon.models import FleetView
from daemon.state.leases import STREAM_LEASE_PREFIX

WATCHER_LEASE = "sync-watcher"


def claim_budget(view: FleetView, me: str, free_workers: int, candidates: int) -> int:
    """How many of ``candidates`` (due streams nobody holds) this replica claims now."""
    if free_workers <= 0 or candidates <= 0:
        return 0
    alive = {r.replica: r for r in view.replicas}
    replicas = len(alive.keys() | {me})
    stream_leases = [lease for lease in view.leases if lease.name.startswith(STREAM_LEASE_PREFIX)]
    held = Counter(lease.owner for lease in stream_leases)
    share = math.ceil((candidates + len(stream_leases)) / replicas)
    # Hold back only for a replica that will take the rest: one with a free worker and
    # below its own share (a busy or full one would leave the streams waiting).
    others_take = any(
        r.workers > r.busy and held[name] < share for name, r in alive.items() if name != me
    )
    if not others_take:
        return min(free_workers, candidates)
    # And of what is due right now, this replica's part only: the first replica to look
    # must not take every stream that fell due at once while the others have room.
    wave = math.ceil(candidates / replicas)
    return max(0, min(free_workers, candidates, wave, share - held[me]))
