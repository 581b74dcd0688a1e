"""The tansu launcher: it starts, restarts on the same port, and copes with a taken port.

Each test runs its own broker (they start in ~50 ms) so the shared one is never disturbed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

import devtools.tansu
from devtools.tansu import TansuBroker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port held by a plain TCP listener that never speaks Kafka."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def advertised(bootstrap: str) -> list[tuple[str, int]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        return [(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]]
    finally:
        admin.close()


def process_state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces, so split after ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_starts_advertises_itself_and_stops() -> None:
    with TansuBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1"
        assert broker.running
        assert advertised(broker.bootstrap) == [("127.0.0.1", int(port))]
        pid, log = broker.pid, broker.log_path
        assert log is not None
        assert "tansu broker" in log.read_text()
    assert not broker.running
    assert not log.exists()  # a temporary log goes with the broker
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.stop()  # twice is fine


def test_restart_keeps_the_port(tmp_path: Path) -> None:
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        port, pid = broker.port, broker.pid
        broker.restart()
        assert (broker.port, broker.running) == (port, True)
        assert broker.pid != pid
        assert advertised(broker.bootstrap) == [("127.0.0.1", port)]
    # a given log file is kept, and holds both runs
    assert (tmp_path / "tansu.log").read_text().count("--- ") == 2


def test_pause_and_resume_freeze_the_process() -> None:
    with TansuBroker() as broker:
        broker.pause()
        assert process_state(broker.pid) == "T"
        broker.resume()
        assert process_state(broker.pid) != "T"
        assert advertised(broker.bootstrap)


def test_paused_broker_still_stops() -> None:
    broker = TansuBroker()
    broker.start()
    broker.pause()
    broker.stop()
    assert not broker.running


def test_given_port_held_by_another_listener_is_a_clear_error(occupied_port: int) -> None:
    broker = TansuBroker(port=occupied_port)
    with pytest.raises(RuntimeError, match=rf"127\.0\.0\.1:{occupied_port} .*in use") as info:
        broker.start(timeout=10)
    assert "AddrInUse" in str(info.value)  # the tail of the broker's own log
    assert not broker.running
    assert broker.log_path is None  # the temporary log is not left behind


def test_given_port_held_by_another_broker_is_a_clear_error() -> None:
    with TansuBroker() as first:
        second = TansuBroker(port=first.port)
        with pytest.raises(RuntimeError, match="another Kafka broker already answers"):
            second.start(timeout=10)
        assert advertised(first.bootstrap)  # the first one is unharmed


def test_picked_port_taken_meanwhile_moves_to_another(
    occupied_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates losing the race between picking a free port and the broker binding it.
    picks = iter([occupied_port])
    real_free_port = devtools.tansu._free_port
    monkeypatch.setattr(
        devtools.tansu, "_free_port", lambda host: next(picks, None) or real_free_port(host)
    )
    with TansuBroker() as broker:
        assert broker.port != occupied_port
        assert advertised(broker.bootstrap) == [("127.0.0.1", broker.port)]
