"""Fleet drain: C connectors behind a slow API, until every stream finished its first scan.

    python bench/fleet_drain.py [--quick] [--connectors C] [--records N] [--latency-ms MS]
        [--workers W] [--cases single,sqlite,pg1,pg3] [--pg-url URL] [--json PATH]
        [--repeat R]

Starts its own tansu broker and, per case, a simulator process serving C connectors of N
records each (one model) with a delay fault on every data request (150 ms: the API's
latency) and the per-connector budget on (200 requests/min, in the simulator and in the
daemon). Then ``lms-changefeed run`` with an empty state, as:

- ``sqlite``: one process, SQLite state;
- ``pg1`` / ``pg3``: 1 / 3 replicas sharing ``state.url``, a fresh PostgreSQL database on
  ``--pg-url``'s server (created and dropped here);
- ``single``: one process, SQLite, one connector: what one stream alone takes, so the
  fleet's ratio can be split into per-stream overhead and fleet contention.

Each replica gets ``scheduler.max_workers = W`` (default C: every connector may scan at
once, as the ideal assumes). Per case:

- ``drain_s``: the first ``scan_started`` of any replica → the last stream's first
  ``scan_finished`` (the daemons' own log stamps); ``drain_from_launch_s`` from spawning;
- ``ideal_s``: one connector's walk of ceil(N/100) pages, one request in flight, each
  taking the latency, under its own budget; all connectors at once take no longer;
- ``fleet_drain_ratio`` = drain_s / ideal_s;
- ``cpu_s_per_1k_records``: the daemon processes' CPU time (user + system, /proc) spent
  after each logged ``scheduler_started`` until the drain, per 1,000 records scanned;
  ``cpu_s_per_1k_records_gross`` counts start-up too; the simulator's CPU is reported
  beside it (it shares the cores), and ``cpu_floor_s`` = (the daemons' scan CPU + the
  simulator's) / cores: a drain near it is CPU-bound on this machine, not held back by the
  scheduler, the workers or the API;
- per replica: streams whose first scan it ran, passes, exit code; ``streams_scanned_twice``
  counts streams whose first scan more than one replica finished; ``passes_at_once_max``
  the most passes running at one time over all replicas (are the workers busy?).

With ``--repeat R`` the cases run R times, interleaved (case by case, round after round),
and each case reports the run with the median ``fleet_drain_ratio`` (every run's ratio
under ``fleet_drain_ratio_runs``).

Prints one JSON object. No target is enforced: the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import MODEL, PAGE_SIZE
from _storage import BenchDatabase, Workspace
from many_connectors import (
    FleetSimulator,
    RunProcess,
    connector_tokens,
    fleet_config,
    proc_sample,
    wait_for,
)

from daemon import log as logsetup
from devtools.tansu import TansuBroker

CASES = ("single", "sqlite", "pg1", "pg3")
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RATE = (200, 60.0)  # Bindbee's per-connector budget: requests per seconds


@dataclass(frozen=True)
class Sizes:
    connectors: int
    records: int  # per connector


FULL = Sizes(connectors=200, records=500)
QUICK = Sizes(connectors=40, records=500)


def ideal_walk_s(pages: int, latency_s: float, rate: tuple[int, float] = RATE) -> float:
    """One stream's walk: sequential requests of ``latency_s`` each, at most ``rate[0]``
    sent in any ``rate[1]`` seconds (a sliding window, as the daemon's limiter keeps)."""
    limit, window = rate
    sent: list[float] = []
    now = 0.0
    for n in range(pages):
        if n >= limit:
            now = max(now, sent[n - limit] + window)
        sent.append(now)
        now += latency_s
    return now


def run_case(
    case: str,
    sizes: Sizes,
    *,
    bootstrap: str,
    latency_ms: int,
    workers: int | None,
    pool_size: int | None,
    pg_url: str,
) -> dict[str, Any]:
    """One case: its figures (see the module docstring)."""
    connectors = connector_tokens(1 if case == "single" else sizes.connectors)
    replicas = 3 if case == "pg3" else 1
    ws = Workspace()
    try:
        with FleetSimulator(connectors, sizes.records, rate_limit=RATE[0]) as sim:
            sim.add_fault(delay_ms=latency_ms, count=10**9)  # every data request, all along
            if case.startswith("pg"):
                with BenchDatabase(pg_url, f"bench_fleet_{uuid.uuid4().hex[:10]}") as url:
                    state: dict[str, Any] = {"url": url}
                    if pool_size is not None:
                        state["pool_size"] = pool_size
                    return _drain(ws, sim, bootstrap, connectors, state, replicas, workers, sizes)
            state = {"path": str(ws.path("fleet.db"))}
            return _drain(ws, sim, bootstrap, connectors, state, replicas, workers, sizes)
    finally:
        ws.cleanup()


def _drain(
    ws: Workspace,
    sim: FleetSimulator,
    bootstrap: str,
    connectors: dict[str, str],
    state: dict[str, Any],
    replicas: int,
    workers: int | None,
    sizes: Sizes,
) -> dict[str, Any]:
    streams = {f"{name}/{MODEL}" for name in connectors}
    config = fleet_config(
        ws,
        "fleet",
        sim=sim,
        bootstrap=bootstrap,
        connectors=connectors,
        state=state,
        model={"trigger": "interval", "poll_interval_seconds": 86400, "initial_sync": "emit"},
        scheduler={"max_workers": workers or len(connectors), "jitter_seconds": 0.0},
        rate_limit=RATE,
    )
    daemons = [
        RunProcess(ws, config, f"r{n}", env={"CHANGEFEED_SCHEDULER__REPLICA_ID": f"r{n}"})
        for n in range(replicas)
    ]
    startup_cpu: dict[str, float] = {}
    try:

        def drained() -> bool:
            for daemon in daemons:
                if daemon.scheduler_started is not None and daemon.label not in startup_cpu:
                    startup_cpu[daemon.label] = daemon.sample().cpu_s
            done: set[str] = set()
            for daemon in daemons:
                done.update(daemon.finished)
            return streams <= done

        wait_for(drained, 900, f"{len(streams)} first scans", *daemons)
        cpu = {d.label: d.sample().cpu_s for d in daemons}
        sim_cpu = proc_sample(sim.pid).cpu_s
        stats = sim.all_stats()
    finally:
        exits = [daemon.stop() for daemon in daemons]
    first_finish: dict[str, float] = {}
    owner: dict[str, str] = {}
    finishers: Counter[str] = Counter()
    for daemon in daemons:
        for stream, at in daemon.finished.items():
            finishers[stream] += 1
            if stream not in first_finish or at < first_finish[stream]:
                first_finish[stream], owner[stream] = at, daemon.label
    items = {
        stream: next(d.items[stream] for d in daemons if d.label == owner[stream])
        for stream in streams
    }
    records = sum(items.values())
    began = min(d.first_scan_started for d in daemons if d.first_scan_started is not None)
    launched = min(d.started for d in daemons)
    last = max(first_finish[s] for s in streams)
    pages = math.ceil(sizes.records / PAGE_SIZE)
    drain_s = last - began
    cpu_total = sum(cpu.values())
    cpu_scans = sum(cpu[label] - startup_cpu.get(label, 0.0) for label in cpu)
    owned = Counter(owner.values())
    return {
        "connectors": len(connectors),
        "replicas": replicas,
        "state": "postgresql" if "url" in state else "sqlite",
        "records": records,
        "pages_per_stream": pages,
        "drain_s": round(drain_s, 2),
        "drain_from_launch_s": round(last - launched, 2),
        "fleet_drain_ratio": None,  # filled in by the caller, who knows the ideal
        "cpu_s_total": round(cpu_total, 2),
        "cpu_s_startup": round(sum(startup_cpu.values()), 2),
        "cpu_s_per_1k_records": round(cpu_scans / (records / 1000), 3) if records else None,
        "cpu_s_per_1k_records_gross": round(cpu_total / (records / 1000), 3) if records else None,
        "simulator_cpu_s": round(sim_cpu, 2),
        # No schedule drains faster than the CPU the work needs spread over every core.
        "cpu_floor_s": round((cpu_scans + sim_cpu) / (os.cpu_count() or 1), 2),
        "streams_scanned_twice": sum(1 for n in finishers.values() if n > 1),
        "passes_at_once_max": _most_at_once(daemons),
        "rate_limited_responses": sum(int(per.get("429", 0)) for per in stats.values()),
        "replica": {
            d.label: {
                "first_scans": owned.get(d.label, 0),
                "passes_finished": len(d.scans_finished_at),
                "exit_code": code,
                "peak_rss_mb": round(peak, 1),
                "errors_logged": len(d.errors),
                "garbled_log_lines": d.garbled_lines,
                "first_error": _brief(d.errors[0]) if d.errors else None,
            }
            for d, (code, peak) in zip(daemons, exits, strict=True)
        },
    }


def _most_at_once(daemons: list[RunProcess]) -> int:
    """The most passes running at one time, over every replica (from the log stamps)."""
    edges = [(at, 1) for d in daemons for at, _ in d.scans_started]
    edges += [(at, -1) for d in daemons for at, _ in d.scans_finished_at]
    running = most = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running += step
        most = max(most, running)
    return most


def _brief(line: dict[str, Any]) -> str:
    text = {k: v for k, v in line.items() if k not in ("timestamp", "level", "logger")}
    return json.dumps(text, default=str)[:300]


def _median_run(per: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose drain ratio is the median (the lower middle of an even count; a
    failed run counts as the slowest), so every figure of the case comes from one run."""
    ranked = sorted(per, key=lambda r: r.get("fleet_drain_ratio") or math.inf)
    return ranked[(len(ranked) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 connectors instead of 200")
    parser.add_argument("--connectors", type=int, help="C (default 200; quick 40)")
    parser.add_argument("--records", type=int, help="N per connector (default 500)")
    parser.add_argument("--latency-ms", type=int, default=150, help="delay of every request")
    parser.add_argument(
        "--workers", type=int, help="scheduler.max_workers per replica (default: C)"
    )
    parser.add_argument("--pool-size", type=int, help="state.pool_size (PostgreSQL cases)")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated, of: %(default)s (default: all)",
    )
    parser.add_argument("--pg-url", default=PG_URL, help="an existing database to connect to")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the cases R times, interleaved; the figures are the medians (default 1)",
    )
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(args.connectors or base.connectors, args.records or base.records)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    logsetup.configure("WARNING", "json")
    pages = math.ceil(sizes.records / PAGE_SIZE)
    ideal = ideal_walk_s(pages, args.latency_ms / 1000)
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with TansuBroker() as broker:
        for rep in range(args.repeat):
            for case in cases:
                print(f"# {case} ({rep + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                case_started = time.monotonic()
                try:
                    figures = run_case(
                        case,
                        sizes,
                        bootstrap=broker.bootstrap,
                        latency_ms=args.latency_ms,
                        workers=args.workers,
                        pool_size=args.pool_size,
                        pg_url=args.pg_url,
                    )
                except Exception as exc:  # one broken case must not hide the others' figures
                    figures = {"failed": f"{type(exc).__name__}: {exc}"[:2000]}
                else:
                    figures["fleet_drain_ratio"] = round(figures["drain_s"] / ideal, 2)
                runs[case].append(figures)
                took = time.monotonic() - case_started
                print(f"#   {case}: {took:.1f}s {json.dumps(figures)[:400]}", file=sys.stderr)
    results = {case: _median_run(per) for case, per in runs.items()}
    output = {
        "fleet_drain_ratio": {c: r.get("fleet_drain_ratio") for c, r in results.items()},
        "cpu_s_per_1k_records": {c: r.get("cpu_s_per_1k_records") for c, r in results.items()},
        "ideal_s": round(ideal, 3),
        "sizes": {
            "connectors": sizes.connectors,
            "records_per_connector": sizes.records,
            "pages_per_stream": pages,
            "latency_ms": args.latency_ms,
            "rate_limit": {"requests": RATE[0], "per_seconds": RATE[1]},
            "workers_per_replica": args.workers or "C",
        },
        "fleet_drain_ratio_runs": {
            c: [r.get("fleet_drain_ratio") for r in per] for c, per in runs.items()
        },
        "cases": results,
        "run": {
            "mode": "quick" if args.quick else "full",
            "seconds": round(time.monotonic() - started, 1),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
    }
    print(json.dumps(output, indent=2))
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
