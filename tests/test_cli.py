"""The remaining commands as a user runs them: `tail`, `dev`, and tombstones on the wire."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.runtime import GIL_SWITCH_SECONDS, Runtime
from daemon.settings import load_settings
from tests.helpers import feed_config
from tests.kafka_read import read_topic


@pytest.mark.sim(enrollments=12)
def test_tombstones_follow_deletes_and_tail_prints_events(sim, broker, tmp_path: Path) -> None:
    settings = load_settings(None, **feed_config(sim, broker, tmp_path, emit_tombstones=True))
    topic = settings.kafka.topic_for("acme", "enrollments")
    sys.setswitchinterval(0.005)  # CPython's default
    runtime = Runtime.open(settings)
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_SECONDS)  # for the walker
    try:
        (stream,) = runtime.passes()
        stream.run()
        gone = sim.ids("acme", "enrollments")[0]
        sim.delete("acme", "enrollments", gone)
        assert stream.run(force_full=True).stats.deleted == 1
    finally:
        runtime.close()
    records = read_topic(broker.bootstrap, topic, expected=14)
    for_gone = [r for r in records if r.key == gone.encode()]
    assert [r.value is None for r in for_gone] == [False, False, True]  # created, deleted, null

    tail = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "tail",
            "--topic",
            topic,
            "--bootstrap",
            broker.bootstrap,
            "--from-beginning",
            "--limit",
            "14",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count("created") == 12
    assert "deleted" in tail.stdout and f"tombstone {gone}" in tail.stdout


def test_dev_stack_on_pipes_prints_plain_lines_and_stops_on_sigint(tmp_path: Path) -> None:
    """Piped (``make dev | tee``), the live view is plain text; the log stays in its file.
    (Under a terminal: tests/test_cli_operator.py.)"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "dev", "--config", "config/dev.yaml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "TMPDIR": str(tmp_path)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    selector.register(proc.stderr, selectors.EVENT_READ)
    out, err = b"", b""
    deadline = time.monotonic() + 90
    try:
        # Both initial syncs summarised, then a mutation the daemon picks up.
        while not (out.count(b"initial sync ") >= 2 and b"\nupdated " in out):
            assert proc.poll() is None, err.decode()[-3000:]
            assert time.monotonic() < deadline, (out[-2000:], err[-2000:])
            for key, _ in selector.select(timeout=1):
                chunk = os.read(key.fd, 65536)
                if key.fileobj is proc.stdout:
                    out += chunk
                else:
                    err += chunk
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            # Keep draining both pipes: a full pipe would block the stack's last lines.
            rest_out, rest_err = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        out, err = out + rest_out, err + rest_err
    assert proc.returncode == 130, err.decode()[-3000:]
    assert b"acme/enrollments" in out and b"globex/enrollments" in out
    assert b"\x1b[" not in out and b"mutator: " in out
    assert err == b"", err.decode()[-3000:]
    assert list(tmp_path.iterdir()) == []
