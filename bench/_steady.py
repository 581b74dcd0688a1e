"""The probed scans of the scan case: one more steady full scan, and a full scan after a
touch-all sync (every record's ``modified_at`` moved, content unchanged); what each wrote
to the store (``_writes``). Never timed: the SQLite probe slows the pass."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from _harness import CONNECTOR, Simulator, Workspace, poll
from _writes import per_record, probe_for


def steady_writes(ws: Workspace, state: Path, config: Path, n: int) -> dict[str, Any]:
    """One more steady full scan, probed (never timed): what it wrote."""
    probe = probe_for(ws, state)
    probe.begin()
    run = poll(ws, config, "--full")
    figures = probe.end()
    assert run.scan["unchanged"] == n, run.scan
    per = per_record(figures, n)
    return {
        "rows_written_per_record": per["rows_written_per_record"],
        "wal_bytes_per_record": per["wal_bytes_per_record"],
        "details_steady_scan_writes": {**figures, **per, "records": n},
    }


def touch_all(ws: Workspace, sim: Simulator, state: Path, config: Path, n: int) -> dict[str, Any]:
    """A sync moves every record's ``modified_at`` (content unchanged); then one full
    scan, probed: what it wrote."""
    sim.configure(honor_modified_after=False)
    sync = touch_all_sync(sim)
    probe = probe_for(ws, state)
    probe.begin()
    run = poll(ws, config, "--full")
    figures = probe.end()
    scan = run.scan
    per = per_record(figures, n)
    outcome = ("items", "created", "updated", "unchanged", "deleted", "duration_s")
    return {
        "touch_all_rows_written_per_record": per["rows_written_per_record"],
        "touch_all_wal_bytes_per_record": per["wal_bytes_per_record"],
        "touch_all_dead_tuples_per_record": per["dead_tuples_per_record"],
        "details_touch_all_scan": {
            **figures,
            **per,
            "records": n,
            "scan": {key: scan.get(key) for key in outcome},
            "sync": {key: sync.get(key) for key in ("status", "touched_all")},
            "cpu_s": round(run.cpu_s, 3),
        },
    }


def touch_all_sync(sim: Simulator, timeout: float = 60.0) -> dict[str, Any]:
    """One sync that moves every record's ``modified_at``, content unchanged
    (``sync_touches_all``); returns the sync once it is Done."""
    sim.configure(sync_touches_all=True, sync_duration_seconds=0)
    try:
        started = httpx.post(
            f"{sim.base_url}/_sim/syncs", json={"connector": CONNECTOR}, timeout=30
        )
        started.raise_for_status()
        sync_id = started.json()["sync_id"]
        deadline = time.monotonic() + timeout
        while True:
            syncs = httpx.get(f"{sim.base_url}/_sim/syncs", timeout=30).json()
            sync = next(s for s in syncs if s["sync_id"] == sync_id)
            if sync["status"] != "Syncing":
                return sync
            if time.monotonic() > deadline:
                raise TimeoutError(f"touch-all sync still running after {timeout} s")
            time.sleep(0.05)
    finally:
        sim.configure(sync_touches_all=False)
