"""Processes for the benchmarks: the simulator, and the daemon run through its own CLI.

The simulator runs as its own process, as the real API would. The daemon runs as
``python -m daemon poll|run --config FILE`` so every figure is the real code path; its
peak RSS is its VmHWM, reported at exit by the ``_peak.py`` shim that starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from _peak import CPU_MARKER
from _peak import MARKER as PEAK_MARKER
from _storage import Workspace

API_KEY = "bench-key"
CONNECTOR = "bench"
TOKEN = "tok_bench"
MODEL = "enrollments"
PAGE_SIZE = 100
DATA_PATH = f"/api/lms/v1/{MODEL}"
_PEAK = Path(__file__).with_name("_peak.py")


class Simulator:
    """``python -m bindbee_sim`` on a free loopback port, for one benchmark case.

    With ``access_log`` every data response is time-stamped on arrival of its log line
    (``served_at``): the simulator's own view of when it answered, for the budget case.
    """

    def __init__(
        self,
        records: int,
        *,
        rate_limit: int = 0,
        window_seconds: float = 60.0,
        honor_modified_after: bool = False,
        access_log: bool = False,
        seed: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.records = records
        self._cmd = [
            sys.executable, "-m", "bindbee_sim",
            "--port", "0",
            "--api-key", API_KEY,
            "--connectors", f"{CONNECTOR}:{TOKEN}",
            "--enrollments", str(records),
            "--seed", str(seed),
            "--rate-limit", str(rate_limit),
            "--rate-window-seconds", str(window_seconds),
        ]  # fmt: skip
        self._cmd += list(extra_args)  # e.g. --sync-mode scheduled --webhook-url ...
        if honor_modified_after:
            self._cmd.append("--honor-modified-after")
        if access_log:
            self._cmd += ["--access-log", "--log-level", "info"]
        self._access_log = access_log
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.served_at: list[tuple[float, int]] = []  # (monotonic time, status)
        self.base_url = ""

    def __enter__(self) -> Simulator:
        proc = self._proc = subprocess.Popen(
            self._cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while True:
            line = proc.stdout.readline()
            if "listening on" in line:
                break
            if not line or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"simulator did not start: {line!r}")
        self.base_url = line.rsplit(" ", 1)[1].strip()
        # Always drain the pipe (access log or warnings), so the simulator never blocks on it.
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic()
            if self._access_log and f'"GET {DATA_PATH}' in line:
                # uvicorn: ... "GET /path?query HTTP/1.1" 200 OK
                status = line.rsplit('" ', 1)[1].split(" ", 1)[0]
                self.served_at.append((now, int(status)))

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stats(self) -> dict[str, int]:
        """Data responses of the bench connector by status code (``/_sim/stats``)."""
        body = httpx.get(f"{self.base_url}/_sim/stats", timeout=30).json()
        return {code: int(n) for code, n in body.get(CONNECTOR, {}).items()}

    def requests(self) -> int:
        """Data requests answered so far, any status."""
        return sum(self.stats().values())

    def configure(self, **changes: Any) -> None:
        """``POST /_sim/config`` (rate_limit, rate_window_seconds, honor_modified_after)."""
        httpx.post(f"{self.base_url}/_sim/config", json=changes, timeout=30).raise_for_status()

    def patch(self, client: httpx.Client, record_id: str, fields: dict[str, Any]) -> dict:
        """Change a record; ``modified_at`` becomes the simulator's now."""
        response = client.patch(
            f"{self.base_url}/_sim/{CONNECTOR}/{MODEL}/{record_id}", json=fields
        )
        response.raise_for_status()
        return orjson.loads(response.content)


def api_headers() -> dict[str, str]:
    """What every data request carries."""
    return {"Authorization": f"Bearer {API_KEY}", "x-connector-token": TOKEN}


def new_topic_prefix() -> str:
    """A topic prefix no earlier run used (tansu keeps topics for its lifetime)."""
    return f"bench{uuid.uuid4().hex[:10]}"


def write_config(
    ws: Workspace,
    name: str,
    *,
    sim: Simulator,
    bootstrap: str,
    state: Path,
    topic_prefix: str,
    rate_limit: tuple[int, float] = (1_000_000, 60.0),
    model: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
) -> Path:
    """A daemon configuration file for one run; returns its path."""
    config = {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": API_KEY,
            "page_size": PAGE_SIZE,
            "rate_limit": {"requests": rate_limit[0], "per_seconds": rate_limit[1]},
        },
        "connectors": [{"name": CONNECTOR, "token": TOKEN}],
        # The cases measure a pass (and the timer loop) against its floor: interval trigger.
        "models": {MODEL: {"trigger": "interval", "initial_sync": "emit", **(model or {})}},
        "kafka": {"bootstrap_servers": bootstrap, "topic_template": topic_prefix + ".{model}"},
        "state": ws.state_config(state),
        "log": {"level": "INFO", "format": "json"},
        "http": {"enabled": False},
        "scheduler": scheduler or {},
    }
    path = ws.path(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class DaemonRun:
    """One ``lms-changefeed poll``: the pass's own figures and the process's."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    scans: list[dict[str, Any]]
    log_tail: str
    cpu_s: float = 0.0  # the process's user + system CPU (wait4), start-up included
    pass_cpu_s: float | None = None  # CPU from scan_started to scan_finished (the shim)

    @property
    def scan(self) -> dict[str, Any]:
        """The single scan_finished record of the run."""
        if self.returncode != 0 or len(self.scans) != 1:
            raise RuntimeError(f"daemon poll failed ({self.returncode}):\n{self.log_tail}")
        return self.scans[0]

    @property
    def duration_s(self) -> float:
        """The pass as the daemon timed it (``scan_finished.duration_s``)."""
        return float(self.scan["duration_s"])


def _daemon_cmd(command: str, config: Path, *args: str) -> list[str]:
    # ``python -m daemon ...`` through a shim that reports peak RSS and pass CPU at exit.
    return [sys.executable, str(_PEAK), command, "--config", str(config), *args]


def _marked(log_path: Path, marker: str) -> float | None:
    """The figure the shim reported at exit after ``marker`` (None if it did not)."""
    for line in reversed(log_path.read_bytes().splitlines()):
        if line.startswith(marker.encode()):
            return float(line.split()[1])
    return None


def _peak_rss_mb(log_path: Path) -> float:
    """The daemon's VmHWM as the shim reported it at exit (0 if it could not)."""
    return (_marked(log_path, PEAK_MARKER) or 0.0) / 1024


def _reap(proc: subprocess.Popen[Any], timeout: float) -> int:
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        return proc.wait()
    finally:
        timer.cancel()


def log_records(path: Path) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (other lines, e.g. from libraries, are skipped)."""
    records = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return records


def poll(ws: Workspace, config: Path, *args: str, timeout: float = 3600) -> DaemonRun:
    """Run ``lms-changefeed poll`` once and collect its figures."""
    log_path = ws.path(f"{config.stem}-{uuid.uuid4().hex[:6]}.log")
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            _daemon_cmd("poll", config, *args), stdout=log, stderr=subprocess.STDOUT
        )
        code, cpu = _reap_cpu(proc, timeout)
        wall = time.perf_counter() - started
    records = log_records(log_path)
    scans = [r for r in records if r.get("event") == "scan_finished"]
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    pass_cpu = _marked(log_path, CPU_MARKER)
    return DaemonRun(code, wall, _peak_rss_mb(log_path), scans, tail, cpu, pass_cpu)


def _reap_cpu(proc: subprocess.Popen[Any], timeout: float) -> tuple[int, float]:
    """Wait for the process (killed after ``timeout``): its exit code and its own CPU
    seconds, user + system, from wait4's rusage (the child alone, not the bench)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


class DaemonProcess:
    """``lms-changefeed run`` in the background; stopped with SIGTERM."""

    def __init__(self, ws: Workspace, config: Path) -> None:
        self.log_path = ws.path(f"{config.stem}-run.log")
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            _daemon_cmd("run", config), stdout=self._log, stderr=subprocess.STDOUT
        )

    def scans(self) -> list[dict[str, Any]]:
        """scan_finished records so far."""
        return [r for r in log_records(self.log_path) if r.get("event") == "scan_finished"]

    def wait_for_scans(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Block until ``count`` passes finished; raises if the daemon dies or is too slow."""
        deadline = time.monotonic() + timeout
        while True:
            scans = self.scans()
            if len(scans) >= count:
                return scans
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError("daemon run: no scan finished in time\n" + "\n".join(tail))
            time.sleep(0.1)

    def exit_code(self) -> int | None:
        """The process's exit code, None while it runs."""
        return self._proc.poll()

    def stop(self) -> tuple[int, float]:
        """SIGTERM, then reap: (exit code, peak RSS MB)."""
        if self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
        code = _reap(self._proc, 60)
        self._log.close()
        return code, _peak_rss_mb(self.log_path)
