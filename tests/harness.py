"""Driving the daemon as a real process for fault scenarios: config, logs, state, waits."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from bindbee_sim.ids import decode_cursor
from daemon.state import schema
from daemon.state.codec import unpack_messages
from tests.kafka_read import scan_end

POLL_SECONDS = 0.02  # between two looks at a condition, under a deadline
PAGE = 100  # the page size base_config sets


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail after
    ``timeout`` s. The one poll-until helper of the suite."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def in_ci() -> bool:
    """Whether the run is CI's (``CI`` set, as CI services do): then a missing PostgreSQL
    or promtool is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str, install: str) -> str:
    """The path of the command ``name``; skips the test without it, fails it under CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed: {install}"
        if in_ci():
            pytest.fail(f"CI is set, so this fails instead of skipping: {message}", pytrace=False)
        pytest.skip(message)
    return path


def base_config(
    sim: Any | None,
    bootstrap: str | None,
    tmp_path: Path,
    connectors: tuple[str, ...] = ("acme",),
    *,
    in_process: bool = False,
    **model: Any,
) -> dict[str, Any]:
    """The suite's one config builder: fast retries, the simulator's API, a fresh topic
    prefix, state in ``tmp_path``; the model ``enrollments`` on a 1 s timer, ``model``
    overriding its fields.

    For a daemon process (the default): short Kafka timeouts, an ops port, JSON logs,
    topics ``{prefix}.{connector}.{model}``. ``in_process=True`` (``helpers.feed_config``):
    for a ``Runtime``/``Scheduler`` in the test's own process: no HTTP listener, the
    default attempts and Kafka timeouts, topics ``{prefix}.{model}``.

    ``sim`` and ``bootstrap`` None: a config whose API and broker nobody serves (port 1),
    every model setting at its default, the store in ``tmp_path/state``: for commands
    that must refuse, or that only read the store.
    """
    if sim is None:
        return {
            "bindbee": {"base_url": "http://127.0.0.1:1", "api_key": "k"},
            "connectors": [{"name": name, "token": "t"} for name in connectors],
            "models": {"enrollments": dict(model)},
            "kafka": {"bootstrap_servers": bootstrap or "127.0.0.1:1"},
            "state": {"path": str(tmp_path / "state" / "changefeed.db")},
            "http": {"enabled": False},
        }
    prefix = f"{'t' if in_process else 'f'}{uuid.uuid4().hex[:10]}"
    bindbee: dict[str, Any] = {
        "base_url": sim.base_url,
        "api_key": sim.api_key,
        "page_size": PAGE,
        "backoff_base_seconds": 0.01 if in_process else 0.05,
        "backoff_max_seconds": 0.1 if in_process else 0.2,
        "rate_limit": {"requests": 100_000, "per_seconds": 60},
    }
    kafka: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "partitions": 2,
        "topic_template": prefix + (".{model}" if in_process else ".{connector}.{model}"),
        "control_topic": prefix + ".control",
    }
    # timer polling is what these tests drive (the sync trigger has its own tests)
    timer: dict[str, Any] = {
        "trigger": "interval",
        "poll_interval_seconds": 1,
        "lookback_seconds": 0,
    }
    config: dict[str, Any] = {
        "bindbee": bindbee,
        "connectors": [{"name": name, "token": sim.tokens[name]} for name in connectors],
        "models": {"enrollments": timer},
        "kafka": kafka,
        "state": {"path": str(tmp_path / "state.db")},
    }
    if in_process:
        config["http"] = {"enabled": False}
    else:
        bindbee.update(timeout_seconds=5, max_attempts=3)
        timer["full_scan_interval_seconds"] = 3600
        kafka.update(request_timeout_ms=2000, delivery_timeout_ms=4000)
        config["http"] = {"host": "127.0.0.1", "port": 0}
        config["scheduler"] = {"jitter_seconds": 0.05, "shutdown_timeout_seconds": 10}
        config["log"] = {"format": "json", "level": "INFO"}
    timer.update(model)
    return config


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def topic_of(config: dict[str, Any], connector: str, model: str = "enrollments") -> str:
    return str(config["kafka"]["topic_template"]).format(connector=connector, model=model)


_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def daemon_argv(*args: str) -> list[str]:
    """``python -m daemon ARGS`` with this interpreter."""
    return [sys.executable, "-m", "daemon", *args]


def sim_argv(*args: str) -> list[str]:
    """``bindbee-sim ARGS`` (the venv's script, else ``python -m bindbee_sim``)."""
    exe = Path(sys.executable).with_name("bindbee-sim")
    return [*([str(exe)] if exe.exists() else [sys.executable, "-m", "bindbee_sim"]), *args]


class Daemon:
    """The suite's one driver of subprocesses that keep running: ``lms-changefeed`` commands
    and ``bindbee-sim``.

    ``Daemon(config, "run", *args)`` runs ``python -m daemon run --config PATH ARGS`` with
    JSON logs: its stderr lines are parsed into ``lines`` (anything else is kept as an
    ``{"event": "non-json", "text": ...}`` line) and its stdout kept in ``stdout``.
    ``Daemon.launch(argv)`` runs any command line the same way; with ``terminal=True``
    under a pseudo-terminal (its controlling terminal: ``send(b"\\x03")`` is Ctrl-C) whose
    output is read into ``output()``.
    """

    def __init__(
        self,
        config: Path | None,
        command: str = "run",
        *args: str,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        cwd: Path | None = None,
        terminal: bool = False,
    ) -> None:
        self.command = command
        self.started = time.monotonic()
        self.lines: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self._out = bytearray()  # stdout, or the terminal's output, as it came
        self._cond = threading.Condition()
        self._master: int | None = None
        if argv is None:
            argv = daemon_argv(command, *(["--config", str(config)] if config else []), *args)
            env = {"CHANGEFEED_LOG__FORMAT": "json", **(env or {})}
        full_env = {**os.environ, **({"COLUMNS": "160", "LINES": "50"} if terminal else {})}
        full_env.update(env or {})
        if terminal:
            self._master, slave = pty.openpty()
            self.proc = subprocess.Popen(
                argv,
                env=full_env,
                cwd=cwd,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                preexec_fn=_take_terminal,  # the child's controlling terminal, before exec
            )
            os.close(slave)
            readers = [self._read_terminal]
        else:
            self.proc = subprocess.Popen(
                argv,
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            readers = [self._read_stderr, self._read_stdout]
        self._threads = [threading.Thread(target=reader, daemon=True) for reader in readers]
        for thread in self._threads:
            thread.start()

    @classmethod
    def launch(
        cls,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        terminal: bool = False,
    ) -> Daemon:
        """Any command line, e.g. ``Daemon.launch(sim_argv("--port", "0"))``."""
        return cls(None, Path(argv[0]).name, env=env, argv=argv, cwd=cwd, terminal=terminal)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        else:
            self._join()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                line = orjson.loads(raw)
                if not isinstance(line, dict):
                    raise ValueError
            except ValueError:
                line = {"event": "non-json", "text": raw.decode(errors="replace")}
            line["_t"] = time.monotonic()
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.stdout.append(raw.decode(errors="replace"))
                self._out += raw
                self._cond.notify_all()

    def _read_terminal(self) -> None:
        assert self._master is not None
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                break
            with self._cond:
                self._out += chunk
                self._cond.notify_all()
        os.close(self._master)

    # -- output ------------------------------------------------------------------------

    def output(self) -> bytes:
        """Everything printed so far (stdout, or the terminal's screen output)."""
        with self._cond:
            return bytes(self._out)

    def plain(self) -> bytes:
        """``output()`` without terminal escape sequences and carriage returns."""
        return _ANSI.sub(b"", self.output()).replace(b"\r", b"")

    def text(self) -> str:
        return self.plain().decode(errors="replace")

    def wait_output(
        self, done: Callable[[bytes], Any], timeout: float = 60.0, what: str = "output"
    ) -> Any:
        """Until ``done(plain())`` is truthy; fails at ``timeout`` or once the process
        ended and all its output was read without it."""

        def seen() -> Any:
            value = done(self.plain())
            if not value and self.proc.poll() is not None and not self._reading():
                raise AssertionError(
                    f"{what}: the command ended ({self.proc.returncode}); "
                    f"output:\n{self.text()[-4000:]}\nlog: {self.lines[-15:]}"
                )
            return value

        try:
            return wait_until(seen, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; output:\n{self.text()[-4000:]}") from None

    def send(self, data: bytes) -> None:
        """Type ``data`` on the terminal (``terminal=True``)."""
        assert self._master is not None, "not under a terminal"
        os.write(self._master, data)

    # -- logs ------------------------------------------------------------------------

    def matching(self, event: str, since: float = 0.0, **fields: object) -> list[dict[str, Any]]:
        """Log lines of ``event`` (``a|b``: either) with these field values, logged at or
        after ``since``."""
        events = event.split("|")
        with self._cond:
            return [
                line
                for line in self.lines
                if line.get("event") in events
                and line["_t"] >= since
                and all(line.get(k) == v for k, v in fields.items())
            ]

    def wait_for(
        self, event: str, timeout: float = 60.0, since: float = 0.0, **fields: object
    ) -> dict[str, Any]:
        """The first line of ``event`` with these fields (logged at or after ``since``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.matching(event, since, **fields)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    tail = [
                        {k: v for k, v in line.items() if k != "_t"} for line in self.lines[-15:]
                    ]
                    raise AssertionError(
                        f"no {event} {fields} within {timeout:g}s "
                        f"(exit code {self.proc.poll()}); last lines: {tail}"
                    )
                self._cond.wait(min(left, 0.2))

    def _reading(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def tracebacks(self) -> list[dict[str, Any]]:
        """Lines that are not JSON log lines, or that carry an exception."""
        with self._cond:
            return [
                line
                for line in self.lines
                if line.get("event") == "non-json" or "exception" in line
            ]

    # -- process -----------------------------------------------------------------------

    def http(self, path: str, timeout: float = 15.0) -> httpx.Response:
        port = self.wait_for("http_listening", timeout=30)["port"]
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up at all."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._join()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._join()
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120.0) -> int:
        """Until the process ends (``subprocess.TimeoutExpired`` after ``timeout`` s)."""
        code = self.proc.wait(timeout)
        self._join()
        return code

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(10)


def _take_terminal() -> None:
    """In the child, before exec: make the new session's terminal its controlling one."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


REPO = Path(__file__).resolve().parents[1]


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    argv: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``lms-changefeed ARGS`` (or ``argv``) run to its end in the repository: its exit code
    and output (text). For commands that keep running, ``Daemon``."""
    return subprocess.run(
        argv or daemon_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
    )


def poll(config: Path, *args: str, timeout: float = 180.0) -> Daemon:
    """Run ``poll`` to completion (e.g. ``poll(path, "--full")``); fails unless it exits 0."""
    daemon = Daemon(config, "poll", *args)
    code = daemon.wait(timeout)
    assert code == 0, (daemon.stdout, daemon.lines[-15:])
    return daemon


def stream_state(db: Path, connector: str, model: str = "enrollments") -> dict[str, Any] | None:
    """A stream's row in the state store, read without writing (None if unreadable).

    Plain sqlite3 on purpose (a read-only connection beside the daemon's); the table names
    come from the store's schema.
    """
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return None
    try:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            f"SELECT * FROM {schema.streams.name} WHERE connector=? AND model=?",
            (connector, model),
        ).fetchone()
        if row is None:
            return None
        state = dict(row)
        for name, table in (("records", schema.records), ("outbox", schema.outbox)):
            state[name] = conn.execute(
                f"SELECT count(*) FROM {table.name} WHERE sid=?", (state["sid"],)
            ).fetchone()[0]
        return state
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def scan_pages(db: Path, connector: str = "acme") -> int:
    state = stream_state(db, connector)
    return int(state["scan_pages"]) if state else 0


def unread_bytes(port: int) -> int:
    """Bytes received on ``port``'s connections that the listening process has not read yet.

    (From /proc/net/tcp: the rx queue of established sockets whose local port is ``port``.)
    A paused broker leaves a produce request there: proof it was sent and not answered.
    """
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in an exposition ``text``."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the API fault table (scenario 4, reused by the soak) ------------------------------

FAILURE_LINES = ("api_retry", "api_rate_limited", "scan_failed")
# (fault, failures the daemon sees: one log line each). max_attempts is 3, so a count of 3
# or more also fails a pass (two api_retry lines, then scan_failed) and the next pass
# meets the rest.
API_FAULTS = {
    "429 storm with Retry-After": ({"status": 429, "retry_after": 1, "count": 4}, 4),
    # Beyond the client's patience (10 in a row): the pass fails, the next one meets the rest.
    "429 storm, longer": ({"status": 429, "retry_after": 0, "count": 12}, 12),
    "500 burst": ({"status": 500, "count": 4}, 4),
    "503 burst": ({"status": 503, "count": 2}, 2),
    "timeouts": ({"delay_ms": 2500, "count": 2}, 2),  # the client gives up after 1 s
    "dropped connections": ({"disconnect": True, "count": 3}, 3),
    "malformed JSON": ({"malformed": "json", "count": 2}, 2),
    "no items": ({"malformed": "missing_items", "count": 1}, 1),
    # A malformed item, not a malformed page: retried with its page (two api_retry lines),
    # then dead-lettered on the third answer while the rest of the page goes on; the pass
    # does not fail, and the item (known by its stored remote_id) is not taken for deleted.
    "item without id": ({"malformed": "item_without_id", "count": 3}, 2),
    # The first answer's cursor points back before the start (the walk follows it once);
    # the second repeats its own cursor: the loop the walk detects.
    "cursor loop": ({"malformed": "cursor_loop", "count": 2}, 1),
}


def wait_fresh_full_scan(daemon: Daemon, connector: str, since: float) -> dict:
    """The end of the first full scan that started (not resumed) after ``since``."""
    started = daemon.wait_for(
        "scan_started", since=since, connector=connector, kind="full", resumed=False
    )
    return daemon.wait_for("scan_finished", since=started["_t"], connector=connector)


def scanned(
    bootstrap: str,
    config: dict[str, Any],
    connector: str,
    model: str = "enrollments",
    *,
    line: dict[str, Any] | None = None,
    scans: int = 1,
    timeout: float = 60.0,
) -> dict[int, int]:
    """``kafka_read.scan_end`` for a stream of ``config``: the data topic's offsets through
    the scan a daemon's ``scan_started``/``scan_finished`` log ``line`` names (its ``scan``
    field, ``connector/model#N``), else through the ``scans``-th completed scan."""
    scan = int(str(line["scan"]).rsplit("#", 1)[1]) if line is not None else None
    control = str(config["kafka"]["control_topic"])
    return scan_end(
        bootstrap, control, f"{connector}/{model}", scan, scans=scans, timeout=timeout
    )


def marked_through(
    daemons: Daemon | list[Daemon],
    bootstrap: str,
    config: dict[str, Any],
    connector: str,
    model: str = "enrollments",
    timeout: float = 60.0,
) -> dict[int, int]:
    """The data topic's offsets through the last scan of the stream whose ``scan_completed``
    marker these processes published (their ``scan_marker_published`` lines): for
    ``invariant.check(..., through=...)`` once they stopped, or while they run."""
    def published() -> list[dict[str, Any]]:
        return [
            line
            for daemon in (daemons if isinstance(daemons, list) else [daemons])
            for line in daemon.matching("scan_marker_published", connector=connector, model=model)
        ]

    lines = wait_until(published, timeout, f"a scan of {connector}/{model} to publish its marker")
    last = max(lines, key=lambda line: int(str(line["scan"]).rsplit("#", 1)[1]))
    return scanned(bootstrap, config, connector, model, line=last, timeout=timeout)


def figures(name: str, **values: object) -> None:
    """Print a scenario's measured figures on one line (shown with ``pytest -s``)."""
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# -- the API's and the broker's view of a run ---------------------------------------------


def ok_requests(sim: Any, connector: str = "acme") -> int:
    return sim.stats().get(connector, {}).get("200", 0)


def outbox_ids(db: Path, connector: str, model: str = "enrollments") -> list[str]:
    """The record ids (Kafka keys) the stream's outbox holds: committed, not acknowledged."""
    state = stream_state(db, connector, model)
    assert state is not None, f"no readable state for {connector}/{model} in {db}"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        rows = conn.execute(
            f"SELECT messages FROM {schema.outbox.name} WHERE sid=?", (state["sid"],)
        ).fetchall()
    keys = {m.key for (blob,) in rows for m in unpack_messages(bytes(blob))}
    return sorted(key.decode() for key in keys)


def kill_while_publishing(
    daemon: Daemon, broker: Any, sim: Any, db: Path, connector: str = "acme"
) -> list[str]:
    """SIGKILL the daemon while one page's events are sent and not yet acknowledged.

    The next page request is held back by the simulator, the broker is frozen meanwhile,
    and the kill comes once a page's produce request sits unread in the broker's socket
    (call it after the process published a page: its first publish creates the producer,
    whose bootstrap request would be what sits there).
    When the broker resumes it appends that page. The page was committed first, with its
    events in the outbox, so the store knows what Kafka may have. Returns the page's ids,
    read from the outbox: with pages fetched ahead, the page on the wire is one of those
    fetched before the held-back request, or that request's own, whichever the pause caught.
    """
    sim.add_fault(delay_ms=1500, count=1, connector=connector)
    wait_until(lambda: not sim.state.pending_faults(), 60, "the held-back page request")
    broker.pause()
    try:
        wait_until(lambda: unread_bytes(broker.port) > 0, 30, "the page's produce request")
        daemon.kill()
    finally:
        broker.resume()
    after_kill = stream_state(db, connector)
    assert after_kill is not None
    in_flight = outbox_ids(db, connector)
    assert in_flight, "the unacknowledged page is not in the outbox"
    assert len(in_flight) <= PAGE, len(in_flight)
    # Committed with its cursor: every id of the page lies at or before where the scan
    # resumes, and the page is the one that cursor closes.
    after = decode_cursor(after_kill["scan_cursor"]) if after_kill["scan_cursor"] else None
    if after is not None:
        assert in_flight[-1] <= after, (in_flight[-1], after)
        page = [rid for rid in sim.ids(connector, "enrollments") if rid <= after][-PAGE:]
        assert set(in_flight) <= set(page), "the outbox holds ids of an older page"
    return in_flight


# -- Bindbee webhooks, as the daemon's receiver gets them -----------------------------------

WEBHOOK_PATH = "/webhooks/bindbee"  # the receiver's default path (webhook.path)


def webhook_envelope(
    connector_id: str, event: str = "connector_synced", sync_id: str = "sync-test"
) -> dict[str, Any]:
    """A delivery body shaped like the simulator's (bindbee_sim/syncs.py ``_emit``)."""
    return {
        "webhook": {"webhook_id": "wh-test", "url": "http://test.invalid/hook", "event": event},
        "connector": {
            "id": connector_id,
            "display_name": "Test LMS",
            "integration_slug": "moodle",
            "categories": ["LMS"],
            "org_name": "Simulated Org",
            "origin_id": "test",
            "connector_status": "COMPLETE",
        },
        "data": {"sync_status": "Done"},
        "sync": {"sync_id": sync_id, "sync_type": "MANUAL", "sync_name": "test sync"},
    }


def webhook_signature(secret: str, body: bytes) -> str:
    """Bindbee's signature header value: HMAC-SHA256 of the raw body, base64url."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()


def post_webhook(
    port: int, body: bytes, signature: str | None, path: str = WEBHOOK_PATH, timeout: float = 15.0
) -> httpx.Response:
    """POST one delivery to a receiver on loopback ``port`` (no signature header if None)."""
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Bindbee-Webhook-Signature"] = signature
    return httpx.post(
        f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=timeout
    )


def each_at_once(connectors: list[str], task: Callable[[str], Any]) -> dict[str, Any]:
    """``task(connector)`` for every connector, run side by side (each on its own thread);
    the results by connector, or the first error."""
    with ThreadPoolExecutor(len(connectors)) as pool:
        futures = {connector: pool.submit(task, connector) for connector in connectors}
        return {connector: future.result() for connector, future in futures.items()}
