"""`lms-changefeed resync` and what `status` says about leases, due times and replicas.

Real parts: `lms-changefeed run` as a process on the in-process simulator and the session's
tansu broker, the CLI as subprocesses, real SQLite files. Deadlines, not sleeps: a pass is
held where the test needs it by the simulator delaying a page request, and the daemon is
frozen (SIGSTOP) while `status` looks at it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from daemon.__main__ import main
from daemon.models import StreamKey
from daemon.state import migrate, open_store
from tests.harness import (
    Daemon,
    base_config,
    stream_state,
    topic_of,
    wait_until,
    write_config,
)
from tests.harness import cli as _cli
from tests.kafka_read import read_topic

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
ENROLLMENTS = 250
REPLICA = "replica-under-test"


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (quick: no interpreter start-up): exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _tables(out: str) -> dict[str, list[dict[str, str]]]:
    """The tables `status` prints (non-terminal width: one line per row), by first column
    name: each row as {column: cell}."""
    tables: dict[str, list[dict[str, str]]] = {}
    names: list[str] = []
    for line in out.splitlines():
        if line.startswith("┃"):
            names = [cell.strip() for cell in line.strip("┃").split("┃")]
            tables[names[0]] = []
        elif line.startswith("│") and names:
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            tables[names[0]].append(dict(zip(names, cells, strict=True)))
    return tables


def _status(config: Path) -> tuple[int, dict[str, dict[str, str]], list[dict[str, str]]]:
    """`status` run as the operator runs it: exit code, stream rows by stream, replica rows."""
    result = _cli("status", "--config", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    tables = _tables(result.stdout)
    streams = {row["stream"]: row for row in tables.get("stream", [])}
    return result.returncode, streams, tables.get("replica", [])


def _settled(config: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """acme/enrollments' row once no pass holds its lease (a pass gives it back just after
    logging scan_finished), and the replica rows then."""

    def released() -> tuple[dict[str, str], list[dict[str, str]]] | None:
        code, streams, replicas = _status(config)
        assert code == 0, streams
        row = streams["acme/enrollments"]
        return (row, replicas) if row["lease"] == "-" else None

    settled: tuple[dict[str, str], list[dict[str, str]]] = wait_until(
        released, 60, "the pass to give its lease back"
    )
    return settled


# ---- resync against a running daemon --------------------------------------------------------


@pytest.mark.sim(enrollments=ENROLLMENTS)
def test_resync_makes_a_running_daemon_publish_only_the_real_difference(
    sim, broker, tmp_path: Path
) -> None:
    config = base_config(sim, broker.bootstrap, tmp_path, poll_interval_seconds=3600)
    config["scheduler"].update(replica_id=REPLICA, claim_interval_seconds=0.2)
    # The heartbeat (every third of a lease) then writes only at start: the daemon frozen
    # below cannot be holding SQLite's write lock that `status` needs.
    config["state"]["lease_seconds"] = 600
    path = write_config(tmp_path, config)
    topic = topic_of(config, "acme")
    changed = sim.ids("acme", "enrollments")[17]
    daemon = Daemon(path)
    try:
        initial = daemon.wait_for("scan_finished", connector="acme", timeout=90)
        assert initial["created"] == ENROLLMENTS, initial
        # Only a resync can scan now: the next regular pass is an hour away.
        row, replicas = _settled(path)
        assert row["resync"] == "-", row
        assert re.fullmatch(r"in (59|60)m", row["next due"]), row
        assert [r["replica"] for r in replicas] == [REPLICA]
        assert replicas[0]["pid"] == str(daemon.proc.pid)
        assert re.fullmatch(r"\d+/\d+", replicas[0]["busy/workers"]), replicas

        sim.update("acme", "enrollments", changed, {"start_date": "2035-05-05T00:00:00Z"})
        # The resync's first page request is held by the simulator: the pass is then
        # certainly running, with its lease, and not inside a database transaction.
        sim.add_fault(delay_ms=2000, count=1, connector="acme", model="enrollments")
        asked = time.monotonic()
        resync = _cli(
            "resync", "--config", str(path), "--connector", "acme", "--model", "enrollments"
        )
        assert resync.returncode == 0, resync.stdout + resync.stderr
        (line,) = resync.stdout.splitlines()
        assert line.startswith("resync acme/enrollments: requested; ")
        assert "full scan" in line and "within about 0.2s" in line and "status" in line
        wait_until(lambda: not sim.state.pending_faults(), 30, "the resync's first page request")
        seen = time.time()
        daemon.proc.send_signal(signal.SIGSTOP)  # the pass stays where it is while we look
        try:
            code, streams, replicas = _status(path)
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        assert code == 0
        during = streams["acme/enrollments"]
        assert re.fullmatch(rf"{REPLICA} \d+s", during["lease"]), during
        assert re.fullmatch(r"requested \d+s ago", during["resync"]), during
        assert during["scan in progress"].startswith("full #2 "), during
        assert [r["replica"] for r in replicas] == [REPLICA]
        pending = stream_state(tmp_path / "state.db", "acme")
        assert pending is not None and pending["resync_requested_at"] is not None
        picked_up = seen - pending["resync_requested_at"]

        started = daemon.wait_for("scan_started", since=asked, connector="acme", timeout=60)
        assert (started["kind"], started["resumed"]) == ("full", False), started
        daemon.wait_for("resync_started", since=asked, connector="acme", timeout=5)
        finished = daemon.wait_for("scan_finished", since=started["_t"], connector="acme")
        assert (finished["created"], finished["updated"], finished["deleted"]) == (0, 1, 0)
        assert finished["unchanged"] == ENROLLMENTS - 1, finished

        # The request is done: status no longer shows it, nor a lease.
        after, _ = _settled(path)
        assert after["resync"] == "-", after
        assert after["scan in progress"] == "-", after
        assert re.fullmatch(r"in (59|60)m", after["next due"]), after
    finally:
        assert daemon.stop() == 0
    assert not daemon.tracebacks(), daemon.tracebacks()

    records = read_topic(broker.bootstrap, topic, expected=ENROLLMENTS + 1)
    events = [orjson.loads(r.value) for r in records]
    kinds = [e["type"].rsplit(".", 1)[1] for e in events]
    assert kinds.count("created") == ENROLLMENTS, "the resync re-sent created events"
    assert len({e["subject"] for e in events if e["type"].endswith(".created")}) == ENROLLMENTS
    (updated,) = [e for e in events if e["type"].endswith(".updated")]
    assert updated["subject"] == changed
    new = updated["data"]["changes"]["start_date"]["new"]
    assert new == sim.get("acme", "enrollments", changed)["start_date"] and new.startswith("2035")
    assert len(events) == ENROLLMENTS + 1, kinds
    print(f"\nFIGURES resync: resync scan's first page request {picked_up:.2f}s after the request")


# ---- refusals: unknown streams (a missing store: tests/e2e/test_cli_operator.py) ----------


def _config(tmp_path: Path, connectors: tuple[str, ...] = ("acme",)) -> Path:
    return write_config(tmp_path, base_config(None, None, tmp_path, connectors))


def _store_with(state: Path, *keys: StreamKey) -> None:
    migrate(str(state))
    store = open_store(str(state))
    try:
        for key in keys:
            store.state(key)  # registers the stream
    finally:
        store.close()


def _stored(state: Path) -> dict[str, float | None]:
    """Each stored stream and its pending resync."""
    store = open_store(str(state), create=False)
    try:
        return {str(st.key): st.resync_requested_at for st in store.states()}
    finally:
        store.close()


def test_resync_refuses_unknown_streams_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, connectors=("acme", "globex"))
    state = tmp_path / "state" / "changefeed.db"
    _store_with(state, StreamKey("acme", "enrollments"))
    refusals = {
        # (selection, what stderr must name)
        ("--connector", "nope", "--model", "enrollments"): "nope/enrollments",
        ("--connector", "acme", "--model", "courses"): "acme/courses",
        ("--connector", "nope"): "'nope'",
        ("--model", "courses"): "'courses'",
        # Configured, but no state yet: its first pass is a full scan anyway.
        ("--connector", "globex", "--model", "enrollments"): "globex/enrollments has no state",
        ("--connector", "globex"): "no stream of connector 'globex' has state",
        # Arguments that select nothing, or too much.
        (): "--all",
        ("--all", "--connector", "acme"): "--all",
    }
    for selection, named in refusals.items():
        capsys.readouterr()
        assert main(["resync", "--config", str(config), *selection]) == 2, selection
        out, err = capsys.readouterr()
        assert named in err and out == "", (selection, out, err)
    assert _stored(state) == {"acme/enrollments": None}  # no stream added, none requested

    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config(empty)
    _store_with(empty / "state" / "changefeed.db")
    assert main(["resync", "--config", str(config), "--all"]) == 2
    assert "no stream has state" in capsys.readouterr().err


def test_resync_of_a_connector_requests_each_of_its_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, connectors=("acme", "globex"))
    state = tmp_path / "state" / "changefeed.db"
    keys = [StreamKey(c, m) for c in ("acme", "globex") for m in ("enrollments", "users")]
    _store_with(state, *keys)
    code, out, err = _main(capsys, "resync", "--config", str(config), "--connector", "acme")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "resync acme/enrollments",
        "resync acme/users",
    ]
    # users is not a model of this config: the line says a daemon with it will not scan it.
    assert "not configured here" in lines[1] and "not configured" not in lines[0]
    pending = _stored(state)
    assert pending["acme/enrollments"] and pending["acme/users"]
    assert pending["globex/enrollments"] is None and pending["globex/users"] is None
    code, out, err = _main(capsys, "resync", "--config", str(config), "--all")
    assert code == 0, err
    assert out.count("already requested") == 2 and out.count("\n") == 4
    # A second request keeps the first one's time: status counts from when it was asked.
    assert _stored(state)["acme/enrollments"] == pending["acme/enrollments"]


# ---- status: a dead replica's lease, a pending resync --------------------------------------


def test_status_marks_a_dead_replicas_lease_expired_and_its_heartbeat_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replica that took a stream's lease and died without giving it back (a process
    that exits without clean-up), 100 s ago: status names it, and says the lease is free."""
    config = _config(tmp_path)
    state = tmp_path / "state" / "changefeed.db"
    _store_with(state, StreamKey("acme", "enrollments"))
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, time
                from daemon.models import StreamKey
                from daemon.state import open_store
                store = open_store({str(state)!r}, create=False, owner="gone-replica")
                then = time.time() - 100
                assert store.claim(StreamKey("acme", "enrollments"), now=then)
                store.heartbeat(then, workers=4, busy=1, host="elsewhere", pid=4242,
                                started_at=then - 60)
                os._exit(0)  # no close: the lease and the replica row stay behind
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert died.returncode == 0, died.stderr
    assert _main(capsys, "resync", "--config", str(config), "--all")[0] == 0
    code, out, err = _main(capsys, "status", "--config", str(config))
    assert code == 0, err
    tables = _tables(out)
    (row,), replicas = tables["stream"], tables["replica"]
    assert re.fullmatch(r"gone-replica \d+s \(expired\)", row["lease"]), row
    assert re.fullmatch(r"requested \d+s ago", row["resync"]), row
    assert row["next due"] == "now", row
    (replica,) = replicas
    assert (replica["replica"], replica["host"], replica["pid"]) == (
        "gone-replica",
        "elsewhere",
        "4242",
    )
    assert re.fullmatch(r"\d+s ago \(silent\)", replica["heartbeat"]), replica
    assert replica["busy/workers"] == "1/4"
    assert replica["holds"] == "-"  # an expired lease holds nothing


def test_status_without_replica_rows_prints_no_replicas_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    _store_with(tmp_path / "state" / "changefeed.db", StreamKey("acme", "enrollments"))
    code, out, err = _main(capsys, "status", "--config", str(config))
    assert code == 0, err
    tables = _tables(out)
    assert set(tables) == {"stream"} and "replicas" not in out
    row = tables["stream"][0]
    assert (row["lease"], row["next due"], row["resync"]) == ("-", "now", "-")


def test_resync_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["resync", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--connector", "--model", "--all", "--config"):
        assert option in text
    assert "reset" in text and "only real differences" in text
