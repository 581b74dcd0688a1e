"""The operator's first hour, CLI side: each friction a new user hit, as a test.

Real parts: the CLI as a subprocess (or under a pseudo-terminal), real SQLite files, the
session's tansu broker, the simulator over loopback. Deadlines, not sleeps.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import time
import types
from pathlib import Path

import orjson
import pytest
import yaml

from daemon.__main__ import build_parser, main
from daemon.log import LibraryChatter
from daemon.models import Message, StreamKey
from daemon.settings import KafkaSettings
from daemon.sink.kafka import KafkaSink
from daemon.state import migrate, open_store
from tests.harness import Daemon, base_config, daemon_argv, write_config
from tests.harness import cli as _cli
from tests.helpers import feed_config

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
DEV_CONFIG = REPO / "config" / "dev.yaml"


def _config(tmp_path: Path, **sections: object) -> Path:
    data = base_config(None, None, tmp_path)
    data.update(sections)
    return write_config(tmp_path, data)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _store_with_stream(tmp_path: Path) -> tuple[Path, Path]:
    """A config and a migrated store in which acme/enrollments has state."""
    config = _config(tmp_path)
    state = tmp_path / "state" / "changefeed.db"
    migrate(str(state))
    store = open_store(str(state))
    try:
        store.state(StreamKey("acme", "enrollments"))  # registers the stream
    finally:
        store.close()
    return config, state


def _streams_in(state: Path) -> list[str]:
    store = open_store(str(state), create=False)
    try:
        return [str(st.key) for st in store.states()]
    finally:
        store.close()


# ---- status / reset: no store, unknown streams, confirmation -----------------------------


@pytest.mark.parametrize("command", ["status", "reset", "resync"])
def test_missing_store_is_refused_and_nothing_is_created(tmp_path: Path, command: str) -> None:
    config = _config(tmp_path)
    extra = {
        "status": [],
        "reset": ["--connector", "acme", "--model", "enrollments", "--yes"],
        "resync": ["--connector", "acme", "--model", "enrollments"],
    }[command]
    result = _cli(command, "--config", str(config), *extra)
    assert result.returncode == 2, result.stdout + result.stderr
    missing = tmp_path / "state" / "changefeed.db"
    assert f"no state store at {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # neither the file nor its folder


def test_state_path_from_env_in_a_missing_folder_creates_no_folder(tmp_path: Path) -> None:
    config = _config(tmp_path)
    nowhere = tmp_path / "no" / "such" / "dir" / "x.db"
    result = _cli("status", "--config", str(config), env={"CHANGEFEED_STATE__PATH": str(nowhere)})
    assert result.returncode == 2 and str(nowhere) in result.stderr, result.stderr
    assert not (tmp_path / "no").exists()


def test_reset_refuses_an_unknown_stream(tmp_path: Path) -> None:
    config, state = _store_with_stream(tmp_path)
    for connector, model, named in (
        ("nope", "enrollments", "'nope'"),
        ("acme", "courses", "'courses'"),
    ):
        result = _cli(
            "reset", "--config", str(config), "--connector", connector, "--model", model, "--yes"
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert named in result.stderr and "reset" not in result.stdout
    assert _streams_in(state) == ["acme/enrollments"]  # nothing added, nothing removed
    status = _cli("status", "--config", str(config), "--connector", "nope")
    assert status.returncode == 2 and "'nope'" in status.stderr


def test_reset_without_yes_and_without_a_terminal_refuses(tmp_path: Path) -> None:
    config, state = _store_with_stream(tmp_path)
    args = ("reset", "--config", str(config), "--connector", "acme", "--model", "enrollments")
    refused = _cli(*args)
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stderr
    assert _streams_in(state) == ["acme/enrollments"]
    done = _cli(*args, "--yes")
    assert done.returncode == 0 and "reset acme/enrollments" in done.stdout, done.stderr
    assert _streams_in(state) == ["acme/enrollments"]  # still known, its data forgotten


def test_reset_on_a_terminal_asks_first(tmp_path: Path) -> None:
    config, state = _store_with_stream(tmp_path)
    args = ["reset", "--config", str(config), "--connector", "acme", "--model", "enrollments"]
    with Daemon.launch(daemon_argv(*args), terminal=True) as term:
        term.wait_output(lambda out: b"[y/N]" in out, 30)
        term.send(b"n\r")
        assert term.wait(30) == 2
    assert _streams_in(state) == ["acme/enrollments"]
    with Daemon.launch(daemon_argv(*args), terminal=True) as term:
        term.wait_output(lambda out: b"[y/N]" in out, 30)
        term.send(b"y\r")
        assert term.wait(30) == 0, term.text()
    assert "reset acme/enrollments" in term.text()
    assert _streams_in(state) == ["acme/enrollments"]  # still known, its data forgotten


# ---- tail ----------------------------------------------------------------------------------


def test_tail_against_an_unreachable_broker_fails_fast_in_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    started = time.monotonic()
    result = _cli("tail", "--bootstrap", f"127.0.0.1:{port}", "--topic", "t", timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"tail took {elapsed:.1f}s to give up on a closed port"
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "not reachable" in lines[0]
    print(f"tail on a closed port gave up after {elapsed:.1f}s")


def test_tail_reads_only_the_kafka_section_of_a_config(broker, topic: str, tmp_path: Path) -> None:
    sink = KafkaSink(KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=1))
    try:
        sink.publish(
            [
                Message(
                    topic,
                    f"id-{n}".encode(),
                    orjson.dumps(
                        {
                            "type": f"bindbee.lms.enrollments.{kind}",
                            "subject": f"id-{n}",
                            "data": {"connector": "acme", "model": "enrollments"},
                        }
                    ),
                    (),
                )
                for n, kind in enumerate(("created", "updated"))
            ]
        )
    finally:
        sink.close()
    # No bindbee, no connectors: tail must not care.
    config = tmp_path / "kafka-only.yaml"
    config.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": broker.bootstrap}}))
    args = ("--topic", topic, "--from-beginning", "--limit", "2")
    for how, extra in (("--config", {}), ("env", {"CHANGEFEED_CONFIG": str(config)})):
        cli = ("tail", "--config", str(config), *args) if how == "--config" else ("tail", *args)
        result = _cli(*cli, env=extra)
        assert result.returncode == 0, (how, result.stderr)
        assert "created  acme/enrollments id-0" in result.stdout, result.stdout
        assert "updated  acme/enrollments id-1" in result.stdout


def test_tail_without_any_bootstrap_says_what_it_needs(tmp_path: Path) -> None:
    env = {k: "" for k in os.environ if k.startswith("CHANGEFEED_")}
    result = _cli("tail", "--topic", "t", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "--bootstrap" in result.stderr, result.stderr
    assert "bindbee" not in result.stderr and "Traceback" not in result.stderr


# ---- the command line itself ------------------------------------------------------------------


def test_config_before_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["--config", str(config), "check-config"]) == 0
    assert "config OK" in capsys.readouterr().out
    # Given twice, the subcommand's wins; the first is not undone by the subparser default.
    bad = tmp_path / "missing.yaml"
    assert main(["--config", str(bad), "check-config", "--config", str(config)]) == 0
    assert main(["--config", str(config), "check-config", "--config", str(bad)]) == 2
    result = _cli("--config", str(config), "status")
    assert result.returncode == 2 and "no state store" in result.stderr  # the config was read


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_has_help_text() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert {
        "run",
        "poll",
        "status",
        "resync",
        "reset",
        "migrate",
        "tail",
        "check-config",
        "dev",
    } <= set(commands)
    missing = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, sub in [("(top)", parser), *commands.items()]
        for action in sub._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
        and not (action.help or "").strip()
    ]
    assert missing == []


# ---- poll with Kafka down -------------------------------------------------------------------


@pytest.mark.sim(connectors={"acme": "tok_acme", "globex": "tok_globex"}, enrollments=30)
def test_poll_with_kafka_down_fails_each_stream_in_one_line(sim, tmp_path: Path) -> None:
    unused = types.SimpleNamespace(bootstrap="unused:1")
    data = feed_config(sim, unused, tmp_path, connectors=("acme", "globex"))
    data["kafka"] = {"bootstrap_servers": f"127.0.0.1:{_closed_port()}"}
    config = tmp_path / "poll.yaml"
    config.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    result = _cli("poll", "--config", str(config), timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < 40, f"poll took {elapsed:.1f}s with Kafka down"
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    failed = [line for line in lines if "FAILED" in line]
    assert [line.split(":")[0] for line in failed] == ["acme/enrollments", "globex/enrollments"]
    assert all("not reachable" in line for line in failed)
    chatter = [line for line in lines if '"kafka.' in line]
    assert len(chatter) <= 1, result.stderr  # the library's own lines: one per minute at most
    assert all('"level": "warning"' in line for line in chatter)
    assert "Traceback" not in result.stderr
    print(f"poll with Kafka down: {elapsed:.1f}s for 2 streams")


def test_kafka_library_chatter_is_a_rate_limited_warning() -> None:
    chatter = LibraryChatter(window=60.0)

    def record(name: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "Connection failed: %s", ("x",), None)

    first = record("kafka.net.manager")
    assert chatter.filter(first) and first.levelno == logging.WARNING
    assert not chatter.filter(record("kafka.net.connection"))  # same subsystem, same burst
    assert chatter.filter(record("kafka.producer.sender"))  # another subsystem speaks once
    assert chatter.filter(record("daemon.stream"))  # ours are never held back
    chatter._last["kafka.net"] -= 61
    later = record("kafka.net.manager")
    assert chatter.filter(later) and "1 similar kafka.net line(s) held back" in later.getMessage()


# ---- dev --------------------------------------------------------------------------------------


def _lines(text: str, kind: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(kind)]


DEV_SEED = 4


def test_dev_under_a_terminal_shows_one_line_per_event_then_cleans_up(tmp_path: Path) -> None:
    """`make dev` from another directory, config from CHANGEFEED_CONFIG: created, updated and
    deleted lines, no log lines, the initial sync as counts; Ctrl-C leaves nothing behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"CHANGEFEED_CONFIG": str(DEV_CONFIG), "TMPDIR": str(tmp)}
    # The mutator changes one record every 3 s, the kind drawn from its seed: with seed 4
    # the first three are an update, a delete and a create (after the initial sync), so
    # every kind of line shows up within three changes (a random seed takes six on average).
    with Daemon.launch(
        daemon_argv("dev", "--seed", str(DEV_SEED)), env=env, cwd=tmp_path, terminal=True
    ) as term:

        def seen_all(out: bytes) -> bool:
            text = out.decode(errors="replace")
            return all(_lines(text, kind) for kind in ("created ", "updated ", "deleted "))

        term.wait_output(seen_all, 150)
        term.send(b"\x03")
        assert term.wait(60) == 130, term.text()[-3000:]
    screen = term.text()
    assert re.search(r"seed \d+ \(--seed \d+ repeats", screen)
    assert "deletes " in screen and "full scan" in screen
    log_line = next(line for line in screen.splitlines() if line.strip().startswith("logs "))
    assert str(tmp) in log_line
    summaries = _lines(screen, "initial sync ")
    assert {line.split()[2] for line in summaries} == {
        "acme/enrollments:",
        "globex/enrollments:",
    }, screen
    # 200 per connector, plus any record the mutator created before the sync's last page.
    assert 400 <= sum(int(line.split()[3]) for line in summaries) < 410
    # Live events only: 400 initial creates are not listed one by one.
    assert len(_lines(screen, "created ")) < 100
    assert not [line for line in screen.splitlines() if line.lstrip().startswith("{")]
    for noise in ("scan_started", "scan_finished", "dev_mutation", "kafka_"):
        assert noise not in screen
    updated = _lines(screen, "updated ")[0]
    assert "/enrollments " in updated and "start_date:" in updated and "→" in updated
    assert list(tmp.iterdir()) == []  # the temporary folder is gone


def test_dev_keep_prints_the_folder_and_a_status_command(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ["dev", "--config", str(DEV_CONFIG), "--keep", "--seed", "7"]
    with Daemon.launch(
        daemon_argv(*args), env={"TMPDIR": str(tmp)}, cwd=tmp_path, terminal=True
    ) as term:
        term.wait_output(lambda out: out.count(b"initial sync ") >= 2, 120)
        term.send(b"\x03")
        assert term.wait(60) == 130, term.text()[-3000:]
    screen = term.text()
    assert "seed 7 " in screen
    (workdir,) = tmp.iterdir()
    assert f"kept {workdir}" in screen
    command = next(line.strip() for line in screen.splitlines() if "lms-changefeed status" in line)
    assert command.endswith(f"lms-changefeed status --config {workdir / 'changefeed.yaml'}")
    status = _cli("status", "--config", str(workdir / "changefeed.yaml"), cwd=tmp_path)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "acme/enrollments" in status.stdout and "globex/enrollments" in status.stdout
    assert (workdir / "changefeed.log").stat().st_size > 0


def test_dev_with_a_bad_config_starts_nothing(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bad = yaml.safe_load(DEV_CONFIG.read_text())
    bad["kafka"]["partitions"] = 0
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(bad))
    result = _cli("dev", env={"CHANGEFEED_CONFIG": str(config), "TMPDIR": str(tmp)}, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "kafka.partitions" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # no banner, no broker, no simulator
    assert list(tmp.iterdir()) == []
