"""The command line as a new user met it (issue 19, bugs 2, 3, 4, 6, 7, 8, 9), each fixed
and pinned: ``lms-changefeed`` as a subprocess against the session's broker, the simulator,
SQLite files and PostgreSQL databases. Waits are on what the process prints, not on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from daemon.models import Message
from daemon.settings import KafkaSettings
from daemon.sink.kafka import KafkaSink
from tests.harness import Daemon, base_config, poll, wait_until, write_config

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
DEV_CONFIG = REPO / "config" / "dev.yaml"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _offline_config(tmp_path: Path, **sections: object) -> Path:
    data: dict[str, object] = {
        "bindbee": {"base_url": "http://127.0.0.1:1", "api_key": "k"},
        "connectors": [{"name": "acme", "token": "t"}],
        "models": {"enrollments": {}},
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "state": {"path": str(tmp_path / "state.db")},
        "http": {"enabled": False},
        **sections,
    }
    return write_config(tmp_path, data)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def _publish(bootstrap: str, topic: str, count: int) -> None:
    """``count`` events on a one-partition ``topic`` (created, even for 0)."""
    sink = KafkaSink(KafkaSettings(bootstrap_servers=bootstrap, partitions=1))
    try:
        sink.ensure_topics([topic])
        event = {"type": "bindbee.lms.enrollments.created", "data": {"connector": "acme"}}
        values = [orjson.dumps({**event, "subject": f"id-{n}"}) for n in range(count)]
        sink.publish([Message(topic, f"id-{n}".encode(), v, ()) for n, v in enumerate(values)])
    finally:
        sink.close()


def _stderr_text(daemon: Daemon) -> str:
    return "".join(line.get("text", "") for line in daemon.lines if line["event"] == "non-json")


# ---- bug 2: check-config names the PostgreSQL store ---------------------------------------


def test_check_config_names_the_postgresql_store_without_its_password(tmp_path: Path) -> None:
    config = _offline_config(tmp_path)
    url = "postgresql://feeder:pw-s3cret@db.internal:5433/changefeed"
    result = _cli("check-config", "--config", str(config), env={"CHANGEFEED_STATE__URL": url})
    assert result.returncode == 0, result.stderr
    line = _one_line(result.stdout)
    assert "state PostgreSQL db.internal:5433/changefeed" in line
    assert "changefeed.db" not in line and "state.db" not in line
    assert "pw-s3cret" not in result.stdout + result.stderr and "feeder" not in line


# ---- bug 3: an unmigrated store is a refusal naming migrate --------------------------------


def test_status_on_an_empty_postgresql_database_refuses_naming_migrate(
    tmp_path: Path, pg_database: str
) -> None:
    config = _offline_config(tmp_path, state={"url": pg_database, "auto_migrate": False})
    database = pg_database.rsplit("/", 1)[1]
    for command in ("status", "resync"):
        extra = ["--all"] if command == "resync" else []
        result = _cli(command, "--config", str(config), *extra)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        line = _one_line(result.stderr)
        assert "lms-changefeed migrate" in line and database in line, line
        assert "Traceback" not in result.stderr


def test_status_on_an_unmigrated_sqlite_file_refuses_naming_migrate(tmp_path: Path) -> None:
    config = _offline_config(tmp_path)
    (tmp_path / "state.db").touch()  # an empty SQLite database
    result = _cli("status", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "lms-changefeed migrate" in _one_line(result.stderr)


# ---- bug 3: SIGINT is 130, SIGTERM ends run with 0 -----------------------------------------


@pytest.mark.sim(enrollments=20)
def test_run_ends_with_130_on_sigint_and_0_on_sigterm(sim, broker, tmp_path: Path) -> None:
    config = write_config(tmp_path, base_config(sim, broker.bootstrap, tmp_path))
    interrupted = Daemon(config)
    interrupted.wait_for("http_listening", timeout=60)
    interrupted.proc.send_signal(signal.SIGINT)
    assert interrupted.wait(60) == 130, interrupted.lines[-10:]
    terminated = Daemon(config)
    terminated.wait_for("http_listening", timeout=60)
    assert terminated.stop(60) == 0, terminated.lines[-10:]


# ---- bug 6 (+3): tail says once it waits; --from-beginning --limit stops at the end -------


def test_tail_on_an_empty_topic_says_once_it_waits_and_ctrl_c_is_130(
    broker, topic: str, tmp_path: Path
) -> None:
    _publish(broker.bootstrap, topic, 0)
    config = write_config(tmp_path, {"kafka": {"bootstrap_servers": broker.bootstrap}})
    tail = Daemon(config, "tail", "--topic", topic)
    wait_until(lambda: "waiting" in _stderr_text(tail), 60, "tail to say it is waiting")
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait(30) == 130
    said = _stderr_text(tail)
    assert said.count("waiting") == 1 and topic in said, said
    assert tail.stdout == []


@pytest.mark.parametrize("present", [0, 1])
def test_tail_from_beginning_with_a_limit_stops_at_the_end_of_a_short_topic(
    broker, topic: str, present: int
) -> None:
    _publish(broker.bootstrap, topic, present)
    args = ("--topic", topic, "--from-beginning", "--limit", "2")
    result = _cli("tail", "--bootstrap", broker.bootstrap, *args)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == present, result.stdout
    assert f"{present} event(s)" in _one_line(result.stderr)


# ---- bug 7: argument errors name the argument, not the config ------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["poll", "--connector", "nope"], "--connector"),
        (["poll", "--model", "users"], "--model"),
        (["schema", "--model", "nope"], "--model"),
    ],
)
def test_argument_errors_name_the_argument(tmp_path: Path, args: list[str], named: str) -> None:
    result = _cli(*args, "--config", str(_offline_config(tmp_path)))
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_line(result.stderr)
    assert named in line and "invalid config" not in line, line
    assert not (tmp_path / "state.db").exists()


# ---- bug 9: a scan marker names its stream once --------------------------------------------


@pytest.mark.sim(enrollments=30)
def test_tail_names_the_stream_once_on_scan_markers(sim, broker, tmp_path: Path) -> None:
    data = base_config(sim, broker.bootstrap, tmp_path)
    poll(write_config(tmp_path, data))
    result = _cli(
        "tail",
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        data["kafka"]["control_topic"],
        "--from-beginning",
        "--limit",
        "1",
    )
    assert result.returncode == 0, result.stderr
    line = _one_line(result.stdout)
    assert line.startswith("scan_completed acme/enrollments full scan #1"), line
    assert line.count("acme/enrollments") == 1, line


# ---- bug 8: a standalone broker --------------------------------------------------------------


def test_broker_prints_its_address_serves_kafka_and_ctrl_c_is_130(
    topic: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, {})
    started = Daemon(config, "broker", "--port", "0")
    first = wait_until(lambda: started.stdout[:1], 60, "the broker's address")[0]
    address = first.split(" at ", 1)[1].split(";", 1)[0]
    assert address.startswith("127.0.0.1:"), first
    _publish(address, topic, 1)
    args = ("--topic", topic, "--from-beginning", "--limit", "1")
    read = _cli("tail", "--bootstrap", address, *args)
    assert read.returncode == 0 and "id-0" in read.stdout, read.stderr
    started.proc.send_signal(signal.SIGINT)
    assert started.wait(30) == 130


# ---- bug 4 (+3): the dev banner's command works as printed; Ctrl-C is 130 ------------------


def test_dev_prints_a_status_command_that_works_as_printed(tmp_path: Path) -> None:
    # As after `make dev`: the virtualenv's bin/ is not on PATH.
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "lms-changefeed").exists()
    )  # fmt: skip
    env = {"PATH": path, "TMPDIR": str(tmp_path), "COLUMNS": "300"}
    dev = Daemon(DEV_CONFIG, "dev", "--keep", "--seed", "3", env=env)
    banner = wait_until(
        lambda: [line for line in dev.stdout if "meanwhile: " in line], 120, "the stack line"
    )[0]
    command = banner.split("meanwhile: ", 1)[1].strip()
    status = subprocess.run(
        command, shell=True, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, (command, status.stdout, status.stderr)
    assert "schema revision" in status.stdout
    dev.proc.send_signal(signal.SIGINT)
    assert dev.wait(90) == 130, "".join(dev.stdout)[-3000:]
    kept = [line.strip() for line in dev.stdout if line.strip().endswith("changefeed.yaml")]
    assert kept[-1] == command, dev.stdout
