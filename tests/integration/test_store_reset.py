"""`reset` on a store a running daemon uses, on SQLite and on PostgreSQL.

Two stores on one database: ``daemon`` stands for the running replica (it holds the
stream's lease mid-scan), ``operator`` for the `reset` command. The reset must fence the
holder (its next write raises LeaseLost and changes nothing), keep the stream known to
every process (same row, same id) and make it due now, free for the next claim.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import LeaseLost
from daemon.models import Message, RowWrite, StreamKey
from daemon.state import StateStore, open_store

KEY = StreamKey("acme", "enrollments")
OTHER = StreamKey("globex", "enrollments")
LEASE = 600.0  # never expires by itself during a test: only the reset frees it
MODIFIED = "2025-01-01T00:00:00.000000Z"


def write(rid: str) -> RowWrite:
    return RowWrite(rid, MODIFIED, f"h-{rid}", {"id": rid})


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "changefeed.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def stores(target: str) -> Iterator[tuple[StateStore, StateStore]]:
    daemon = open_store(target, owner="daemon")
    operator = open_store(target, owner="operator")
    daemon.lease_seconds = operator.lease_seconds = LEASE
    try:
        yield daemon, operator
    finally:
        daemon.close()
        operator.close()


def _mid_scan(daemon: StateStore) -> None:
    """A finished initial sync, then a second scan holding the lease with a page committed."""
    now = time.time()
    assert daemon.claim(KEY, now=now)
    daemon.begin_scan(KEY, "full", None, now)
    daemon.commit_page(KEY, [write("a"), write("b")], ["a", "b"], None, MODIFIED)
    daemon.finish_scan(KEY, now, None)
    daemon.begin_scan(KEY, "full", None, now)
    page = [Message("topic", b"c", b"{}")]
    daemon.commit_page(KEY, [write("c")], ["a", "b", "c"], "cursor-1", MODIFIED, page)


def test_reset_fences_the_lease_holder_and_its_writes_change_nothing(stores) -> None:
    daemon, operator = stores
    _mid_scan(daemon)
    operator.reset(KEY)
    after_reset = operator.state(KEY)
    assert after_reset.records == 0 and after_reset.watermark is None
    assert after_reset.last_full_scan_at is None and not after_reset.in_progress
    assert operator.pending(KEY) == []

    # The holder's next write of any kind is refused, and nothing it tries lands.
    with pytest.raises(LeaseLost):
        daemon.commit_page(KEY, [write("d")], ["d"], "cursor-2", MODIFIED)
    with pytest.raises(LeaseLost):  # and it stays lost
        daemon.finish_scan(KEY, time.time(), None)
    with pytest.raises(LeaseLost):
        daemon.check_lease(KEY)
    assert operator.state(KEY) == after_reset
    assert operator.load_rows(KEY, ["a", "b", "c", "d"]) == {}
    # Its release finds the lease gone: the due time the reset set stays.
    assert not daemon.release(KEY, next_due=time.time() + 3600)
    assert operator.state(KEY).due_at is None


def test_a_reset_stream_stays_known_and_is_due_now_for_any_replica(stores) -> None:
    daemon, operator = stores
    _mid_scan(daemon)
    daemon.release(KEY, next_due=time.time() + 3600)  # the next regular pass: an hour away
    assert operator.claim(OTHER)  # another stream's lease is not the reset's business
    assert KEY not in {due.key for due in operator.fleet(time.time()).due}
    operator.reset(KEY)

    assert [s.key for s in operator.states()] == [KEY, OTHER]  # `status` lists it
    due = {d.key: d for d in daemon.fleet(time.time()).due}
    assert KEY in due and due[KEY].due_at is None
    assert operator.stream_leases().keys() == {OTHER}
    # The running replica claims it again (its cached stream id still names the stream's
    # row) and its initial sync writes where every other process reads.
    assert daemon.claim(KEY, due_only=True)
    state = daemon.begin_scan(KEY, "full", None, time.time())
    assert state.last_full_scan_at is None  # an initial sync
    daemon.commit_page(KEY, [write("x")], ["x"], None, MODIFIED)
    daemon.finish_scan(KEY, time.time(), None)
    assert operator.state(KEY).records == 1
    assert set(operator.load_rows(KEY, ["a", "x"])) == {"x"}


def test_a_reset_while_nobody_holds_the_stream_needs_no_lease(stores) -> None:
    daemon, operator = stores
    _mid_scan(daemon)
    assert daemon.release(KEY)
    operator.reset(KEY)
    assert daemon.claim(KEY, due_only=True)
    # Its scan numbers keep counting: nothing kept about an earlier scan matches a new one.
    before = operator.state(KEY).scan_number
    assert daemon.begin_scan(KEY, "full", None, time.time()).scan_number == before + 1
