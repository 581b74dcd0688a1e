"""The fair-share rule (pure): how many due streams a replica claims now."""

from __future__ import annotations

from daemon.models import FleetView, LeaseInfo, ReplicaInfo
from daemon.schedule.fleet import claim_budget


def replica(name: str, workers: int, busy: int) -> ReplicaInfo:
    return ReplicaInfo(name, "host", 1, 0.0, 0.0, workers, busy)


def leases(**held: int) -> list[LeaseInfo]:
    return [
        LeaseInfo(f"stream:{owner}{n}", owner, 0.0, 1e12)
        for owner, count in held.items()
        for n in range(count)
    ]


def test_alone_a_replica_takes_what_its_workers_allow() -> None:
    view = FleetView([], None, [], [replica("a", 4, 0)])
    assert claim_budget(view, "a", free_workers=4, candidates=30) == 4
    assert claim_budget(view, "a", free_workers=0, candidates=30) == 0
    assert claim_budget(view, "a", free_workers=4, candidates=0) == 0


def test_with_idle_peers_a_replica_takes_its_share_only() -> None:
    view = FleetView([], None, [], [replica("a", 32, 0), replica("b", 32, 0), replica("c", 32, 0)])
    assert claim_budget(view, "a", free_workers=32, candidates=30) == 10
    # A replica that started later: the early one holds 12, so it keeps to its share.
    view = FleetView([], None, leases(a=12), [replica("a", 32, 12), replica("b", 32, 0)])
    assert claim_budget(view, "a", free_workers=20, candidates=12) == 0
    assert claim_budget(view, "b", free_workers=32, candidates=12) == 12


def test_no_replica_holds_back_for_peers_that_would_not_take_the_work() -> None:
    # a and b hold 5 each (10 workers), c holds 1 (1 worker, busy): 4 streams due. The
    # share is 5: a and b are at it, c has no free worker. Someone must take them.
    view = FleetView(
        [],
        None,
        leases(a=5, b=5, c=1),
        [replica("a", 10, 5), replica("b", 10, 5), replica("c", 1, 1)],
    )
    assert claim_budget(view, "a", free_workers=5, candidates=4) == 4
    assert claim_budget(view, "b", free_workers=5, candidates=4) == 4
