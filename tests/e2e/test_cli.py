"""The remaining commands as a user runs them: `tail`, `dev`, and tombstones on the wire."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.runtime import GIL_SWITCH_SECONDS, Runtime
from daemon.settings import load_settings
from tests.harness import Daemon, cli, daemon_argv
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

    tail = cli(
        "tail",
        "--topic",
        topic,
        "--bootstrap",
        broker.bootstrap,
        "--from-beginning",
        "--limit",
        "14",
    )
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.count("created") == 12
    assert "deleted" in tail.stdout and f"tombstone {gone}" in tail.stdout


def test_dev_stack_on_pipes_prints_plain_lines_and_stops_on_sigint(tmp_path: Path) -> None:
    """Piped (``make dev | tee``), the live view is plain text; the log stays in its file.
    (Under a terminal: tests/e2e/test_cli_operator.py.)"""
    dev = Daemon.launch(
        daemon_argv("dev", "--config", "config/dev.yaml"),
        env={"COLUMNS": "200", "TMPDIR": str(tmp_path)},
    )
    try:
        # Both initial syncs summarised, then a mutation the daemon picks up.
        dev.wait_output(
            lambda out: out.count(b"initial sync ") >= 2 and b"\nupdated " in out,
            90,
            "both initial syncs and an update",
        )
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            # The readers keep draining both pipes: a full pipe would block the last lines.
            code = dev.wait(45)
        except subprocess.TimeoutExpired:
            dev.kill()
            raise
    out = dev.output()
    err = "".join(line.get("text", str(line)) for line in dev.lines)
    assert code == 130, err[-3000:]
    assert b"acme/enrollments" in out and b"globex/enrollments" in out
    assert b"\x1b[" not in out and b"mutator: " in out
    assert err == "", err[-3000:]
    assert list(tmp_path.iterdir()) == []
