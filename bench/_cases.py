"""The benchmark cases. Each returns its JSON keys plus a ``details`` dict.

Daemon and floor run side by side (alternating, same simulator, same broker), and the
ratio of each repetition is daemon / floor; a case reports the median ratio.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import orjson
from _floors import initial_sync_messages, raw_produce, raw_walk
from _harness import (
    CONNECTOR,
    MODEL,
    PAGE_SIZE,
    Simulator,
    Workspace,
    new_topic_prefix,
    poll,
    write_config,
)
from _steady import steady_writes, touch_all
from _writes import probe_for

from daemon.models import StreamKey
from daemon.settings import KafkaSettings

KEY = StreamKey(CONNECTOR, MODEL)


@dataclass(frozen=True)
class Sizes:
    """How big each case is; ``--quick`` and the default run differ only here."""

    records: int  # full scan and initial sync
    reps_scan: int  # repetitions of the full scan (daemon and floor each)
    reps_sync: int  # repetitions of the initial sync
    rss_large: int  # second size for peak RSS (the first is ``records``)
    budget_limit: int
    budget_window: float
    budget_windows: int
    latency_records: int
    latency_mutations: int


QUICK = Sizes(20_000, 5, 3, 100_000, 50, 1.0, 4, 2_000, 20)
FULL = Sizes(100_000, 7, 3, 1_000_000, 200, 5.0, 4, 10_000, 60)


def _ratio(daemon: list[float], floor: list[float]) -> float:
    return statistics.median(d / f for d, f in zip(daemon, floor, strict=True))


def _ms(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def scan_cases(bootstrap: str, ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    """Initial sync, steady full scans, request counts and the idle incremental poll."""
    n = sizes.records
    out: dict[str, Any] = {}
    with Simulator(n) as sim:
        warm = raw_walk(sim.base_url, keep=True)  # also warms the simulator's caches
        assert warm.items == n, (warm.items, n)
        kafka = KafkaSettings(bootstrap_servers=bootstrap)

        # Initial sync: a fresh state file and topic each time, against walk + producer.
        sync_daemon, sync_walk, sync_produce, sync_cpu, sync_pass = [], [], [], [], []
        state = ws.path("sync-0.db")
        sync_requests = 0
        for rep in range(sizes.reps_sync):
            state = ws.path(f"sync-{rep}.db")
            prefix = new_topic_prefix()
            config = write_config(
                ws, f"sync-{rep}", sim=sim, bootstrap=bootstrap, state=state, topic_prefix=prefix
            )
            before = sim.requests()
            run = poll(ws, config, "--full")
            sync_requests = sim.requests() - before
            assert run.scan["created"] == n, run.scan
            sync_daemon.append(run.duration_s)
            sync_cpu.append(run.cpu_s)
            sync_pass.append(run.pass_cpu_s or 0.0)
            walk = raw_walk(sim.base_url)
            floor_topic = f"{prefix}-floor.{MODEL}"
            messages = initial_sync_messages(KEY, floor_topic, warm.pages)
            sync_walk.append(walk.seconds)
            sync_produce.append(raw_produce(kafka, floor_topic, messages))
            del messages
        sync_floor = [w + p for w, p in zip(sync_walk, sync_produce, strict=True)]
        out["initial_sync_ratio"] = round(_ratio(sync_daemon, sync_floor), 3)
        out["details_initial_sync"] = {
            "records": n,
            "events": n,
            "daemon_s": _ms(sync_daemon),
            "floor_walk_s": _ms(sync_walk),
            "floor_produce_s": _ms(sync_produce),
            "floor_s": _ms(sync_floor),
            "requests": sync_requests,
            "cpu_s": _ms(sync_cpu),
            "pass_cpu_s": _ms(sync_pass),
        }
        out["cpu_s_per_1k_initial_sync"] = _per_1k(sync_cpu, n)
        size_after_sync = ws.state_size(state)

        # Steady state: full scans of the same, unchanged records, against the bare walk.
        config = write_config(
            ws, "scan", sim=sim, bootstrap=bootstrap, state=state, topic_prefix=prefix
        )
        scan_daemon, scan_floor, scan_wall, rss, requests = [], [], [], [], []
        scan_cpu, scan_pass = [], []
        rest: dict[str, Any] = {}
        for rep in range(sizes.reps_scan):
            before = sim.requests()
            run = poll(ws, config, "--full")
            requests.append(sim.requests() - before)
            scan = run.scan
            assert scan["unchanged"] == n and scan["created"] == scan["updated"] == 0, scan
            scan_daemon.append(run.duration_s)
            scan_wall.append(run.wall_s)
            rss.append(run.peak_rss_mb)
            scan_cpu.append(run.cpu_s)
            scan_pass.append(run.pass_cpu_s or 0.0)
            scan_floor.append(raw_walk(sim.base_url).seconds)
            if rep == 2:  # after 3 steady scans: dead tuples and size (nothing vacuumed)
                rest = {**probe_for(ws, state).at_rest(), "sizes": ws.state_sizes(state)}
        out["full_scan_ratio"] = round(_ratio(scan_daemon, scan_floor), 3)
        out["requests_per_full_scan"] = max(requests)
        out["minimum_requests"] = math.ceil(n / PAGE_SIZE)
        out["peak_rss_small"] = round(max(rss), 1)
        out["details_full_scan"] = {
            "records": n,
            "daemon_s": _ms(scan_daemon),
            "daemon_process_wall_s": _ms(scan_wall),
            "floor_s": _ms(scan_floor),
            "requests": requests,
            "peak_rss_mb": [round(r, 1) for r in rss],
            "cpu_s": _ms(scan_cpu),
            "pass_cpu_s": _ms(scan_pass),
        }
        out["cpu_s_per_1k_full_scan"] = _per_1k(scan_cpu, n)
        size = sum(rest["sizes"].values())
        out["state_bytes_per_record"] = round(size / n, 1)
        record_json = sum(len(orjson.dumps(item)) for page in warm.pages for item in page)
        out["record_json_bytes"] = round(record_json / n, 1)
        dead = rest["dead_tuples"]
        out["dead_tuples_fraction"] = None if dead is None else round(dead / n, 4)
        out.update(steady_writes(ws, state, config, n))

        # One incremental poll with nothing changed, the API honouring modified_after.
        sim.configure(honor_modified_after=True)
        before = sim.requests()
        run = poll(ws, config)
        out["requests_idle_incremental"] = sim.requests() - before
        out["details_idle_incremental"] = {
            "kind": run.scan["kind"],
            "items": run.scan["items"],
            "duration_s": run.duration_s,
            "cpu_s": round(run.cpu_s, 3),
        }
        out["details_cpu"] = {
            "how": "wait4 rusage of the daemon process (user + system), start-up included; "
            "pass_: process CPU from scan_started to scan_finished (bench/_peak.py)",
            "idle_poll_cpu_s": round(run.cpu_s, 3),  # start-up + one request
            "full_scan_pass_per_1k": _per_1k(scan_pass, n),
            "initial_sync_pass_per_1k": _per_1k(sync_pass, n),
        }
        out["details_state"] = {
            "after_initial_sync_bytes": size_after_sync,
            "after_3_steady_scans": rest,
            "record_json_bytes_total": record_json,
        }
        out.update(touch_all(ws, sim, state, config, n))
    return out


def _per_1k(cpu: list[float], n: int) -> float:
    return round(statistics.median(cpu) / n * 1000, 4)


def rss_case(bootstrap: str, ws: Workspace, records: int) -> dict[str, Any]:
    """Peak RSS of a full scan at a larger size (state built by a silent baseline scan)."""
    with Simulator(records) as sim:
        state = ws.path(f"rss-{records}.db")
        prefix = new_topic_prefix()
        config = write_config(
            ws,
            f"rss-{records}",
            sim=sim,
            bootstrap=bootstrap,
            state=state,
            topic_prefix=prefix,
            model={"initial_sync": "baseline"},
        )
        baseline = poll(ws, config, "--full")
        assert baseline.scan["items"] == records, baseline.scan
        scan = poll(ws, config, "--full")
        assert scan.scan["unchanged"] == records, scan.scan
        floor = raw_walk(sim.base_url).seconds
        return {
            "records": records,
            "peak_rss_mb": round(scan.peak_rss_mb, 1),
            "baseline_scan": {
                "duration_s": baseline.duration_s,
                "peak_rss_mb": round(baseline.peak_rss_mb, 1),
            },
            "full_scan_s": scan.duration_s,
            "floor_walk_s": round(floor, 3),
            "full_scan_ratio": round(scan.duration_s / floor, 3),
            "state_bytes_per_record": round(ws.state_size(state) / records, 1),
        }


def budget_case(bootstrap: str, ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    """A backfill with the simulator's rate limit on and the daemon given the same budget.

    The backfill needs exactly ``limit * windows + 1`` requests: a perfect client sends
    the last one ``windows`` windows after the first, so budget used =
    (requests served before the last / limit) / (time from first to last / window),
    with the times as the simulator saw them (its access log).
    """
    limit, window, windows = sizes.budget_limit, sizes.budget_window, sizes.budget_windows
    pages = limit * windows + 1
    records = (pages - 1) * PAGE_SIZE + 1
    with Simulator(records, rate_limit=limit, window_seconds=window, access_log=True) as sim:
        config = write_config(
            ws,
            "budget",
            sim=sim,
            bootstrap=bootstrap,
            state=ws.path("budget.db"),
            topic_prefix=new_topic_prefix(),
            rate_limit=(limit, window),
        )
        run = poll(ws, config, "--full", timeout=windows * window * 10 + 120)
        assert run.scan["created"] == records, run.scan
        stats = sim.stats()
        served = [t for t, status in sim.served_at if status == 200]
    span = served[-1] - served[0]
    used = ((len(served) - 1) / limit) / (span / window)
    # The simulator's own fixed windows: each opens at the first request after the last.
    per_window: list[int] = []
    end = -math.inf
    for t, status in sim.served_at:
        if t >= end:
            per_window.append(0)
            end = t + window
        if status == 200:
            per_window[-1] += 1
    return {
        "budget_used_fraction": round(used, 4),
        "rate_limited_responses": stats.get("429", 0),
        "details_budget": {
            "limit": limit,
            "window_s": window,
            "records": records,
            "requests_served": len(served),
            "first_to_last_s": round(span, 3),
            "served_per_window": per_window,
            "daemon_s": run.duration_s,
        },
    }
