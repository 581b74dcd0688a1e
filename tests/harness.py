"""Driving the daemon as a real process for fault scenarios: config, logs, state, waits."""

from __future__ import annotations

import os
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
import yaml

from bindbee_sim.ids import decode_cursor
from daemon.state import schema
from daemon.state.codec import unpack_messages

POLL_SECONDS = 0.02  # between two looks at a condition, under a deadline
PAGE = 100  # the page size base_config sets


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def base_config(
    sim: Any,
    bootstrap: str,
    tmp_path: Path,
    connectors: tuple[str, ...] = ("acme",),
    **model: Any,
) -> dict[str, Any]:
    """A config for the daemon under test: fast retries, short Kafka timeouts, JSON logs."""
    prefix = f"f{uuid.uuid4().hex[:10]}"
    return {
        "bindbee": {
            "base_url": sim.base_url,
            "api_key": sim.api_key,
            "page_size": PAGE,
            "timeout_seconds": 5,
            "max_attempts": 3,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
            "rate_limit": {"requests": 100_000, "per_seconds": 60},
        },
        "connectors": [{"name": name, "token": sim.tokens[name]} for name in connectors],
        "models": {
            "enrollments": {
                "trigger": "interval",  # timer polling is what the fault scenarios drive
                "poll_interval_seconds": 1,
                "lookback_seconds": 0,
                "full_scan_interval_seconds": 3600,
                **model,
            }
        },
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 2,
            "topic_template": prefix + ".{connector}.{model}",
            "control_topic": prefix + ".control",
            "request_timeout_ms": 2000,
            "delivery_timeout_ms": 4000,
        },
        "state": {"path": str(tmp_path / "state.db")},
        "http": {"host": "127.0.0.1", "port": 0},
        "scheduler": {"jitter_seconds": 0.05, "shutdown_timeout_seconds": 10},
        "log": {"format": "json", "level": "INFO"},
    }


def write_config(tmp_path: Path, config: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def topic_of(config: dict[str, Any], connector: str, model: str = "enrollments") -> str:
    return str(config["kafka"]["topic_template"]).format(connector=connector, model=model)


class Daemon:
    """``python -m daemon COMMAND --config PATH`` as a process; its JSON log lines collected."""

    def __init__(
        self, config: Path, command: str = "run", *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.command = command
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", command, "--config", str(config), *args],
            env={**os.environ, "CHANGEFEED_LOG__FORMAT": "json", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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
            self.stdout.append(raw.decode(errors="replace"))

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

    def wait(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        self._join()
        return code

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(10)


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
