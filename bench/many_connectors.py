"""Many connectors per pod: start-up, idle RSS, threads and idle CPU of ``lms-changefeed run``.

    python bench/many_connectors.py [--quick] [--connectors N] [--workers W] [--json PATH]

Starts its own tansu broker and one simulator process serving N connectors (default
1,000) of a small dataset each, then ``lms-changefeed run`` (SQLite state) following all of
them with one model, each stream on a long interval so that, once the initial syncs are on
Kafka, the daemon has nothing to do. Measured from outside, from ``/proc`` and the
daemon's own log:

- ``startup_s``: process start → ``/readyz`` answers 200 *and* ``scheduler_started`` is
  logged (both are reported; target < 10 s);
- ``initial_sync_s``: process start → every stream logged its first ``scan_finished``;
- ``idle_rss_mb``: VmRSS after ``--idle-seconds`` of idling that follows the initial
  syncs (target < 300 MB; ``peak_rss_mb`` is the VmHWM at exit);
- ``threads_max`` / ``threads_idle``: the process's threads, sampled during the initial
  syncs and at the end of the idle window, against the configured workers (target: bounded
  by the workers, not by the streams);
- ``idle_cpu_percent``: CPU time (user + system) over the idle window / its length, in %
  of one core (target < 5 %); ``idle_scans`` counts passes that started in it (0 expected).

Exit code 1 when a target is missed. The helpers at the top (many-connector simulator,
config, a daemon process whose log is followed incrementally, /proc readings) are shared
with ``bench/fleet_drain.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from _harness import API_KEY, MODEL, PAGE_SIZE, Simulator, Workspace, _daemon_cmd, _peak_rss_mb

from daemon import log as logsetup
from devtools.tansu import TansuBroker

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_POLL_SECONDS = 0.05  # between two looks at the daemon's log and /proc


# -- shared with fleet_drain.py ----------------------------------------------------------


def connector_tokens(count: int) -> dict[str, str]:
    """``count`` connector names and their tokens: c0000 → tok_c0000, ..."""
    return {f"c{i:04d}": f"tok_c{i:04d}" for i in range(count)}


class FleetSimulator(Simulator):
    """The bench simulator process, serving many connectors instead of one."""

    def __init__(
        self,
        connectors: dict[str, str],
        records: int,
        *,
        rate_limit: int = 200,
        window_seconds: float = 60.0,
        seed: int = 1,
    ) -> None:
        super().__init__(records, rate_limit=rate_limit, window_seconds=window_seconds, seed=seed)
        self._cmd[self._cmd.index("--connectors") + 1] = ",".join(
            f"{name}:{token}" for name, token in connectors.items()
        )

    def all_stats(self) -> dict[str, dict[str, int]]:
        """``/_sim/stats``: data responses per connector and status code."""
        return httpx.get(f"{self.base_url}/_sim/stats", timeout=30).json()

    def add_fault(self, **fault: Any) -> None:
        """``POST /_sim/faults``: e.g. ``delay_ms=150, count=10**9`` slows every request."""
        httpx.post(f"{self.base_url}/_sim/faults", json=fault, timeout=30).raise_for_status()


def fleet_config(
    ws: Workspace,
    name: str,
    *,
    sim: Simulator,
    bootstrap: str,
    connectors: dict[str, str],
    state: dict[str, Any],
    model: dict[str, Any],
    scheduler: dict[str, Any],
    rate_limit: tuple[int, float] = (200, 60.0),
) -> Path:
    """A daemon configuration for ``connectors`` x one model; returns its path."""
    config = {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": API_KEY,
            "page_size": PAGE_SIZE,
            "rate_limit": {"requests": rate_limit[0], "per_seconds": rate_limit[1]},
        },
        "connectors": [{"name": n, "token": t} for n, t in connectors.items()],
        "models": {MODEL: model},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "topic_template": f"fleet{uuid.uuid4().hex[:10]}.{{model}}",
        },
        "state": state,
        "log": {"level": "INFO", "format": "json"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "scheduler": scheduler,
    }
    path = ws.path(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _log_time(line: dict[str, Any]) -> float | None:
    """The log line's own time stamp as epoch seconds (the daemon logs ISO, UTC)."""
    stamp = line.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class ProcSample:
    """One look at a process in /proc."""

    cpu_s: float  # user + system
    rss_mb: float
    threads: int


def proc_sample(pid: int) -> ProcSample:
    """CPU seconds, VmRSS and thread count of ``pid`` (zeros once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ProcSample(0.0, 0.0, 0)
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(values.get("VmRSS", "0 kB").split()[0])
    return ProcSample(cpu, rss_kb / 1024, int(values.get("Threads", "0")))


@dataclass
class RunProcess:
    """``lms-changefeed run`` (through the peak-RSS shim), its JSON log followed as it grows.

    Times are epoch seconds from the daemon's own log stamps; ``started`` is taken just
    before the process is spawned.
    """

    ws: Workspace
    config: Path
    label: str
    env: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    scheduler_started: float | None = None
    http_port: int | None = None
    first_scan_started: float | None = None
    finished: dict[str, float] = field(default_factory=dict)  # stream → first scan_finished
    items: dict[str, int] = field(default_factory=dict)  # stream → items of that scan
    scans_started: list[tuple[float, str]] = field(default_factory=list)
    scans_finished_at: list[tuple[float, str]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    garbled_lines: int = 0

    def __post_init__(self) -> None:
        self.log_path = self.ws.path(f"{self.config.stem}-{self.label}.log")
        self._log = self.log_path.open("wb")
        self._offset = 0
        self._partial = b""
        self.started = time.time()
        self._proc = subprocess.Popen(
            _daemon_cmd("run", self.config),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def sample(self) -> ProcSample:
        return proc_sample(self._proc.pid)

    def follow(self) -> None:
        """Read what the log gained since the last call."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if not raw.startswith(b"{"):
                continue
            try:
                self._on(orjson.loads(raw))
            except orjson.JSONDecodeError:
                # Two lines run together (a library's stdlib log line written between a
                # structlog line and its newline): take them apart rather than lose one.
                self.garbled_lines += 1
                for piece in raw.replace(b"}{", b"}\n{").split(b"\n"):
                    try:
                        self._on(orjson.loads(piece))
                    except orjson.JSONDecodeError:
                        continue

    def _on(self, line: dict[str, Any]) -> None:
        event = line.get("event")
        at = _log_time(line) or time.time()
        stream = f"{line.get('connector')}/{line.get('model')}"
        if event == "scan_started":
            self.scans_started.append((at, stream))
            if self.first_scan_started is None:
                self.first_scan_started = at
        elif event == "scan_finished":
            self.scans_finished_at.append((at, stream))
            if stream not in self.finished:
                self.finished[stream] = at
                self.items[stream] = int(line.get("items", 0))
        elif event == "scheduler_started":
            self.scheduler_started = at
        elif event == "http_listening":
            self.http_port = int(line["port"])
        elif line.get("level") in ("error", "critical"):
            self.errors.append(line)

    def ready(self) -> bool:
        """``/readyz`` answers 200."""
        if self.http_port is None:
            return False
        try:
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        """Raise (with the log's tail) if the daemon exited."""
        if not self.alive():
            raise RuntimeError(
                f"daemon {self.label} exited ({self._proc.returncode}):\n{self.tail()}"
            )

    def stop(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then reap: (exit code, peak RSS MB from the shim's VmHWM)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._log.close()
        return code, _peak_rss_mb(self.log_path)


def wait_for(condition: Any, timeout: float, what: str, *daemons: RunProcess) -> Any:
    """Poll ``condition`` until truthy; raise after ``timeout`` s or if a daemon died."""
    deadline = time.monotonic() + timeout
    while True:
        for daemon in daemons:
            daemon.follow()
        value = condition()
        if value:
            return value
        for daemon in daemons:
            daemon.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(_POLL_SECONDS)


# -- this benchmark ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    connectors: int
    records: int  # per connector
    idle_seconds: float


FULL = Sizes(connectors=1000, records=20, idle_seconds=20.0)
QUICK = Sizes(connectors=200, records=20, idle_seconds=10.0)


def measure(sizes: Sizes, *, workers: int | None, trigger: str) -> dict[str, Any]:
    """One daemon following ``sizes.connectors`` connectors; the figures above."""
    ws = Workspace()
    connectors = connector_tokens(sizes.connectors)
    model: dict[str, Any] = {"trigger": trigger, "initial_sync": "emit"}
    model["poll_interval_seconds"] = 86400  # idle means idle: no timer pass in the window
    scheduler: dict[str, Any] = {"jitter_seconds": 0.0}
    if workers is not None:
        scheduler["max_workers"] = workers
    try:
        with TansuBroker() as broker, FleetSimulator(connectors, sizes.records) as sim:
            config = fleet_config(
                ws,
                "many",
                sim=sim,
                bootstrap=broker.bootstrap,
                connectors=connectors,
                state={"path": str(ws.path("many.db"))},
                model=model,
                scheduler=scheduler,
            )
            daemon = RunProcess(ws, config, "run")
            try:
                result = _measure(daemon, sizes, workers)
            finally:
                code, peak = daemon.stop()
            result["exit_code"] = code
            result["peak_rss_mb"] = round(peak, 1)
            return result
    finally:
        ws.cleanup()


def _measure(daemon: RunProcess, sizes: Sizes, workers: int | None) -> dict[str, Any]:
    streams = sizes.connectors
    ready_at: list[float] = []
    threads_max = 0

    def up() -> bool:
        nonlocal threads_max
        threads_max = max(threads_max, daemon.sample().threads)
        if not ready_at and daemon.ready():
            ready_at.append(time.time())
        return bool(ready_at) and daemon.scheduler_started is not None

    wait_for(up, 120, "the daemon to be ready", daemon)
    ready_s = ready_at[0] - daemon.started
    assert daemon.scheduler_started is not None
    scheduler_s = daemon.scheduler_started - daemon.started
    print(f"# ready in {ready_s:.2f}s, scheduler_started at {scheduler_s:.2f}s", file=sys.stderr)

    def synced() -> bool:
        nonlocal threads_max
        threads_max = max(threads_max, daemon.sample().threads)
        return len(daemon.finished) >= streams

    wait_for(synced, 600, f"{streams} initial syncs", daemon)
    synced_s = max(daemon.finished.values()) - daemon.started
    print(f"# {streams} initial syncs done at {synced_s:.2f}s", file=sys.stderr)

    # Idle: sample at the edges of the window (and the threads every second in between).
    scans_before = len(daemon.scans_started)
    first = daemon.sample()
    began = time.monotonic()
    rss_max = first.rss_mb
    while (elapsed := time.monotonic() - began) < sizes.idle_seconds:
        time.sleep(min(1.0, sizes.idle_seconds - elapsed))
        now = daemon.sample()
        threads_max = max(threads_max, now.threads)
        rss_max = max(rss_max, now.rss_mb)
    last = daemon.sample()
    window = time.monotonic() - began
    daemon.follow()
    daemon.check()
    idle_cpu = 100 * (last.cpu_s - first.cpu_s) / window
    return {
        "connectors": streams,
        "records_per_connector": sizes.records,
        "workers": workers,
        "startup_s": round(max(ready_s, scheduler_s), 2),
        "startup_ready_s": round(ready_s, 2),
        "startup_scheduler_started_s": round(scheduler_s, 2),
        "initial_sync_s": round(synced_s, 2),
        "records_synced": sum(daemon.items.values()),
        "idle_rss_mb": round(last.rss_mb, 1),
        "idle_rss_max_mb": round(rss_max, 1),
        "threads_idle": last.threads,
        "threads_max": threads_max,
        "idle_cpu_percent": round(idle_cpu, 2),
        "idle_window_s": round(window, 1),
        "idle_scans": len(daemon.scans_started) - scans_before,
        "cpu_s_total": round(last.cpu_s, 2),
        "errors_logged": len(daemon.errors),
        "garbled_log_lines": daemon.garbled_lines,
    }


def _targets(result: dict[str, Any], workers_bound: int) -> dict[str, bool]:
    return {
        "startup_s < 10": result["startup_s"] < 10,
        "idle_rss_mb < 300": result["idle_rss_mb"] < 300,
        f"threads_max <= {workers_bound} (2 x workers + 20)": result["threads_max"]
        <= workers_bound,
        "idle_cpu_percent < 5": result["idle_cpu_percent"] < 5,
        "idle_scans == 0": result["idle_scans"] == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 connectors, 10 s idle")
    parser.add_argument("--connectors", type=int, help="connectors (default 1,000; quick 200)")
    parser.add_argument("--records", type=int, help="records per connector (default 20)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 20; quick 10)")
    parser.add_argument(
        "--workers", type=int, help="scheduler.max_workers (default: unset, the daemon's own)"
    )
    parser.add_argument(
        "--trigger",
        choices=("interval", "sync"),
        default="interval",
        help="the model's trigger; sync adds the watcher's connectors-list reads "
        "(every 60 s) to the idle figures (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    sizes = Sizes(
        connectors=args.connectors or base.connectors,
        records=args.records or base.records,
        idle_seconds=args.idle_seconds or base.idle_seconds,
    )
    logsetup.configure("WARNING", "json")
    started = time.monotonic()
    result = measure(sizes, workers=args.workers, trigger=args.trigger)
    # The default is one worker per stream, at most 32 (settings.SchedulerSettings).
    workers = args.workers or min(sizes.connectors, 32)
    # Each pass has one page-prefetch thread beside its worker; the rest is fixed (APScheduler,
    # health and webhook servers, Kafka I/O, reloader, ...).
    bound = 2 * workers + 20
    result["targets"] = _targets(result, bound)
    result["run"] = {
        "mode": "quick" if args.quick else "full",
        "trigger": args.trigger,
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
