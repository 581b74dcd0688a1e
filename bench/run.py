"""The daemon against the I/O floor and the API budget: a Markdown table and a JSON file.

    python bench/run.py [--quick] [--json PATH] [--skip-large]

Starts its own tansu broker and one simulator process per case, runs the daemon through
its CLI (``python -m daemon poll|run``), and measures each figure side by side with its
floor in the same run: ratios, because absolute times on shared machines drift. See
bench/README.md for the cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _cases import FULL, QUICK, Sizes, budget_case, latency_case, rss_case, scan_cases
from _harness import Workspace

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
    "latency_p50_s",
    "latency_p99_s",
)


def _step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    print(f"# {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = fn()
    print(f"#   {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


def run(
    sizes: Sizes, *, skip_large: bool, large_from: Path | None, state_url: str | None = None
) -> dict[str, Any]:
    """Every case; the flat result with every key, and the details."""
    ws = Workspace(state_url=state_url)
    try:
        with TansuBroker() as broker:
            boot = broker.bootstrap
            scans = _step("scan cases", lambda: scan_cases(boot, ws, sizes))
            if large_from is not None:
                large = json.loads(large_from.read_text())["details"]["peak_rss_large"]
                large = {**large, "from": str(large_from)}
            elif skip_large:
                large = {"records": sizes.rss_large, "peak_rss_mb": None, "skipped": True}
            else:
                large = _step(
                    f"peak RSS at {sizes.rss_large:,}",
                    lambda: rss_case(boot, ws, sizes.rss_large),
                )
            budget = _step("API budget", lambda: budget_case(boot, ws, sizes))
            latency = _step("latency", lambda: latency_case(boot, ws, sizes))
    finally:
        ws.cleanup()
    result: dict[str, Any] = {
        key: value
        for part in (scans, budget, latency)
        for key, value in part.items()
        if not key.startswith("details")
    }
    result["peak_rss_mb_100k"] = result.pop("peak_rss_small")
    result["peak_rss_mb_1m"] = large["peak_rss_mb"]
    details = {
        key.removeprefix("details_"): value
        for part in (scans, budget, latency)
        for key, value in part.items()
        if key.startswith("details")
    }
    details["peak_rss_large"] = large
    details["rss_records"] = {
        "peak_rss_mb_100k": sizes.records,
        "peak_rss_mb_1m": sizes.rss_large,
    }
    return {**{key: result[key] for key in KEYS}, "details": details}


def _check(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**NO**")


def table(result: dict[str, Any], sizes: Sizes) -> str:
    """The Markdown table: daemon figure, floor figure, ratio, target, met."""
    d = result["details"]
    scan, sync = d["full_scan"], d["initial_sync"]
    med = _median
    n, large = sizes.records, sizes.rss_large
    budget, lat = d["budget"], d["latency"]
    rss_small, rss_large = result["peak_rss_mb_100k"], result["peak_rss_mb_1m"]
    rows = [
        (
            "`full_scan_ratio`",
            f"full scan of {n:,} unchanged records (median of {len(scan['daemon_s'])})",
            f"{med(scan['daemon_s']):.2f} s",
            f"{med(scan['floor_s']):.2f} s raw httpx walk",
            f"{result['full_scan_ratio']:.2f}",
            "≤ 1.3",
            _check(result["full_scan_ratio"] <= 1.3),
        ),
        (
            "`initial_sync_ratio`",
            f"initial sync of {n:,} records to Kafka (median of {len(sync['daemon_s'])})",
            f"{med(sync['daemon_s']):.2f} s",
            f"{med(sync['floor_s']):.2f} s = walk {med(sync['floor_walk_s']):.2f}"
            f" + producer {med(sync['floor_produce_s']):.2f}",
            f"{result['initial_sync_ratio']:.2f}",
            "≤ 1.5",
            _check(result["initial_sync_ratio"] <= 1.5),
        ),
        (
            "`requests_per_full_scan`",
            f"requests of one full scan of {n:,}",
            str(result["requests_per_full_scan"]),
            f"{result['minimum_requests']} = ceil(N/100)",
            f"{result['requests_per_full_scan'] / result['minimum_requests']:.2f}",
            "equal",
            _check(result["requests_per_full_scan"] == result["minimum_requests"]),
        ),
        (
            "`requests_idle_incremental`",
            "one incremental poll, nothing changed, `modified_after` honoured",
            str(result["requests_idle_incremental"]),
            "1",
            f"{result['requests_idle_incremental']:.2f}",
            "1",
            _check(result["requests_idle_incremental"] == 1),
        ),
        (
            "`budget_used_fraction`",
            f"backfill of {budget['records']:,}, limit {budget['limit']} per "
            f"{budget['window_s']:g} s",
            f"{(budget['requests_served'] - 1) / budget['limit']:.2f} windows' requests in "
            f"{budget['first_to_last_s'] / budget['window_s']:.2f} windows",
            "the limit",
            f"{result['budget_used_fraction']:.3f}",
            "≥ 0.95",
            _check(result["budget_used_fraction"] >= 0.95),
        ),
        (
            "`rate_limited_responses`",
            "429s during that backfill",
            str(result["rate_limited_responses"]),
            "—",
            "—",
            "0",
            _check(result["rate_limited_responses"] == 0),
        ),
        (
            "`peak_rss_mb_100k`",
            f"daemon peak RSS, full scan of {n:,}",
            f"{rss_small:.0f} MB",
            "—",
            "—",
            "flat in N",
            "—",
        ),
        (
            "`peak_rss_mb_1m`",
            f"daemon peak RSS, full scan of {large:,}",
            "skipped" if rss_large is None else f"{rss_large:.0f} MB",
            "—",
            "—" if rss_large is None else f"{rss_large / rss_small:.2f} x the above",
            "< 250 MB, flat",
            _check(None if rss_large is None else rss_large < 250 and rss_large / rss_small < 1.25),
        ),
        (
            "`state_bytes_per_record`",
            f"{d['run'].get('state', 'sqlite')} state size / records ({n:,})",
            f"{result['state_bytes_per_record']:.0f} B",
            "—",
            "—",
            "report",
            "—",
        ),
        (
            "`latency_p50_s`",
            f"change in the simulator → event readable on Kafka ({lat['mutations']} changes)",
            f"{result['latency_p50_s']:.2f} s",
            f"{lat['poll_interval_s']:g} s poll interval",
            f"{result['latency_p50_s'] / lat['poll_interval_s']:.2f}",
            "report",
            "—",
        ),
        (
            "`latency_p99_s`",
            f"the same, p99 ({lat['lost']} never arrived)",
            f"{result['latency_p99_s']:.2f} s",
            f"{lat['poll_interval_s']:g} s poll interval",
            f"{result['latency_p99_s'] / lat['poll_interval_s']:.2f}",
            "≤ 2 x interval + 0.5 s",
            _check(
                lat["lost"] == 0 and result["latency_p99_s"] <= 2 * lat["poll_interval_s"] + 0.5
            ),
        ),
    ]
    head = ("key", "case", "daemon", "floor", "ratio", "target", "met")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under two minutes")
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
        "--state-url",
        help="run every case on this PostgreSQL database (a fresh schema per store) "
        "instead of SQLite files, e.g. postgresql://postgres@127.0.0.1:5432/test",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    logsetup.configure("WARNING", "json")  # the bench's own use of daemon code stays quiet
    started = time.monotonic()
    result = run(
        sizes, skip_large=args.skip_large, large_from=args.large_from, state_url=args.state_url
    )
    result["details"]["run"] = {
        "mode": "quick" if args.quick else "full",
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        # Where the daemon's state lived (never the URL: it may carry a password).
        "state": "postgresql" if args.state_url else "sqlite",
    }
    print(table(result, sizes))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
