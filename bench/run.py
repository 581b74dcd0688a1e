"""The daemon against the I/O floor and the API budget: a Markdown table and a JSON file.

    python bench/run.py [--quick] [--json PATH] [--skip-large]
        [--stores sqlite,postgresql] [--pg-url ADMIN_URL | --state-url DB_URL]

Starts its own tansu broker and one simulator process per case, runs the daemon through
its CLI (``python -m daemon poll|run``), and measures each figure side by side with its
floor in the same run: ratios, because absolute times on shared machines drift. Every
case runs once per store, the stores back to back on the same broker; PostgreSQL gets a
fresh database (``changefeed_bench_<hex>`` on ``--pg-url``'s server, dropped at the
end) unless ``--state-url`` names one. See bench/README.md for the cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _cases import FULL, QUICK, Sizes, budget_case, rss_case, scan_cases
from _latency import latency_case
from _storage import PG_ADMIN_URL, BenchDatabase, Workspace, server_settings
from _table import side_by_side, table

from daemon import log as logsetup
from devtools.tansu import TansuBroker

KEYS = (
    "full_scan_ratio",
    "initial_sync_ratio",
    "requests_per_full_scan",
    "minimum_requests",
    "requests_idle_incremental",
    "budget_used_fraction",
    "rate_limited_responses",
    "peak_rss_mb_100k",
    "peak_rss_mb_1m",
    "state_bytes_per_record",
    "record_json_bytes",
    "rows_written_per_record",
    "wal_bytes_per_record",
    "dead_tuples_fraction",
    "cpu_s_per_1k_full_scan",
    "cpu_s_per_1k_initial_sync",
    "touch_all_rows_written_per_record",
    "touch_all_wal_bytes_per_record",
    "touch_all_dead_tuples_per_record",
    "latency_p50_s",
    "latency_p99_s",
)
STORES = ("sqlite", "postgresql")
ALIASES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "pg": "postgresql",
}


def _step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"# {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = fn()
    print(f"#   {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


def _large_from(path: Path, store: str) -> dict[str, Any]:
    old = json.loads(path.read_text())
    details = old[store]["details"] if store in old else old["details"]  # or the old layout
    return {**details["peak_rss_large"], "from": str(path)}


def run(
    boot: str,
    ws: Workspace,
    sizes: Sizes,
    *,
    skip_large: bool,
    large_from: Path | None,
) -> dict[str, Any]:
    """Every case on one store; the flat result with every key, and the details."""
    store = ws.store
    scans = _step(f"{store}: scan cases", lambda: scan_cases(boot, ws, sizes))
    if large_from is not None:
        large = _large_from(large_from, store)
    elif skip_large:
        large = {"records": sizes.rss_large, "peak_rss_mb": None, "skipped": True}
    else:
        large = _step(
            f"{store}: peak RSS at {sizes.rss_large:,}",
            lambda: rss_case(boot, ws, sizes.rss_large),
        )
    budget = _step(f"{store}: API budget", lambda: budget_case(boot, ws, sizes))
    latency = _step(f"{store}: latency", lambda: latency_case(boot, ws, sizes))
    parts = (scans, budget, latency)
    result: dict[str, Any] = {
        key: value for part in parts for key, value in part.items() if not key.startswith("details")
    }
    result["peak_rss_mb_100k"] = result.pop("peak_rss_small")
    result["peak_rss_mb_1m"] = large["peak_rss_mb"]
    details = {
        key.removeprefix("details_"): value
        for part in parts
        for key, value in part.items()
        if key.startswith("details")
    }
    details["peak_rss_large"] = large
    details["rss_records"] = {
        "peak_rss_mb_100k": sizes.records,
        "peak_rss_mb_1m": sizes.rss_large,
    }
    return {**{key: result[key] for key in KEYS}, "details": details}


@contextlib.contextmanager
def _workspace(store: str, pg_url: str, state_url: str | None) -> Iterator[Workspace]:
    """The store's workspace: SQLite files, or schemas in a PostgreSQL database (ours,
    created for the run and dropped after, unless ``state_url`` names one)."""
    with contextlib.ExitStack() as stack:
        url = None
        if store == "postgresql":
            url = state_url or stack.enter_context(BenchDatabase(pg_url))
        ws = Workspace(state_url=url)
        try:
            yield ws
        finally:
            ws.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (SQLite: ~2 min)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--skip-large", action="store_true", help="leave out the peak-RSS run at the large size"
    )
    parser.add_argument(
        "--large-from",
        type=Path,
        help="take the large peak-RSS figures from an earlier JSON result instead",
    )
    parser.add_argument(
        "--stores",
        help="comma-separated, of: sqlite,postgresql (default: sqlite; with --state-url: "
        "postgresql); every case runs on each, back to back",
    )
    parser.add_argument(
        "--pg-url",
        default=PG_ADMIN_URL,
        help="a database on the PostgreSQL server to create the bench's own database from "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--state-url",
        help="use this existing PostgreSQL database instead (a fresh schema per store, "
        "dropped after); alone it means --stores postgresql",
    )
    args = parser.parse_args()
    default = "postgresql" if args.state_url else "sqlite"
    names = [s.strip() for s in (args.stores or default).split(",") if s.strip()]
    unknown = sorted(set(names) - set(ALIASES))
    if unknown:
        parser.error(f"unknown stores {unknown}; choose from {list(STORES)}")
    stores = list(dict.fromkeys(ALIASES[name] for name in names))
    sizes = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    logsetup.configure("WARNING", "json")  # the bench's own use of daemon code stays quiet
    started = time.monotonic()
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    with TansuBroker() as broker:
        for store in stores:
            with _workspace(store, args.pg_url, args.state_url) as ws:
                results[store] = run(
                    broker.bootstrap,
                    ws,
                    sizes,
                    skip_large=args.skip_large,
                    large_from=args.large_from,
                )
                if ws.state_url is not None:
                    results[store]["details"]["server"] = server_settings(ws.state_url)
    output: dict[str, Any] = {
        **results,
        "run": {
            "mode": mode,
            "stores": stores,
            "seconds": round(time.monotonic() - started, 1),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average": os.getloadavg(),
        },
    }
    for store, result in results.items():
        print(f"\n## {store}\n")
        print(table(result, sizes, store, mode))
    if len(results) > 1:
        print("\n## side by side\n")
        print(side_by_side(results, KEYS))
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
