"""Targeted reads by id (issue 21): sync → event latency and data requests per sync.

    python bench/targeted.py [--quick] [--json PATH] [--modes walk,1,7,auto]

One connector of N records (100,000; quick 20,000) in the simulator as its own process
(scheduled sync mode, limit 200 requests per 5 s, signed webhooks to the daemon's
receiver), one ``lms-changefeed run`` (SQLite state, ``initial_sync: baseline``, the
daemon's ``bindbee.rate_limit`` set to the simulator's limit), a tansu broker. Per mode,
a fresh simulator, state and topic:

- ``walk``: walk only. The simulator loses every ``connector_data_modified`` (its
  ``/_sim/webhooks/drop``), so each sync is noticed through ``connector_synced`` and
  walked, as before issue 21; ``bindbee.hint_grace_seconds`` is 0 when the daemon knows
  it (nothing to wait for).
- ``1``, ``7``, ``auto``: ``models.enrollments.full_scan_every_syncs`` = that value, the
  hints delivered.

After the first completed walk (the initial baseline scan), 14 syncs of k = 10 changes
each (6 updates, 2 creates, 2 deletes; every record changed once in the run): sync 1 is
the first sync after a completed walk. Each sync's latency runs from the simulator
reporting it Done (its ``finished_at`` in ``/_sim/syncs``) to the last of its k events
read by a consumer assigned to the topic from the beginning (tansu misreports end
offsets). The next sync starts once the daemon is idle: every ``scan_started`` has its
``scan_finished`` and the simulator answered no data request for ``--quiet-seconds``.
Data requests per sync are the simulator's count (``/_sim/stats``; pages and reads by id
from ``/_sim/reads``) from staging one sync's changes to staging the next's.

Targets (exit 1 when one is missed, 2 when a mode could not run, e.g. the daemon refuses
``full_scan_every_syncs``):
- hinted modes: sync → event p99 ≤ 1 s + the time of k requests at the limit;
- full run: mode ``7``'s p99 at 100,000 ≤ 1.5 x its p99 in a second run at 20,000
  (latency does not grow with N; the symmetric ratio is reported too);
- mode ``7``: average data requests per sync ≤ 0.2 x ceil(N/100).
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
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from _harness import (
    API_KEY,
    CONNECTOR,
    MODEL,
    PAGE_SIZE,
    TOKEN,
    DaemonProcess,
    Simulator,
    Workspace,
    api_headers,
    log_records,
    new_topic_prefix,
)
from _latency import TopicWatcher

from daemon import log as logsetup
from devtools.tansu import TansuBroker

MODES = ("walk", "1", "7", "auto")
HINTED = ("1", "7", "auto")
SYNCS = 14
UPDATES, CREATES, DELETES = 6, 2, 2
K = UPDATES + CREATES + DELETES
LIMIT, WINDOW = 200, 5.0  # the simulator's limit, and the daemon's budget
SYNC_SECONDS = 0.2  # how long the simulator shows Syncing
WEBHOOK_SECRET = "bench-targeted-secret"
DATA_MODIFIED = "connector_data_modified"
SCALE_MODE = "7"


@dataclass(frozen=True)
class Sizes:
    records: int
    scale_records: int | None  # a second run of SCALE_MODE at this size (None: skipped)


QUICK = Sizes(20_000, None)
FULL = Sizes(100_000, 20_000)


class ConfigRefused(RuntimeError):
    """The daemon does not accept the configuration a mode needs."""


# -- helpers ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _p99(values: list[float]) -> float | None:
    """Nearest rank (with 14 samples: the maximum)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _planned_ids(records: int, seed: int) -> list[str]:
    """Every id the simulator process will serve: the same generator, in this process."""
    from bindbee_sim.state import SimState

    state = SimState({CONNECTOR: TOKEN}, enrollments=records, seed=seed, api_key=API_KEY)
    try:
        return state.ids(CONNECTOR, MODEL)
    finally:
        state.close()


def check_config(path: Path) -> None:
    """``lms-changefeed check-config``; raises ``ConfigRefused`` with its answer."""
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ConfigRefused((done.stdout + done.stderr).strip()[-2000:])


class Control:
    """The simulator's ``/_sim`` API for the bench connector."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=30)

    def close(self) -> None:
        self.client.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        response.raise_for_status()
        return None if response.status_code == 204 else response.json()

    def patch(self, record_id: str, fields: dict[str, Any]) -> None:
        self._json("PATCH", f"/_sim/{CONNECTOR}/{MODEL}/{record_id}", json=fields)

    def create(self, fields: dict[str, Any]) -> str:
        return str(self._json("POST", f"/_sim/{CONNECTOR}/{MODEL}", json=fields)["id"])

    def delete(self, record_id: str) -> None:
        self._json("DELETE", f"/_sim/{CONNECTOR}/{MODEL}/{record_id}")

    def sync(self) -> str:
        return str(self._json("POST", "/_sim/syncs", json={"connector": CONNECTOR})["sync_id"])

    def wait_done(self, sync_id: str, timeout: float) -> dict[str, Any]:
        """The sync once it has ended (the simulator's own record of it)."""
        deadline = time.monotonic() + timeout
        while True:
            for sync in reversed(self._json("GET", "/_sim/syncs")):
                if sync["sync_id"] == sync_id and sync["status"] != "Syncing":
                    if sync["status"] != "Done":
                        raise RuntimeError(f"sync {sync_id} ended {sync['status']}")
                    return dict(sync)
            if time.monotonic() > deadline:
                raise RuntimeError(f"sync {sync_id} not Done after {timeout} s")
            time.sleep(0.02)

    def drop_all(self, event: str) -> None:
        self._json("POST", "/_sim/webhooks/drop", json={"event": event, "count": 1_000_000_000})

    def requests(self) -> int:
        return sum(int(n) for n in self._json("GET", "/_sim/stats").get(CONNECTOR, {}).values())

    def reads(self) -> tuple[int, int]:
        per = self._json("GET", "/_sim/reads").get(CONNECTOR, {})
        return int(per.get("pages", 0)), int(per.get("by_id", 0))

    def webhooks(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/_sim/webhooks"))


def subject_and_kind(event: dict[str, Any]) -> tuple[str, str]:
    """(record id, created | updated | deleted) of an event."""
    return str(event.get("subject")), str(event.get("type", "")).rsplit(".", 1)[-1]


def _running(daemon: DaemonProcess) -> Callable[[], None]:
    def check() -> None:
        if daemon.exit_code() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.exit_code()}); log: {daemon.log_path}")

    return check


def _passes(daemon: DaemonProcess) -> tuple[int, int]:
    """(scan_started, scan_finished) lines so far."""
    records = log_records(daemon.log_path)
    started = sum(r.get("event") == "scan_started" for r in records)
    finished = sum(r.get("event") == "scan_finished" for r in records)
    return started, finished


def wait_idle(daemon: DaemonProcess, sim: Control, quiet: float, timeout: float) -> None:
    """Until no pass runs and the simulator answered no data request for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since = sim.requests(), time.monotonic()
    while True:
        time.sleep(0.2)
        if daemon.exit_code() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.exit_code()}); log: {daemon.log_path}")
        now, count = time.monotonic(), sim.requests()
        if count != last:
            last, since = count, now
            continue
        started, finished = _passes(daemon)
        if started == finished and now - since >= quiet:
            return
        if now > deadline:
            raise RuntimeError(f"the daemon was not idle within {timeout} s")


# -- one mode ----------------------------------------------------------------------------


def _config(
    ws: Workspace,
    name: str,
    *,
    base_url: str,
    bootstrap: str,
    topic_prefix: str,
    port: int,
    mode: str,
    grace_zero: bool,
) -> dict[str, Any]:
    model: dict[str, Any] = {"trigger": "sync", "initial_sync": "baseline"}
    if mode != "walk":
        model["full_scan_every_syncs"] = mode if mode == "auto" else int(mode)
    bindbee: dict[str, Any] = {
        "base_url": base_url,
        "api_key": API_KEY,
        "page_size": PAGE_SIZE,
        "rate_limit": {"requests": LIMIT, "per_seconds": WINDOW},
        # The webhook is the only trigger: no timer, no minimum gap between list reads.
        "sync_check_interval_seconds": 0,
        "sync_check_min_gap_seconds": 0,
    }
    if grace_zero:
        bindbee["hint_grace_seconds"] = 0
    return {
        "bindbee": bindbee,
        "connectors": [{"name": CONNECTOR, "token": TOKEN}],
        "models": {MODEL: model},
        "kafka": {"bootstrap_servers": bootstrap, "topic_template": topic_prefix + ".{model}"},
        "state": ws.state_config(ws.path(f"{name}.db")),
        "webhook": {
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "secret": WEBHOOK_SECRET,
            "hint_interval_seconds": 0,
        },
        "http": {"enabled": False},
        "scheduler": {"jitter_seconds": 0.0, "shutdown_timeout_seconds": 20},
        "log": {"level": "INFO", "format": "json"},
    }


def _write(ws: Workspace, name: str, config: dict[str, Any]) -> Path:
    path = ws.path(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _configure(ws: Workspace, name: str, mode: str, **common: Any) -> Path:
    """The mode's config file, checked by the daemon itself."""
    if mode == "walk":
        # Nothing to wait for without hints: grace 0 when the daemon knows the setting.
        path = _write(ws, name, _config(ws, name, mode=mode, grace_zero=True, **common))
        try:
            check_config(path)
            return path
        except ConfigRefused as refused:
            if "hint_grace_seconds" not in str(refused):
                raise
    path = _write(ws, name, _config(ws, name, mode=mode, grace_zero=False, **common))
    try:
        check_config(path)
    except ConfigRefused as refused:
        what = "" if mode == "walk" else f" models.{MODEL}.full_scan_every_syncs={mode}:"
        raise ConfigRefused(f"the daemon refuses{what} {refused}") from None
    return path


def mode_case(
    bootstrap: str, ws: Workspace, records: int, mode: str, quiet: float, seed: int = 5
) -> dict[str, Any]:
    """SYNCS syncs of K changes against one daemon in ``mode``."""
    pages = math.ceil(records / PAGE_SIZE)
    walk_s = pages * WINDOW / LIMIT  # one walk at the limit
    name = f"targeted-{mode}-{records}"
    port = _free_port()
    sim_args = (
        "--sync-mode", "scheduled",
        "--sync-duration-seconds", str(SYNC_SECONDS),
        "--webhook-url", f"http://127.0.0.1:{port}/webhooks/bindbee",
        "--webhook-secret", WEBHOOK_SECRET,
    )  # fmt: skip
    ids = _planned_ids(records, seed)
    rng = random.Random(seed)
    chosen = rng.sample(ids, SYNCS * (UPDATES + DELETES))
    with Simulator(
        records, rate_limit=LIMIT, window_seconds=WINDOW, seed=seed, extra_args=sim_args
    ) as sim:
        control = Control(sim.base_url)
        try:
            first = httpx.get(
                f"{sim.base_url}/api/lms/v1/{MODEL}",
                params={"page_size": 5},
                headers=api_headers(),
                timeout=30,
            ).json()["items"]
            if [item["id"] for item in first] != ids[:5]:
                raise RuntimeError("the simulator process serves other ids than planned")
            if mode == "walk":
                control.drop_all(DATA_MODIFIED)
            topic_prefix = new_topic_prefix()
            config = _configure(
                ws,
                name,
                mode,
                base_url=sim.base_url,
                bootstrap=bootstrap,
                topic_prefix=topic_prefix,
                port=port,
            )
            daemon = DaemonProcess(ws, config)
            try:
                return _measure(
                    daemon, control, bootstrap, f"{topic_prefix}.{MODEL}", chosen, records,
                    pages, walk_s, quiet, mode,
                )  # fmt: skip
            finally:
                code, _rss = daemon.stop()
                if code not in (0, None):
                    print(f"#   daemon exited {code}; log: {daemon.log_path}", file=sys.stderr)
        finally:
            control.close()


def _measure(
    daemon: DaemonProcess,
    sim: Control,
    bootstrap: str,
    topic: str,
    chosen: list[str],
    records: int,
    pages: int,
    walk_s: float,
    quiet: float,
    mode: str,
) -> dict[str, Any]:
    timeout = 3 * walk_s + 120
    started = time.monotonic()
    daemon.wait_for_scans(1, 10 * walk_s + 600)  # the first completed walk
    wait_idle(daemon, sim, quiet, timeout)
    initial_s = time.monotonic() - started
    per_sync: list[dict[str, Any]] = []
    with TopicWatcher(
        bootstrap, topic, subject_and_kind, clock=time.time, client_id="bench-targeted"
    ) as events:
        for n in range(SYNCS):
            requests_before = sim.requests()
            pages_before, by_id_before = sim.reads()
            walks_before = _passes(daemon)[1]
            batch = chosen[n * (UPDATES + DELETES) : (n + 1) * (UPDATES + DELETES)]
            expected: list[tuple[str, str]] = []
            for i, record_id in enumerate(batch[:UPDATES]):
                sim.patch(record_id, {"start_date": f"{2060 + n}-01-{i + 1:02d}T00:00:00Z"})
                expected.append((record_id, "updated"))
            for record_id in batch[UPDATES:]:
                sim.delete(record_id)
                expected.append((record_id, "deleted"))
            for i in range(CREATES):
                new_id = sim.create(
                    {"remote_id": f"bench-{n}-{i}", "start_date": f"{2060 + n}-02-01T00:00:00Z"}
                )
                expected.append((new_id, "created"))
            sync_id = sim.sync()
            done = sim.wait_done(sync_id, 60)
            last = events.wait_all(expected, timeout, _running(daemon))
            wait_idle(daemon, sim, quiet, timeout)
            pages_after, by_id_after = sim.reads()
            per_sync.append(
                {
                    "sync": n + 1,
                    "latency_s": round(last - _epoch(done["finished_at"]), 3),
                    "requests": sim.requests() - requests_before,
                    "pages": pages_after - pages_before,
                    "by_id": by_id_after - by_id_before,
                    "walked": _passes(daemon)[1] - walks_before > 0,
                }
            )
            print(f"#     {mode} sync {n + 1}: {per_sync[-1]}", file=sys.stderr, flush=True)
    hints = [
        d for d in sim.webhooks() if d["event"] == DATA_MODIFIED and d["outcome"] != "retrying"
    ]
    latencies = [s["latency_s"] for s in per_sync]
    requests = [s["requests"] for s in per_sync]
    return {
        "mode": mode,
        "records": records,
        "minimum_requests_per_walk": pages,
        "sync_to_event_p99_s": _round(_p99(latencies)),
        "sync_to_event_p50_s": _round(statistics.median(latencies)),
        "requests_per_sync": round(statistics.fmean(requests), 1),
        "requests_per_sync_ratio": round(statistics.fmean(requests) / pages, 3),
        "walks": sum(s["walked"] for s in per_sync),
        "hints_delivered": sum(d["outcome"] == "delivered" for d in hints),
        "hints_dropped": sum(d["outcome"] == "dropped" for d in hints),
        "initial_walk_s": round(initial_s, 1),
        "syncs": per_sync,
    }


# -- main --------------------------------------------------------------------------------


def _step(name: str, fn: Any) -> dict[str, Any]:
    print(f"# {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        result = fn()
    except ConfigRefused as refused:
        print(f"#   {name}: REFUSED: {refused}", file=sys.stderr, flush=True)
        return {"error": f"config refused: {refused}"}
    except RuntimeError as failed:
        print(f"#   {name}: FAILED: {failed}", file=sys.stderr, flush=True)
        return {"error": str(failed)}
    print(f"#   {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return result


def run(sizes: Sizes, modes: list[str], quiet: float) -> dict[str, Any]:
    ws = Workspace()
    results: dict[str, dict[str, Any]] = {}
    scale: dict[str, Any] | None = None
    try:
        with TansuBroker() as broker:
            boot = broker.bootstrap
            for mode in modes:
                results[mode] = _step(
                    f"mode {mode}, N={sizes.records:,}",
                    lambda m=mode: mode_case(boot, ws, sizes.records, m, quiet),
                )
            small = sizes.scale_records
            if small is not None and "error" not in results.get(SCALE_MODE, {"error": ""}):
                scale = _step(
                    f"mode {SCALE_MODE}, N={small:,}",
                    lambda: mode_case(boot, ws, small, SCALE_MODE, quiet),
                )
    finally:
        ws.cleanup()
    return summarize(sizes, results, scale)


def summarize(
    sizes: Sizes, results: dict[str, dict[str, Any]], scale: dict[str, Any] | None
) -> dict[str, Any]:
    pages = math.ceil(sizes.records / PAGE_SIZE)
    p99_target = round(1.0 + K * WINDOW / LIMIT, 3)
    ok = {m: r for m, r in results.items() if "error" not in r}
    targets: dict[str, bool | None] = {}
    for mode in HINTED:
        if mode in results:
            p99 = ok.get(mode, {}).get("sync_to_event_p99_s")
            targets[f"mode {mode}: p99 <= {p99_target} s"] = (
                None if p99 is None else p99 <= p99_target
            )
    scale_ratio = scale_symmetric = None
    if scale is not None and "error" not in scale and SCALE_MODE in ok:
        # Does the latency grow with N? p99 at N over p99 at the small size. The
        # symmetric ratio (larger over smaller) is kept too: at these sub-second
        # latencies the small run may well be the slower one.
        big, small = ok[SCALE_MODE]["sync_to_event_p99_s"], scale["sync_to_event_p99_s"]
        scale_ratio = round(big / max(small, 1e-9), 3)
        scale_symmetric = round(max(big, small) / max(min(big, small), 1e-9), 3)
        targets[
            f"mode {SCALE_MODE}: p99 at {sizes.records:,} <= 1.5 x p99 at {scale['records']:,}"
        ] = scale_ratio <= 1.5
    if "7" in results:
        per_sync = ok.get("7", {}).get("requests_per_sync")
        targets[f"mode 7: requests per sync <= {0.2 * pages:g}"] = (
            None if per_sync is None else per_sync <= 0.2 * pages
        )
    return {
        "records": sizes.records,
        "phase": (
            f"{SYNCS} syncs of {K} changes ({UPDATES} updates, {CREATES} creates, {DELETES} "
            "deletes); sync 1 is the first sync after a completed walk (the initial "
            "baseline scan)"
        ),
        "sync_to_event_p99_s": {m: r.get("sync_to_event_p99_s") for m, r in ok.items()},
        "requests_per_sync": {m: r.get("requests_per_sync") for m, r in ok.items()},
        "requests_per_sync_ratio": {m: r.get("requests_per_sync_ratio") for m, r in ok.items()},
        "walks": {m: r.get("walks") for m, r in ok.items()},
        "p99_target_s": p99_target,
        "scale_p99_ratio": scale_ratio,
        "scale_p99_ratio_symmetric": scale_symmetric,
        "targets": targets,
        "errors": {m: r["error"] for m, r in results.items() if "error" in r}
        | ({f"{SCALE_MODE}@scale": scale["error"]} if scale and "error" in scale else {}),
        "details": {
            "modes": results,
            "scale": scale,
            "limit": {"requests": LIMIT, "per_seconds": WINDOW},
            "minimum_requests_per_walk": pages,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        "| mode | sync → event p50 / p99 (s) | data requests per sync | ÷ ceil(N/100) | walks |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, r in result["details"]["modes"].items():
        if "error" in r:
            rows.append(f"| `{mode}` | not run: {r['error'][:120]} | | | |")
            continue
        rows.append(
            f"| `{mode}` | {r['sync_to_event_p50_s']} / {r['sync_to_event_p99_s']} | "
            f"{r['requests_per_sync']} | {r['requests_per_sync_ratio']} | "
            f"{r['walks']} of {SYNCS} |"
        )
    scale = result["details"]["scale"]
    if scale is not None and "error" not in scale:
        rows.append(
            f"| `{SCALE_MODE}` at {scale['records']:,} | {scale['sync_to_event_p50_s']} / "
            f"{scale['sync_to_event_p99_s']} | {scale['requests_per_sync']} | "
            f"{scale['requests_per_sync_ratio']} | {scale['walks']} of {SYNCS} |"
        )
    lines = [f"N = {result['records']:,}. {result['phase']}.", "", *rows, ""]
    for name, met in result["targets"].items():
        lines.append(f"- {name}: {'met' if met else 'not measured' if met is None else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20,000 records, no second size")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated of walk,1,7,auto (default: all)"
    )
    p.add_argument("--records", type=int, help="N (default 100,000; quick 20,000)")
    p.add_argument(
        "--quiet-seconds",
        type=float,
        default=2.0,
        help="idle = no pass running and no data request for this long (default: %(default)s)",
    )
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    sizes = QUICK if args.quick else FULL
    if args.records is not None:
        sizes = Sizes(args.records, None)
    logsetup.configure("WARNING", "json")
    started = time.monotonic()
    result = run(sizes, modes, args.quiet_seconds)
    result["details"]["wall_s"] = round(time.monotonic() - started, 1)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if result["errors"]:
        return 2
    return 0 if all(met is not False for met in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
