"""Faults, the state store: locked or read-only SQLite, then recovery. The invariant: a
replayed topic equals the source's current data.

Real parts only: a tansu broker (a private one, ``own_broker``, wherever a test pauses or
stops it), the simulator over loopback, the daemon as a subprocess (`run` or `poll`) with its
SQLite file. Every scenario ends with ``invariant.check(...).assert_holds()``; figures
(redeliveries, recovery times, requests) are printed on one ``FIGURES`` line per test
(``pytest -s``). Shared drivers live in tests/harness.py and tests/invariant.py.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import (
    PAGE,
    Daemon,
    base_config,
    figures,
    marked_through,
    scan_pages,
    stream_state,
    topic_of,
    wait_until,
    write_config,
)
from tests.invariant import check

# -- 6. the state store cannot be written ------------------------------------------------------


def _immutable(paths: list[Path], on: bool) -> None:
    """chattr +i/-i: even root cannot write the files, also through open descriptors."""
    for path in paths:
        if on or path.exists():
            subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True, timeout=10)


@pytest.fixture
def can_make_immutable(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    try:
        _immutable([probe], True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available here (needs root on ext4/xfs/btrfs)")
    _immutable([probe], False)


ENROLLMENTS = 2000


@pytest.mark.parametrize("how", ["locked", "read_only"])
@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_unwritable_state_store_then_recovery(
    sim, broker, tmp_path: Path, how: str, request: pytest.FixtureRequest
) -> None:
    if how == "read_only":
        request.getfixturevalue("can_make_immutable")
    config = base_config(sim, broker.bootstrap, tmp_path)
    if how == "read_only":
        # The failed pass cannot release its lease (the file is unwritable): the stream is
        # claimable again once the lease expires. A short lease keeps that wait short.
        config["state"]["lease_seconds"] = 3
    path = write_config(tmp_path, config)
    db = tmp_path / "state.db"
    files = [db, db.with_name("state.db-wal")]  # never -shm: it is mmapped (SIGBUS)
    sim.add_fault(delay_ms=40, count=100_000, connector="acme")  # 20 pages, ~60 ms each
    daemon = Daemon(path, "run")
    lock = None
    try:
        wait_until(lambda: scan_pages(db) >= 5, 60, "5 pages")
        broken = time.monotonic()
        if how == "locked":
            lock = sqlite3.connect(db, isolation_level=None, timeout=30)
            lock.execute("BEGIN EXCLUSIVE")
        else:
            _immutable(files, True)
        try:
            stuck_at = scan_pages(db)
            failed = daemon.wait_for("scan_failed", timeout=60, since=broken)
            stuck = stream_state(db, "acme")
            assert daemon.proc.poll() is None
            if how == "read_only":
                # A restart while the file is unwritable refuses with one clear line.
                refused = subprocess.run(
                    [sys.executable, "-m", "daemon", "poll", "--config", str(path)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
        finally:
            if lock is not None:
                lock.execute("ROLLBACK")
                lock.close()
            else:
                _immutable(files, False)
        fixed = time.monotonic()
        finished = daemon.wait_for("scan_finished", timeout=120, since=fixed)
    finally:
        assert daemon.stop() == 0
        if lock is None and how == "read_only":
            _immutable(files, False)
    assert "StateStoreError" in failed["error"] and str(db) in failed["error"], failed
    assert stuck is not None and stuck["scan_pages"] >= stuck_at  # nothing committed undone
    if how == "read_only":
        assert refused.returncode == 1, refused
        assert f"acme/enrollments: FAILED: state store {db}" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert not daemon.tracebacks()
    resumed = daemon.matching("scan_started", since=fixed)
    assert resumed and resumed[0]["resumed"], resumed
    # Through the last scan the daemon completed (its scan_completed marker).
    through = marked_through(daemon, broker.bootstrap, config, "acme")
    report = check(broker.bootstrap, topic_of(config, "acme"), sim, "acme", through=through)
    report.assert_holds()
    # A page is committed (with its events in the outbox) before it is published, so a
    # failed write publishes nothing. Only a failure to clear the outbox after Kafka acked
    # sends that page again, on the next pass.
    # A page Kafka acknowledged stays in the outbox until the next page's commit replaces
    # it: a store failing there cannot clear it either (``outbox_clear_failed``).
    failed_clears = [
        line
        for line in daemon.matching("scan_failed|outbox_clear_failed")
        if "clear outbox failed" in line["error"]
    ]
    if how == "read_only" and "clear outbox failed" in refused.stderr:
        failed_clears.append({})
    assert report.redeliveries <= PAGE * len(failed_clears), (report.redeliveries, failed_clears)
    figures(
        f"state_store[{how}]",
        failed_passes=len(daemon.matching("scan_failed")),
        failed_outbox_clears=len(failed_clears),
        error=failed["error"].rsplit(": ", 1)[-1],
        recovered_after_s=round(finished["_t"] - fixed, 2),
        redeliveries=report.redeliveries,
    )
