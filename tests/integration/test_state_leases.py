"""Leases and the shared schedule in the state store, on SQLite and on PostgreSQL.

Two stores on one database stand for two replicas (each with its own name). Times are
passed in where the store takes them, so expiry is tested without waiting for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import LeaseLost
from daemon.models import StreamKey
from daemon.state import StateStore, open_store

KEY = StreamKey("acme", "enrollments")
OTHER = StreamKey("globex", "enrollments")
LEASE = 30.0


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "changefeed.db")
    return request.getfixturevalue("pg_schema")


@pytest.fixture
def pair(target: str) -> Iterator[tuple[StateStore, StateStore]]:
    one = open_store(target, owner="one")
    two = open_store(target, owner="two")
    for store in (one, two):
        store.lease_seconds = LEASE
    try:
        yield one, two
    finally:
        one.close()
        two.close()


def test_a_live_lease_is_exclusive_and_an_expired_one_is_free(pair) -> None:
    one, two = pair
    now = time.time()
    assert one.claim(KEY, now=now) and one.claim(KEY, now=now)  # holding it already: True
    assert not two.claim(KEY, now=now + LEASE - 1)
    assert two.claim(OTHER, now=now)
    # Not renewed for a whole lease: anyone may take it.
    assert two.claim(KEY, now=now + LEASE + 1)
    assert two.stream_leases()[KEY].owner == "two"


def test_a_pass_that_lost_its_lease_writes_nothing(pair) -> None:
    one, two = pair
    now = time.time()
    assert one.claim(KEY, now=now - LEASE - 1)  # taken long ago, never renewed since
    assert two.claim(KEY)
    before = two.state(KEY)
    with pytest.raises(LeaseLost):
        one.begin_scan(KEY, "full", None, now)
    with pytest.raises(LeaseLost):  # and it stays lost: no write gets through
        one.commit_page(KEY, [], [], "cursor", None)
    assert two.state(KEY) == before
    # The new holder writes as usual.
    two.begin_scan(KEY, "full", None, now)
    assert two.state(KEY).scan_number == before.scan_number + 1


def test_the_heartbeat_renews_held_leases_and_reports_lost_ones(pair) -> None:
    one, two = pair
    start = time.time() - LEASE + 2  # expires two seconds from now unless renewed
    assert one.claim(KEY, now=start)
    assert one.claim(OTHER, now=start - 10)  # already expired: a paused replica's
    assert two.claim(OTHER)  # taken over by another replica
    lost = one.heartbeat(time.time(), workers=4, busy=2, host="h", pid=1, started_at=start)
    assert len(lost) == 1 and lost[0].startswith("stream:")
    assert one.stream_leases()[KEY].expires_at > time.time() + LEASE - 5  # renewed
    with pytest.raises(LeaseLost):  # the holder of the lost one is fenced
        one.commit_page(OTHER, [], [], None, None)
    one.commit_page(KEY, [], [], None, None)  # the renewed one writes
    view = two.fleet(time.time())
    assert [r.replica for r in view.replicas] == ["one"]
    assert (view.replicas[0].workers, view.replicas[0].busy) == (4, 2)


def test_due_times_are_shared_and_a_request_during_a_pass_keeps_the_stream_due(pair) -> None:
    one, two = pair
    one.ensure_streams([KEY])
    now = time.time()
    assert [d.key for d in two.fleet(now).due] == [KEY]  # a new stream is due at once
    assert one.claim(KEY, now=now, due_only=True)
    assert two.fleet(now).due == []  # held: not offered to anyone else
    seen = one.state(KEY).requested_at
    assert one.release(KEY, next_due=now + 300, seen_request=seen)
    assert not two.claim(KEY, now=now + 1, due_only=True)  # not due for 300 s
    assert two.fleet(now + 1).next_due == pytest.approx(now + 300)
    # A request makes it due now for whichever replica is free.
    two.request_scan(KEY, now + 2, sync="2026-12-01T00:00:00.000000Z")
    assert one.claim(KEY, now=now + 2, due_only=True)
    seen = one.state(KEY).requested_at
    assert one.state(KEY).requested_sync == "2026-12-01T00:00:00.000000Z"
    two.request_scan(KEY, now + 3)  # arrives while the pass runs
    one.release(KEY, next_due=now + 300, seen_request=seen)
    assert [d.key for d in two.fleet(now + 4).due] == [KEY]  # one trailing pass


def test_resync_is_pending_until_a_full_scan_started_after_it_completes(pair) -> None:
    one, _ = pair
    now = time.time()
    one.begin_scan(KEY, "full", None, now - 10)  # started before the request
    one.request_scan(KEY, now - 5, resync=True)
    assert one.state(KEY).resync_requested_at == pytest.approx(now - 5)
    one.finish_scan(KEY, now - 4, None)
    assert one.state(KEY).resync_requested_at is not None  # that scan began too early
    one.begin_scan(KEY, "incremental", "x", now - 3)
    one.finish_scan(KEY, now - 2, None)
    assert one.state(KEY).resync_requested_at is not None  # not a full scan
    one.begin_scan(KEY, "full", None, now - 1)
    one.finish_scan(KEY, now, None)
    assert one.state(KEY).resync_requested_at is None


def test_a_dead_local_process_leases_are_freed_at_once(target: str) -> None:
    # A real process takes a lease and is killed: its pid is gone, its lease is not.
    code = (
        "import sys, os, signal; from daemon.state import open_store; "
        "from daemon.models import StreamKey; "
        f"s = open_store({target!r}, owner='victim'); "
        "assert s.claim(StreamKey('acme', 'enrollments')); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=60)
    assert done.returncode == -9
    survivor = open_store(target, owner="survivor")
    try:
        assert not survivor.claim(KEY)  # live for another lease period
        assert survivor.free_dead_leases() == 1
        assert survivor.claim(KEY)
        assert survivor.free_dead_leases() == 0  # its own pid is alive
    finally:
        survivor.close()


def test_closing_a_store_gives_its_leases_back(pair) -> None:
    one, two = pair
    assert one.claim(KEY) and one.claim_named("sync-watcher")
    assert not two.claim_named("sync-watcher")
    one.close()
    assert two.claim(KEY) and two.claim_named("sync-watcher")
