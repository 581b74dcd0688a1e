"""`lms-changefeed reset` while `lms-changefeed run` is running (bug 1 of issue 19).

Real parts: `run` and the CLI as subprocesses, the in-process simulator, the session's
tansu broker, a SQLite file. The regular poll is an hour away, so only the reset can make
the daemon scan again: within a claim interval, an initial sync (its ``scan_completed``
marker says so) that carries a record no scan met before the reset, and `status` still
lists the stream. Reset mid-pass, the pass holding the lease is fenced: it stops at its next
write (``lease_lost``) and the initial sync follows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import Daemon, base_config, topic_of, wait_until, write_config
from tests.helpers import new_enrollment
from tests.kafka_read import read_topic

pytestmark = pytest.mark.timeout(180)

ENROLLMENTS = 250
CLAIM_INTERVAL = 0.3
REPO = Path(__file__).resolve().parents[2]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "daemon", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _reset(config: Path) -> None:
    result = _cli(config, "reset", "--connector", "acme", "--model", "enrollments", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("reset acme/enrollments: "), result.stdout


def _start(sim: Any, broker: Any, tmp_path: Path) -> tuple[dict[str, Any], Path, Daemon]:
    config = base_config(sim, broker.bootstrap, tmp_path, poll_interval_seconds=3600)
    config["scheduler"]["claim_interval_seconds"] = CLAIM_INTERVAL
    # No lease expires by itself during the test: only the reset can free the stream.
    config["state"]["lease_seconds"] = 600
    path = write_config(tmp_path, config)
    daemon = Daemon(path)
    first = daemon.wait_for("scan_finished", connector="acme", timeout=90)
    assert first["created"] == ENROLLMENTS, first
    return config, path, daemon


def _initial_sync_after(daemon: Daemon, since: float) -> dict[str, Any]:
    """The ``scan_finished`` line of the first initial sync started after ``since``, once
    its ``scan_completed`` marker is on Kafka."""
    started = daemon.wait_for(
        "scan_started", since=since, connector="acme", kind="full", resumed=False, watermark=None
    )
    finished = daemon.wait_for("scan_finished", since=started["_t"], connector="acme")
    daemon.wait_for("scan_marker_published", since=finished["_t"], connector="acme")
    return finished


def _markers(broker: Any, config: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    records = read_topic(broker.bootstrap, config["kafka"]["control_topic"], expected=expected)
    return [orjson.loads(r.value)["data"] for r in sorted(records, key=lambda r: r.offset)]


def _status_lists_acme(config: Path) -> None:
    result = _cli(config, "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acme/enrollments" in result.stdout, result.stdout


@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_reset_between_passes_gives_the_stream_an_initial_sync(sim, broker, tmp_path) -> None:
    config, path, daemon = _start(sim, broker, tmp_path)
    try:
        # Created before the reset: the initial sync must carry it (created after, it could
        # miss a sync already past its page and wait an hour for the next poll).
        created = sim.create("acme", "enrollments", new_enrollment(sim))["id"]
        reset_at = time.monotonic()
        _reset(path)
        finished = _initial_sync_after(daemon, reset_at)
        assert finished["created"] == ENROLLMENTS + 1, finished
        _status_lists_acme(path)
    finally:
        assert daemon.stop() == 0
    assert not daemon.tracebacks(), daemon.tracebacks()

    first, again = _markers(broker, config, expected=2)
    assert first["initial_sync"] and again["initial_sync"], (first, again)
    assert again["counts"]["created"] == ENROLLMENTS + 1, again
    events = read_topic(broker.bootstrap, topic_of(config, "acme"), expected=2 * ENROLLMENTS + 1)
    subjects = [orjson.loads(r.value)["subject"] for r in events]
    assert subjects.count(created) == 1 and len(events) == 2 * ENROLLMENTS + 1


@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_reset_mid_pass_fences_the_pass_and_an_initial_sync_follows(sim, broker, tmp_path) -> None:
    config, path, daemon = _start(sim, broker, tmp_path)
    try:
        # A resync's pass, held by the simulator at its first page request (12 s: room for a
        # loaded machine to start the `reset` process within it): it holds the
        # stream's lease and has not written its page yet when the reset comes.
        sim.add_fault(delay_ms=12_000, count=1, connector="acme", model="enrollments")
        asked = time.monotonic()
        resync = _cli(path, "resync", "--connector", "acme", "--model", "enrollments")
        assert resync.returncode == 0, resync.stdout + resync.stderr
        daemon.wait_for("scan_started", since=asked, connector="acme", kind="full")
        wait_until(lambda: not sim.state.pending_faults(), 30, "the held page request")
        created = sim.create("acme", "enrollments", new_enrollment(sim))["id"]
        reset_at = time.monotonic()
        _reset(path)
        daemon.wait_for("lease_lost", since=reset_at, connector="acme", timeout=30)
        finished = _initial_sync_after(daemon, reset_at)
        assert finished["created"] == ENROLLMENTS + 1, finished
        # The fenced pass finished nothing: the only scan finished since is the new one.
        assert len(daemon.matching("scan_finished", since=reset_at, connector="acme")) == 1
        _status_lists_acme(path)
    finally:
        assert daemon.stop() == 0
    assert not daemon.tracebacks(), daemon.tracebacks()

    first, again = _markers(broker, config, expected=2)
    assert first["initial_sync"] and again["initial_sync"], (first, again)
    events = read_topic(broker.bootstrap, topic_of(config, "acme"), expected=2 * ENROLLMENTS + 1)
    subjects = [orjson.loads(r.value)["subject"] for r in events]
    assert subjects.count(created) == 1 and len(events) == 2 * ENROLLMENTS + 1
