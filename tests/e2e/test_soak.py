"""Soak: a busy source, random API faults and a SIGKILL; afterwards the topics equal the source.

Runs ``CHANGEFEED_SOAK_SECONDS`` (default 12) of ~50 changes/s across two connectors, an API
fault from the fault table every 1.2-3 s, and a SIGKILL + restart of the daemon midway.
Once the source is quiet, each stream's next full scan must leave its topic equal to the
source. ``CHANGEFEED_SOAK_SECONDS=120 pytest -s -m slow tests/e2e/test_soak.py`` for a longer run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from bindbee_sim import SimServer
from tests.harness import (
    API_FAULTS,
    Daemon,
    base_config,
    each_at_once,
    figures,
    marked_through,
    topic_of,
    wait_fresh_full_scan,
    write_config,
)
from tests.helpers import new_enrollment
from tests.invariant import check

SOAK_SECONDS = float(os.environ.get("CHANGEFEED_SOAK_SECONDS", "12"))
# Seconds between two armed faults (uniform). With the default seed and 12 s, the faults
# armed are the six a 20 s soak armed at 2-5 s gaps: cursor loop, no items (twice),
# malformed JSON, 503 burst, dropped connections.
FAULT_GAP = (1.2, 3.0)
CHANGES_PER_SECOND = 50
ENROLLMENTS = 2000  # per connector
CONNECTORS = {"acme": "tok_a", "globex": "tok_g"}


class Mutator(threading.Thread):
    """Random creates, updates and deletes at a steady rate until stopped."""

    def __init__(self, sim: SimServer, rng: random.Random, rate: float) -> None:
        super().__init__(daemon=True)
        self.sim, self.rng, self.period = sim, rng, 1 / rate
        self.ids = {c: sim.ids(c, "enrollments") for c in CONNECTORS}
        self.done = threading.Event()
        self.counts = {"created": 0, "updated": 0, "deleted": 0}

    def run(self) -> None:
        rng, sim = self.rng, self.sim
        next_at = time.monotonic()
        while not self.done.is_set():
            connector = rng.choice(list(CONNECTORS))
            ids = self.ids[connector]
            roll = rng.random()
            if roll < 0.5:
                rid = rng.choice(ids)
                day, hour = rng.randrange(1, 28), rng.randrange(24)
                start = f"2033-04-{day:02d}T{hour:02d}:00:00Z"
                sim.update(connector, "enrollments", rid, {"start_date": start})
                self.counts["updated"] += 1
            elif roll < 0.75:
                created = sim.create(connector, "enrollments", new_enrollment(sim, connector))
                ids.append(created["id"])
                self.counts["created"] += 1
            else:
                rid = ids.pop(rng.randrange(len(ids)))
                sim.delete(connector, "enrollments", rid)
                self.counts["deleted"] += 1
            next_at += self.period
            self.done.wait(max(0.0, next_at - time.monotonic()))


class FaultInjector(threading.Thread):
    """Arms a random fault from the API fault table every ``FAULT_GAP`` seconds."""

    def __init__(self, sim: SimServer, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.sim, self.rng = sim, rng
        self.done = threading.Event()
        self.armed: list[str] = []

    def run(self) -> None:
        while not self.done.wait(self.rng.uniform(*FAULT_GAP)):
            name = self.rng.choice(list(API_FAULTS))
            connector = self.rng.choice(list(CONNECTORS))
            self.sim.add_fault(**API_FAULTS[name][0], connector=connector)
            self.armed.append(f"{name}@{connector}")


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_SECONDS) * 3 + 240)
def test_soak_with_faults_and_a_sigkill(broker, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CHANGEFEED_SOAK_SEED", "20261127")))
    with SimServer(
        connectors=CONNECTORS,
        enrollments=ENROLLMENTS,
        seed=13,
        rate_limit=0,
        honor_modified_after=True,
    ) as sim:
        config = base_config(
            sim, broker.bootstrap, tmp_path, tuple(CONNECTORS), full_scan_interval_seconds=5
        )
        config["bindbee"]["timeout_seconds"] = 1
        path = write_config(tmp_path, config)
        mutator = Mutator(sim, random.Random(rng.random()), CHANGES_PER_SECOND)
        faults = FaultInjector(sim, random.Random(rng.random()))
        first = Daemon(path, "run")
        second = None
        try:
            for connector in CONNECTORS:
                first.wait_for("scan_finished", connector=connector)
            started = time.monotonic()
            mutator.start()
            faults.start()
            # Midway, at a random moment: SIGKILL, and start again at once.
            kill_at = started + SOAK_SECONDS * rng.uniform(0.4, 0.6)
            while time.monotonic() < kill_at:
                assert first.proc.poll() is None, first.lines[-10:]
                time.sleep(0.1)  # watching the daemon until the planned kill time
            first.kill()
            second = Daemon(path, "run")
            while time.monotonic() < started + SOAK_SECONDS:
                assert second.proc.poll() is None, second.lines[-10:]
                time.sleep(0.1)  # watching the daemon until the soak's end
            mutator.done.set()
            faults.done.set()
            mutator.join(10)
            faults.join(10)
            sim.clear_faults()
            quiet = time.monotonic()
            for connector in CONNECTORS:
                wait_fresh_full_scan(second, connector, quiet)
            settled = time.monotonic() - quiet
        finally:
            mutator.done.set()
            faults.done.set()
            for daemon in (first, second):
                if daemon is not None and daemon.proc.poll() is None:
                    assert daemon.stop() == 0
        # Both topics read at once (each read as before, on its own thread).
        reports = each_at_once(
            list(CONNECTORS),
            lambda c: check(
                broker.bootstrap,
                topic_of(config, c),
                sim,
                c,
                # through the last scan it completed (after the fresh full scans above)
                through=marked_through(second, broker.bootstrap, config, c),
            ),
        )
    for report in reports.values():
        report.assert_holds()
    lines = first.lines + second.lines
    assert not first.tracebacks() and not second.tracebacks()
    figures(
        "soak",
        seconds=SOAK_SECONDS,
        changes=mutator.counts,
        faults=len(faults.armed),
        kinds=sorted(set(f.split("@")[0] for f in faults.armed)),
        failed_passes=sum(1 for line in lines if line.get("event") == "scan_failed"),
        api_retries=sum(1 for line in lines if line.get("event") == "api_retry"),
        finished_passes=sum(1 for line in lines if line.get("event") == "scan_finished"),
        settled_after_s=round(settled, 2),
        **{f"{c}_events": r.events for c, r in reports.items()},
        **{f"{c}_redeliveries": r.redeliveries for c, r in reports.items()},
    )
