"""Client walk benchmark: items/s over the local simulator, and rate-budget use with the limit on.

    python bench/walk.py [--records 100000] [--limit 20 --window 2 --windows 6]

The simulator runs as its own process (as the real API would), so the figure is the
client's, not the GIL's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from daemon.settings import BindbeeSettings, ConnectorSettings
from daemon.source.client import BindbeeClient
from daemon.source.pagination import iter_pages

API_KEY = "bench-key"
TOKEN = "tok_bench"


@contextmanager
def simulator(records: int, *extra: str) -> Iterator[str]:
    """Start ``bindbee-sim`` on a free port; yield its base URL."""
    cmd = [
        sys.executable,
        "-m",
        "bindbee_sim",
        "--port",
        "0",
        "--api-key",
        API_KEY,
        "--connectors",
        f"bench:{TOKEN}",
        "--enrollments",
        str(records),
        "--seed",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)


def walk_speed(records: int) -> dict[str, float]:
    """Items/s for a full walk, client vs a bare httpx loop over the same pages."""
    with simulator(records, "--rate-limit", "0") as base_url:
        # The server's limit is off, and so is ours: this measures the client's own cost.
        settings = BindbeeSettings(
            base_url=base_url,
            api_key=API_KEY,
            page_size=100,
            rate_limit={"requests": 1_000_000, "per_seconds": 1},
        )
        connector = ConnectorSettings(name="bench", token=TOKEN)
        with BindbeeClient(settings) as client:
            started = time.perf_counter()
            items = sum(len(p.items) for p in iter_pages(client, connector, "enrollments"))
            client_s = time.perf_counter() - started
        assert items == records, (items, records)
        headers = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": TOKEN}
        with httpx.Client(base_url=base_url, headers=headers) as raw:
            started = time.perf_counter()
            cursor, raw_items = None, 0
            while True:
                params = {"page_size": 100, **({"cursor": cursor} if cursor else {})}
                body = raw.get("/api/lms/v1/enrollments", params=params).json()
                raw_items += len(body["items"])
                cursor = body["cursor"]
                if cursor is None:
                    break
            raw_s = time.perf_counter() - started
    return {
        "records": records,
        "client_items_per_s": round(records / client_s),
        "raw_items_per_s": round(raw_items / raw_s),
        "client_over_raw_time": round(client_s / raw_s, 3),
    }


def budget_use(limit: int, window: float, windows: int) -> dict[str, float]:
    """Walk with the server's limit on: share of the budget used, and 429s seen."""
    pages_wanted = limit * windows + limit  # more than fits: the walk is budget-bound
    records = pages_wanted * 100
    with simulator(
        records, "--rate-limit", str(limit), "--rate-window-seconds", str(window)
    ) as url:
        settings = BindbeeSettings(
            base_url=url,
            api_key=API_KEY,
            page_size=100,
            rate_limit={"requests": limit, "per_seconds": window},
        )
        connector = ConnectorSettings(name="bench", token=TOKEN)
        with BindbeeClient(settings) as client:
            # Request limit*windows + 1 pages: a perfect client sends the last one exactly
            # `windows` windows after the first, so budget use = windows*window / elapsed.
            wanted = limit * windows + 1
            started = time.perf_counter()
            requests = 0
            for _page in iter_pages(client, connector, "enrollments"):
                requests += 1
                if requests == 1:
                    started = time.perf_counter()
                if requests == wanted:
                    break
            elapsed = time.perf_counter() - started
        stats = httpx.get(f"{url}/_sim/stats").json().get("bench", {})
    return {
        "limit": limit,
        "window_s": window,
        "elapsed_s": round(elapsed, 3),
        "requests": requests,
        "requests_per_window": round((requests - 1) / (elapsed / window), 2),
        "budget_used_fraction": round(windows * window / elapsed, 4),
        "rate_limited_responses": int(stats.get("429", 0)),
    }


def main() -> None:
    """Print both measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args()
    speed = walk_speed(args.records)
    print("walk:", speed, flush=True)
    budget = budget_use(args.limit, args.window, args.windows)
    print("budget:", budget, flush=True)


if __name__ == "__main__":
    main()
