"""Simulator sync benchmark: a touch-all sync of N records, and page latency meanwhile.

    python bench/sim_sync.py [--records 1000000] [--staged 1000] [--duration 1] [--quick]

The simulator runs as its own process (``--sync-mode scheduled --sync-touches-all``).
The bench stages ``--staged`` patches, measures page latency while idle, starts a
sync and keeps paging (random cursors across the whole dataset) until the
connector shows ``Done``, then checks sampled pages carry the sync's completion
time. Prints one JSON object. Targets: ``sync_wall_seconds - duration < 10`` and
page p99 during the sync within 50 ms of idle.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

API_KEY = "bench-key"
TOKEN = "tok_bench"
CONNECTOR = "bench"
PAGES = "/api/lms/v1/enrollments"
_START_MS = 1_704_067_200_000  # first generated id's timestamp (bindbee_sim.generate)
_SPAN_MS = 546 * 86_400_000


@contextmanager
def simulator(records: int, duration: float) -> Iterator[str]:
    """``bindbee-sim`` in scheduled touch-all mode on a free port; yields its URL."""
    cmd = [
        sys.executable, "-m", "bindbee_sim",
        "--port", "0",
        "--api-key", API_KEY,
        "--connectors", f"{CONNECTOR}:{TOKEN}",
        "--enrollments", str(records),
        "--rate-limit", "0",
        "--sync-mode", "scheduled",
        "--sync-touches-all",
        "--sync-duration-seconds", str(duration),
    ]  # fmt: skip
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


def random_cursor(rng: random.Random) -> str:
    """A cursor just before a random point of the id range (any UUIDv7 is a valid cursor)."""
    ts_ms = _START_MS + rng.randrange(_SPAN_MS)
    h = f"{(ts_ms << 80) | (0x7 << 76) | (0b10 << 62):032x}"
    uuid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return base64.b64encode(uuid.encode()).decode()


class Pager(threading.Thread):
    """Requests random pages back to back, recording (start time, latency in ms)."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rng = random.Random(seed)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": TOKEN}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as c:
            while not self.stop.is_set():
                params = {"page_size": 100, "cursor": random_cursor(self.rng)}
                began = time.monotonic()
                c.get(PAGES, params=params).raise_for_status()
                self.samples.append((began, (time.monotonic() - began) * 1000))

    def between(self, low: float, high: float) -> list[float]:
        return [ms for at, ms in self.samples if low <= at <= high]


def summary(latencies: list[float]) -> dict[str, float]:
    """p50/p99/max in ms."""
    if not latencies:
        return {"n": 0}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(p99, 2),
        "max": round(ordered[-1], 2),
    }


def run(records: int, staged: int, duration: float, idle_seconds: float) -> dict[str, Any]:
    """One benchmark run; returns the JSON-able results."""
    started = time.monotonic()
    with simulator(records, duration) as url, httpx.Client(base_url=url, timeout=60) as c:
        startup = time.monotonic() - started
        data = {"Authorization": f"Bearer {API_KEY}", "x-connector-token": TOKEN}
        rng = random.Random(7)
        ids: list[str] = []
        while len(ids) < staged:
            params = {"page_size": 100, "cursor": random_cursor(rng)}
            ids += [i["id"] for i in c.get(PAGES, params=params, headers=data).json()["items"]]
        ids = sorted(set(ids[:staged]))
        for record_id in ids:
            c.patch(
                f"/_sim/{CONNECTOR}/enrollments/{record_id}", json={"end_date": None}
            ).raise_for_status()
        assert c.get("/_sim/staged").json()[CONNECTOR] == len(ids)

        pager = Pager(url, seed=11)
        pager.start()
        time.sleep(idle_seconds)  # a measuring window, not synchronisation
        sync_began = time.monotonic()
        sync = c.post("/_sim/syncs", json={"connector": CONNECTOR}).raise_for_status().json()
        org = {"Authorization": f"Bearer {API_KEY}"}
        while True:
            item = c.get("/api/lms/v1/connectors", headers=org).json()["items"][0]
            if item["sync_status"] == "Done" and item["last_sync_start_time"] == sync["started_at"]:
                break
            time.sleep(0.005)
        sync_end = time.monotonic()
        time.sleep(0.5)  # keep paging a little past the end: the apply happens there
        pager.stop.set()
        pager.join(30)
        record = next(s for s in c.get("/_sim/syncs").json() if s["sync_id"] == sync["sync_id"])

        # Sampled pages all carry the completion time (touch-all), patched ones included.
        checked, wrong = 0, 0
        for _ in range(50):
            params = {"page_size": 100, "cursor": random_cursor(rng)}
            for item in c.get(PAGES, params=params, headers=data).json()["items"]:
                checked += 1
                wrong += item["modified_at"] != record["finished_at"]
        patched_ok = all(
            c.get(f"{PAGES}/{i}", headers=data).json()["end_date"] is None for i in ids[:50]
        )
    return {
        "records": records,
        "staged_patches": len(ids),
        "startup_seconds": round(startup, 2),
        "sync_duration_seconds": duration,
        "sync_wall_seconds": round(sync_end - sync_began, 3),
        "sync_overhead_seconds": round(sync_end - sync_began - duration, 3),
        "sync_apply_seconds": record["apply_seconds"],
        "sync_applied": record["applied"],
        "page_latency_ms": {
            "idle": summary(pager.between(sync_began - idle_seconds, sync_began)),
            "during_sync": summary(pager.between(sync_began, sync_end + 0.5)),
        },
        "touch_all_checked_items": checked,
        "touch_all_wrong_items": wrong,
        "patched_visible": patched_ok,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--staged", type=int, default=1000, help="patches the sync applies")
    p.add_argument("--duration", type=float, default=1.0, help="--sync-duration-seconds")
    p.add_argument("--idle-seconds", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="50,000 records, 200 patches")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.staged = 50_000, 200
    result = run(args.records, args.staged, args.duration, args.idle_seconds)
    print(json.dumps(result, indent=2))
    idle, during = result["page_latency_ms"]["idle"], result["page_latency_ms"]["during_sync"]
    ok = (
        result["sync_overhead_seconds"] < 10
        and during.get("p99", 0) - idle.get("p99", 0) < 50
        and result["touch_all_wrong_items"] == 0
        and result["patched_visible"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
