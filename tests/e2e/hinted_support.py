"""Shared set-up of the hinted-sync tests: the simulator in scheduled mode sending signed
webhooks to a real ``lms-changefeed run``, and ways to lose a delivery."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from bindbee_sim import SimServer
from tests.harness import (
    Daemon,
    base_config,
    free_port,
    wait_until,
    webhook_envelope,
    webhook_signature,
    write_config,
)
from tests.helpers import new_enrollment
from tests.kafka_read import read_topic

SECRET = "whsec-hinted-syncs"
SAFETY_NET = 3600  # poll_interval_seconds: never reached in these tests


def hinted_sim(port: int, records: int, **options: Any) -> SimServer:
    """The simulator in scheduled mode, delivering signed webhooks to ``port``."""
    return SimServer(
        connectors={"acme": "tok_acme"},
        enrollments=records,
        seed=21,
        rate_limit=0,
        sync_mode="scheduled",
        sync_duration_seconds=0.1,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/bindbee",
        webhook_secret=SECRET,
        webhook_retry_window_seconds=5,
        **options,
    )


def hinted_config(
    sim: SimServer,
    broker: Any,
    tmp_path: Path,
    port: int,
    *,
    every: int | str = 1,
    grace: float = 3.0,
    check_interval: float = 0.3,
    **model: Any,
) -> dict[str, Any]:
    """``trigger: sync`` with ``full_scan_every_syncs: every``; the list is read on every
    webhook and every ``check_interval`` s (so a sync whose deliveries were lost is seen)."""
    config = base_config(
        sim,
        broker.bootstrap,
        tmp_path,
        trigger="sync",
        poll_interval_seconds=SAFETY_NET,
        full_scan_every_syncs=every,
        **model,
    )
    config["bindbee"].update(
        sync_check_interval_seconds=check_interval,
        sync_check_min_gap_seconds=0,
        hint_grace_seconds=grace,
    )
    config["webhook"] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": port,
        "hint_interval_seconds": 0,
    }
    config["scheduler"]["claim_interval_seconds"] = 0.2
    return config


def start(config: dict[str, Any], tmp_path: Path, name: str = "config.yaml") -> Daemon:
    return Daemon(write_config(tmp_path, config, name), env={"CHANGEFEED_WEBHOOK__SECRET": SECRET})


@contextmanager
def running(config: dict[str, Any], tmp_path: Path) -> Iterator[Daemon]:
    daemon = start(config, tmp_path)
    try:
        yield daemon
    finally:
        code = daemon.stop()
    assert code == 0, daemon.lines[-15:]
    assert not daemon.tracebacks(), daemon.tracebacks()[:3]


def data_requests(sim: SimServer) -> int:
    return sum(sim.stats().get("acme", {}).values())


def deliveries(sim: SimServer, event: str, outcomes: tuple[str, ...]) -> int:
    return sum(1 for d in sim.webhooks() if d["event"] == event and d["outcome"] in outcomes)


def delivered(sim: SimServer, event: str = "connector_data_modified") -> int:
    return deliveries(sim, event, ("delivered",))


def stage_changes(
    sim: SimServer, updates: int, creates: int, deletes: int, offset: int = 0
) -> set[str]:
    """Stage changes for the next sync; the ids they touch."""
    ids = sim.ids("acme", "enrollments")
    touched: set[str] = set()
    for n, rid in enumerate(ids[offset : offset + updates]):
        sim.update("acme", "enrollments", rid, {"start_date": f"2031-0{n % 9 + 1}-01T00:00:00Z"})
        touched.add(rid)
    for rid in ids[-(offset + deletes) :][:deletes]:
        sim.delete("acme", "enrollments", rid)
        touched.add(rid)
    for _ in range(creates):
        touched.add(sim.create("acme", "enrollments", new_enrollment(sim))["id"])
    return touched


def closed_port() -> int:
    """A loopback port nothing listens on (bound then closed: refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def deliveries_lost(sim: SimServer, *, ids: bool = True) -> Iterator[None]:
    """Every delivery of the sync inside goes to a closed port, without retries: lost, as
    Bindbee loses one after its retries (``ids``: the sync sends ids too). Only the test's
    side changes: the simulator's sender is pointed elsewhere, not modified."""
    sender = sim.state.webhooks
    assert sender is not None
    policy = sender.policy
    lost = ("given_up",)
    synced = deliveries(sim, "connector_synced", lost)
    modified = deliveries(sim, "connector_data_modified", lost)
    sender.policy = dataclasses.replace(
        policy, url=f"http://127.0.0.1:{closed_port()}/lost", retries=0
    )
    try:
        yield
        wait_until(
            lambda: (
                deliveries(sim, "connector_synced", lost) > synced
                and (not ids or deliveries(sim, "connector_data_modified", lost) > modified)
            ),
            15,
            "the sync's deliveries to be lost",
        )
    finally:
        sender.policy = policy


def ids_delivery(connector_id: str, ids: list[str], sync_id: str) -> tuple[bytes, str]:
    envelope = webhook_envelope(connector_id, "connector_data_modified", sync_id)
    envelope["data"] = ids
    body = orjson.dumps(envelope)
    return body, webhook_signature(SECRET, body)


def control_events(bootstrap: str, topic: str, kind: str) -> list[dict[str, Any]]:
    records = read_topic(bootstrap, topic, quiet_seconds=1.0)
    events = [orjson.loads(r.value) for r in records if r.value is not None]
    return [e for e in events if e["type"].endswith("." + kind)]


def with_port() -> int:
    return free_port()
