"""Replicas sharing one PostgreSQL state store: leases, fair claims, failover, fencing.

Every replica is a real ``lms-changefeed run`` process on the machine's PostgreSQL, the
simulator and tansu. Who scanned what, and when, comes from the replicas' own log lines
(``scan_started`` / ``scan_finished`` carry the replica, the stream and a timestamp from
the one clock of this machine).
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    Daemon,
    base_config,
    each_at_once,
    figures,
    marked_through,
    topic_of,
    wait_until,
    write_config,
)
from tests.helpers import new_enrollment
from tests.invariant import check

LEASE = 3.0  # state.lease_seconds: failover within seconds


def _connectors(count: int) -> dict[str, str]:
    return {f"c{n:02d}": f"tok_c{n:02d}" for n in range(count)}


def fleet_config(
    sim: Any, broker: Any, tmp_path: Path, url: str, *, workers: int, **model: Any
) -> dict[str, Any]:
    config = base_config(sim, broker.bootstrap, tmp_path, tuple(sim.tokens), **model)
    config["state"] = {"url": url, "lease_seconds": LEASE}
    config["scheduler"].update(max_workers=workers, claim_interval_seconds=0.2)
    return config


@contextmanager
def replicas(
    config: dict[str, Any], tmp_path: Path, names: list[str]
) -> Iterator[dict[str, Daemon]]:
    started: dict[str, Daemon] = {}
    try:
        for name in names:
            started[name] = start_replica(config, tmp_path, name)
        yield started
    finally:
        stop_all(list(started.values()))


def stop_all(daemons: list[Daemon], timeout: float = 30.0) -> None:
    """Stop replicas as ``Daemon.stop`` does, all at once: SIGCONT and SIGTERM to every one
    still running, then wait for each (SIGKILL past ``timeout``)."""
    running = [daemon for daemon in daemons if daemon.proc.poll() is None]
    for daemon in running:
        with_signal(daemon, signal.SIGCONT)
        with_signal(daemon, signal.SIGTERM)
    for daemon in running:
        try:
            daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.wait(10)


def start_replica(config: dict[str, Any], tmp_path: Path, name: str) -> Daemon:
    own = {**config, "scheduler": {**config["scheduler"], "replica_id": name}}
    return Daemon(write_config(tmp_path, own, f"{name}.yaml"))


def with_signal(daemon: Daemon, sig: signal.Signals) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(sig)


def _at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def scans(daemons: dict[str, Daemon]) -> dict[str, list[tuple[float, float | None, str]]]:
    """Per stream: (started, ended or None, replica) of every scan, by start time. A scan
    ends when it finishes or fails (a failed pass gives its lease back; on a loaded machine
    a broker may not answer a replica's bootstrap in time, and another replica retries)."""
    out: dict[str, list[tuple[float, float | None, str]]] = defaultdict(list)
    for name, daemon in daemons.items():
        open_: dict[str, float] = {}
        for line in daemon.matching("scan_started|scan_finished|scan_failed"):
            stream = line["connector"]
            assert line.get("replica") == name, line
            if line["event"] == "scan_started":
                if stream in open_:
                    out[stream].append((open_[stream], None, name))  # a pass cut short
                open_[stream] = _at(line)
            elif stream in open_:
                out[stream].append((open_.pop(stream), _at(line), name))
        for stream, start in open_.items():
            out[stream].append((start, None, name))
    for stream in out:
        out[stream].sort()
    return out


def finished(daemons: dict[str, Daemon]) -> Counter[str]:
    return Counter(
        line["connector"] for d in daemons.values() for line in d.matching("scan_finished")
    )


def assert_never_two_at_once(
    history: dict[str, list[tuple[float, float | None, str]]],
    daemons: dict[str, Daemon] | None = None,
) -> None:
    for stream, runs in history.items():
        for (start, end, who), (later, _, other) in itertools.pairwise(runs):
            if end is None and daemons is not None:
                cut = [
                    {k: v for k, v in line.items() if k != "_t"}
                    for line in daemons[who].lines
                    if line.get("connector") == stream and _at(line) >= start
                ][:6]
                raise AssertionError(
                    f"{stream}: {who}'s scan from {start:.3f} did not finish: {cut}"
                )
            assert end is not None and later >= end, (
                f"{stream}: {other} started at {later:.3f} while {who}'s scan "
                f"from {start:.3f} ran until {end}"
            )


@pytest.mark.sim(connectors=_connectors(30), enrollments=20)
def test_three_replicas_share_thirty_streams(sim, broker, pg_schema: str, tmp_path) -> None:
    interval = 1.0
    config = fleet_config(sim, broker, tmp_path, pg_schema, workers=4)
    with replicas(config, tmp_path, ["r1", "r2", "r3"]) as daemons:
        wait_until(
            lambda: len(finished(daemons)) == 30 and min(finished(daemons).values()) >= 3,
            90,
            "three scans of every stream",
        )
    history = scans(daemons)
    assert len(history) == 30
    assert_never_two_at_once(history, daemons)
    runs = Counter(who for runs in history.values() for _, _, who in runs)
    total = sum(runs.values())
    figures(
        "three_replicas", passes=total, **{f"share_{n}": round(runs[n] / total, 2) for n in daemons}
    )
    assert all(runs[name] >= 0.15 * total for name in daemons), runs
    for stream, stream_runs in history.items():
        # The shared due time: the next scan starts an interval after the last one ended,
        # whichever replica runs it (minus the log's rounding, plus nothing).
        for (_, end, _), (later, _, _) in itertools.pairwise(stream_runs):
            assert end is not None and later - end >= interval - 0.05, (stream, end, later)
    for daemon in daemons.values():
        assert not daemon.tracebacks()


@pytest.mark.sim(connectors=_connectors(6), enrollments=400)
def test_killed_replica_streams_fail_over_within_a_lease(
    sim, broker, pg_schema: str, tmp_path
) -> None:
    # Slow pages (4 per scan) so a scan is in flight when the busiest replica dies.
    config = fleet_config(sim, broker, tmp_path, pg_schema, workers=2, full_scan_interval_seconds=1)
    with replicas(config, tmp_path, ["r1", "r2", "r3"]) as daemons:
        wait_until(lambda: len(finished(daemons)) == 6, 90, "the initial syncs")
        sim.add_fault(delay_ms=150, count=100_000)
        for connector in sim.tokens:
            sim.update(connector, "enrollments", sim.ids(connector, "enrollments")[0],
                       {"end_date": "2037-01-01T00:00:00Z"})  # fmt: skip
            sim.create(connector, "enrollments", new_enrollment(sim, connector))

        def mid_scan() -> str | None:
            """The replica with the most scans in flight, once one has any."""
            in_flight = Counter(
                who for runs in scans(daemons).values() for _, end, who in runs[-1:] if end is None
            )
            return in_flight.most_common(1)[0][0] if in_flight else None

        victim = wait_until(mid_scan, 30, "a replica in the middle of a scan")
        killed_at = time.monotonic()
        daemons[victim].kill()
        survivors = {n: d for n, d in daemons.items() if n != victim}

        def delivered(connector: str) -> Any:
            return wait_until(
                lambda: (
                    r
                    if (
                        r := check(
                            broker.bootstrap,
                            topic_of(config, connector),
                            sim,
                            connector,
                            quiet_seconds=0.5,
                        )
                    ).ok
                    else None
                ),
                LEASE + 30,
                f"{connector}'s changes on Kafka after {victim} died",
            )

        # Every connector's topic watched at once (each wait as before, on its own thread).
        reports = each_at_once(list(sim.tokens), delivered)
        for report in reports.values():
            assert report.conflicts == [] and report.invented == []
        figures(
            "failover",
            lease_s=LEASE,
            all_changes_delivered_s=round(time.monotonic() - killed_at, 2),
            redeliveries=report.redeliveries,
        )
        assert_never_two_at_once(scans(survivors))
    for daemon in survivors.values():
        assert not daemon.tracebacks()


@pytest.mark.sim(connectors=_connectors(4), enrollments=400)
def test_paused_replica_writes_nothing_after_its_lease_expired(
    sim, broker, pg_schema: str, tmp_path
) -> None:
    config = fleet_config(sim, broker, tmp_path, pg_schema, workers=4, full_scan_interval_seconds=1)
    with replicas(config, tmp_path, ["r1"]) as daemons:
        wait_until(lambda: len(finished(daemons)) == 4, 60, "the initial syncs")
        first = daemons["r1"]
        # One request held by the API for 4 s: r1 is surely in the middle of a scan when
        # it is paused right after that request arrived.
        sim.add_fault(delay_ms=4000, count=1)
        wait_until(lambda: not sim.state.pending_faults(), 30, "r1's slow request")
        with_signal(first, signal.SIGSTOP)
        second = start_replica(config, tmp_path, "r2")
        daemons["r2"] = second
        # r2 takes every stream once r1's leases expire, and completes scans of them.
        wait_until(
            lambda: len({line["connector"] for line in second.matching("scan_finished")}) == 4,
            LEASE + 40,
            "r2 finishing a scan of every stream",
        )
        resumed = time.monotonic()
        with_signal(first, signal.SIGCONT)
        # The pass that waited for the slow answer finds its lease gone at its next write
        # (the page's commit) and stops.
        lost = first.wait_for("lease_lost", timeout=30, since=resumed)
        assert lost["connector"] in sim.tokens
        sim.clear_faults()
        # Every topic read at once (each read as before, on its own thread).
        reports = each_at_once(
            list(sim.tokens),
            lambda c: check(
                broker.bootstrap,
                topic_of(config, c),
                sim,
                c,
                through=marked_through(list(daemons.values()), broker.bootstrap, config, c),
            ),
        )
        for report in reports.values():
            report.assert_holds()


@pytest.mark.sim(connectors=_connectors(12), enrollments=20)
def test_late_replica_takes_a_share_within_a_lease(sim, broker, pg_schema: str, tmp_path) -> None:
    config = fleet_config(sim, broker, tmp_path, pg_schema, workers=12)
    with replicas(config, tmp_path, ["early"]) as daemons:
        wait_until(lambda: len(finished(daemons)) == 12, 60, "the first replica's scans")
        late = start_replica(config, tmp_path, "late")
        daemons["late"] = late
        started = late.wait_for("scheduler_started", timeout=30)["_t"]
        late.wait_for("scan_finished", timeout=LEASE + 5, since=started)
        wait_until(
            lambda: len({line["connector"] for line in late.matching("scan_finished")}) >= 4,
            LEASE + 10,
            "the late replica scanning a share of the streams",
        )
    assert_never_two_at_once(scans(daemons))
