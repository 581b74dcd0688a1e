"""Sync-aware polling benchmark: data requests per Bindbee sync, and sync → event latency.

    python bench/sync.py [--quick] [--json PATH]

Starts its own tansu broker and the simulator in scheduled mode (changes are staged and
applied by a sync). Prints one JSON object; exit code 1 when a target is missed.

- ``requests_per_sync``: C connectors x N records, an in-process Scheduler (as
  tests/test_sync_polling.py runs it) following syncs by reading the connectors list every
  ``check_interval``. After the initial scans, K check intervals with nothing synced must
  cost 0 data requests; then records of one connector are patched and it syncs: that
  connector's data requests / ceil(N/100) (target 1.00), the others' (target 0).
- ``sync_to_event_p99_s``: ``lms-changefeed run`` as its own process on one connector of
  N records. Over R syncs, the time from the sync completing (``SimServer.sync`` returned)
  to the last of its changed records' ``updated`` events being read by a consumer
  assigned to the topic (matched by record id and the new ``start_date``). Two ways of
  noticing the sync: the watcher (list read every 1 s; target p99 ≤ 1 s + full scan + 1 s)
  and the simulator's signed webhook to the daemon's receiver with no timer at all
  (target p99 ≤ full scan + 1 s). The full-scan time is the daemon's own ``duration_s`` of
  the scans those syncs caused (median reported and used in the target;
  ``latency_minus_own_scan`` pairs each sync with its own scan). A sync starts only after
  the previous sync's scan finished, as with a day between syncs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import socket
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from _harness import DaemonProcess, Workspace
from _latency import TopicWatcher

from bindbee_sim import SimServer
from daemon import log as logsetup
from daemon.models import StreamKey
from daemon.runtime import Runtime
from daemon.schedule.scheduler import Scheduler
from daemon.settings import load_settings
from daemon.timestamps import normalize_time
from devtools.tansu import TansuBroker

MODEL = "enrollments"
PAGE_SIZE = 100
API_KEY = "bench-key"
WEBHOOK_SECRET = "bench-webhook-secret"
SYNC_SECONDS = 0.2  # how long the simulator shows Syncing
CHANGED_PER_SYNC = 5  # records patched before each sync of the latency case


@dataclass(frozen=True)
class Sizes:
    records: int  # N per connector
    connectors: int  # C of the requests case
    idle_checks: int  # K check intervals with nothing synced
    syncs: int  # R syncs per latency variant


QUICK = Sizes(records=2_000, connectors=3, idle_checks=10, syncs=5)
FULL = Sizes(records=20_000, connectors=3, idle_checks=10, syncs=20)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def _data_requests(sim: SimServer, connector: str) -> int:
    return sum(sim.stats().get(connector, {}).values())


def _summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p99 (nearest rank: with few samples, the maximum) and max, in seconds."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
    }


def _base_config(
    sim: SimServer, bootstrap: str, state: Path, connectors: dict[str, str], **bindbee: Any
) -> dict[str, Any]:
    return {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": API_KEY,
            "page_size": PAGE_SIZE,
            "rate_limit": {"requests": 1_000_000, "per_seconds": 60},
            **bindbee,
        },
        "connectors": [{"name": name, "token": token} for name, token in connectors.items()],
        # baseline: the initial sync stores the records silently; only synced changes
        # become events (the initial sync's cost is bench/run.py's business).
        "models": {MODEL: {"trigger": "sync", "initial_sync": "baseline"}},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 2,
            "topic_template": f"bsync{uuid.uuid4().hex[:10]}.{{connector}}.{{model}}",
        },
        "state": {"path": str(state)},
        "http": {"enabled": False},
        "scheduler": {"jitter_seconds": 0.0, "shutdown_timeout_seconds": 20},
        "log": {"format": "json", "level": "INFO"},
    }


def _write(ws: Workspace, name: str, config: dict[str, Any]) -> Path:
    path = ws.path(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- requests per sync ---------------------------------------------------------------------


def requests_case(bootstrap: str, ws: Workspace, sizes: Sizes) -> dict[str, Any]:
    """Data requests spent with nothing synced, and per sync of one of C connectors."""
    names = {f"c{i}": f"tok_c{i}" for i in range(sizes.connectors)}
    check_interval = 0.2
    pages = math.ceil(sizes.records / PAGE_SIZE)
    with SimServer(
        connectors=names,
        enrollments=sizes.records,
        seed=31,
        api_key=API_KEY,
        rate_limit=0,
        sync_mode="scheduled",
        sync_duration_seconds=SYNC_SECONDS,
    ) as sim:
        config = _base_config(
            sim,
            bootstrap,
            ws.path("requests.db"),
            names,
            sync_check_interval_seconds=check_interval,
            sync_check_min_gap_seconds=0,
        )
        settings = load_settings(_write(ws, "requests", config))
        runtime = Runtime.open(settings)
        scheduler = Scheduler(runtime)
        store = runtime.store
        keys = {name: StreamKey(name, MODEL) for name in names}

        def settled(name: str) -> bool:
            state = store.state(keys[name])
            idle = scheduler.health[keys[name]].running_since is None
            return state.last_full_scan_at is not None and not state.in_progress and idle

        def checks(more: int) -> None:
            assert scheduler.watcher is not None
            target = scheduler.watcher.checks + more
            _wait(lambda: scheduler.watcher.checks >= target, 60, f"{more} sync checks")

        try:
            began = time.monotonic()
            scheduler.start()
            _wait(lambda: all(settled(n) for n in names), 600, "the initial scans")
            initial_s = time.monotonic() - began
            initial = {n: _data_requests(sim, n) for n in names}

            before = {n: _data_requests(sim, n) for n in names}
            checks(sizes.idle_checks)
            idle = sum(_data_requests(sim, n) - before[n] for n in names)

            target = "c0"
            ids = sim.ids(target, MODEL)
            for n, rid in enumerate(random.Random(3).sample(ids, 10)):
                sim.update(target, MODEL, rid, {"start_date": f"2039-01-{n + 1:02d}T00:00:00Z"})
            before = {n: _data_requests(sim, n) for n in names}
            sim.sync(target)
            synced = normalize_time(sim.connector(target)["last_sync_start_time"])
            _wait(
                lambda: store.state(keys[target]).sync_bookmark == synced and settled(target),
                300,
                "the scan of the sync",
            )
            checks(3)  # anything that would follow the sync has had its chance
            after = {n: _data_requests(sim, n) for n in names}
        finally:
            scheduler.shutdown(30)
            runtime.close()
    per_sync = after[target] - before[target]
    others = sum(after[n] - before[n] for n in names if n != target)
    return {
        "requests_per_sync": round(per_sync / pages, 3),
        "requests_idle": idle,
        "requests_other_connectors": others,
        "details": {
            "connectors": sizes.connectors,
            "records_per_connector": sizes.records,
            "minimum_requests": pages,
            "sync_requests": per_sync,
            "initial_requests": initial,
            "initial_scans_s": round(initial_s, 2),
            "check_interval_s": check_interval,
            "idle_check_intervals": sizes.idle_checks,
        },
    }


# -- sync → event latency ------------------------------------------------------------------


def updated_start_date(event: dict[str, Any]) -> tuple[str, str] | None:
    """An ``updated`` event's (subject, start_date): the change this bench makes."""
    if not event["type"].endswith(".updated"):
        return None
    return event["subject"], normalize_time(event["data"]["record"]["start_date"])


def latency_case(bootstrap: str, ws: Workspace, sizes: Sizes, via: str) -> dict[str, Any]:
    """R syncs of one connector; ``via`` is ``watcher`` (list read every second) or
    ``webhook`` (no timer: the simulator's signed delivery is the only trigger)."""
    name, token = "acme", "tok_acme"
    port = _free_port()
    check_interval = 1.0 if via == "watcher" else 0.0
    hooks: dict[str, Any] = {}
    if via == "webhook":
        hooks = {
            "webhook_url": f"http://127.0.0.1:{port}/webhooks/bindbee",
            "webhook_secret": WEBHOOK_SECRET,
        }
    pages = math.ceil(sizes.records / PAGE_SIZE)
    with SimServer(
        connectors={name: token},
        enrollments=sizes.records,
        seed=41,
        api_key=API_KEY,
        rate_limit=0,
        sync_mode="scheduled",
        sync_duration_seconds=SYNC_SECONDS,
        **hooks,
    ) as sim:
        # Reads of the list at most once a second; syncs here are further apart than that.
        config = _base_config(
            sim,
            bootstrap,
            ws.path(f"latency-{via}.db"),
            {name: token},
            sync_check_interval_seconds=check_interval,
            sync_check_min_gap_seconds=1.0,
        )
        if via == "webhook":
            config["webhook"] = {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "hint_interval_seconds": 1.0,
            }
        topic = config["kafka"]["topic_template"].format(connector=name, model=MODEL)
        os.environ["CHANGEFEED_WEBHOOK__SECRET"] = WEBHOOK_SECRET  # inherited by the daemon
        daemon = DaemonProcess(ws, _write(ws, f"latency-{via}", config))
        latencies: list[float] = []
        try:
            daemon.wait_for_scans(1, 600)
            requests_before = _data_requests(sim, name)
            rng = random.Random(7)
            ids = sim.ids(name, MODEL)
            with TopicWatcher(
                bootstrap, topic, updated_start_date, client_id="bench-sync"
            ) as arrivals:
                if not arrivals.ready.wait(60):
                    raise RuntimeError("the consumer was not assigned in time")
                for r in range(sizes.syncs):
                    # Random spacing: syncs complete at random points of the check cycle.
                    time.sleep(rng.uniform(1.0, 2.0))
                    expected = []
                    for n, rid in enumerate(rng.sample(ids, CHANGED_PER_SYNC)):
                        value = f"{2050 + r}-{n + 1:02d}-01T00:00:00Z"
                        sim.update(name, MODEL, rid, {"start_date": value})
                        expected.append((rid, normalize_time(value)))
                    sim.sync(name)
                    done = time.monotonic()
                    latencies.append(arrivals.wait_all(expected, 120) - done)
                    # The scan goes on past the changed records to the last page; the next
                    # sync waits for it, as a day between syncs would (a sync done during a
                    # scan queues a pass of its own: that would measure the queue).
                    daemon.wait_for_scans(r + 2, 120)
            requests = _data_requests(sim, name) - requests_before
            scans = daemon.scans()[1:]
        finally:
            code, rss = daemon.stop()
            os.environ.pop("CHANGEFEED_WEBHOOK__SECRET", None)
        if code != 0:
            raise RuntimeError(f"daemon run exited {code}; log: {daemon.log_path}")
        deliveries = [d for d in sim.webhooks() if d["event"] == "connector_synced"]
    scan_s = [float(s["duration_s"]) for s in scans]
    full_scan = statistics.median(scan_s) if scan_s else float("nan")
    stats = _summary(latencies)
    target = check_interval + full_scan + 1.0
    # Each sync against its own scan: what noticing the sync and publishing cost on top.
    beyond = _summary([lat - scan for lat, scan in zip(latencies, scan_s, strict=False)])
    return {
        "latency": stats,
        "target_s": round(target, 3),
        "target_met": stats["p99"] is not None and stats["p99"] <= target,
        "latency_minus_own_scan": beyond,
        "latency_minus_own_scan_target_s": check_interval + 1.0,
        "full_scan_s": {"median": round(full_scan, 3), "max": round(max(scan_s, default=0), 3)},
        "scans_after_initial": len(scans),
        "full_scans_after_initial": sum(s.get("kind") == "full" for s in scans),
        "data_requests_per_sync": round(requests / pages / max(1, sizes.syncs), 3),
        "check_interval_s": check_interval,
        "records": sizes.records,
        "changed_per_sync": CHANGED_PER_SYNC,
        "webhook_deliveries_ok": sum(d["outcome"] == "delivered" for d in deliveries),
        "daemon_peak_rss_mb": round(rss, 1),
        "latencies_s": [round(x, 3) for x in latencies],
    }


# -- main ----------------------------------------------------------------------------------


def run(sizes: Sizes) -> dict[str, Any]:
    ws = Workspace()
    try:
        with TansuBroker() as broker:
            boot = broker.bootstrap
            requests = _step("requests per sync", lambda: requests_case(boot, ws, sizes))
            watcher = _step("latency via watcher", lambda: latency_case(boot, ws, sizes, "watcher"))
            webhook = _step("latency via webhook", lambda: latency_case(boot, ws, sizes, "webhook"))
    finally:
        ws.cleanup()
    targets = {
        "requests_per_sync == 1.00": requests["requests_per_sync"] == 1.0,
        "requests_idle == 0": requests["requests_idle"] == 0,
        "requests_other_connectors == 0": requests["requests_other_connectors"] == 0,
        "watcher p99 <= interval + full scan + 1 s": watcher["target_met"],
        "webhook p99 <= full scan + 1 s": webhook["target_met"],
    }
    return {
        "requests_per_sync": requests["requests_per_sync"],
        "requests_idle": requests["requests_idle"],
        "requests_other_connectors": requests["requests_other_connectors"],
        "sync_to_event_p99_s": {
            "watcher": watcher["latency"]["p99"],
            "webhook": webhook["latency"]["p99"],
        },
        "targets": targets,
        "details": {
            "requests": requests["details"],
            "watcher": watcher,
            "webhook": webhook,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    }


def _step(name: str, fn: Any) -> dict[str, Any]:
    print(f"# {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    result = fn()
    print(f"#   {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 records, 5 syncs per variant")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    logsetup.configure("WARNING", "json")  # the bench's own use of daemon code stays quiet
    started = time.monotonic()
    result = run(sizes)
    result["details"]["sizes"] = sizes.__dict__
    result["details"]["wall_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
