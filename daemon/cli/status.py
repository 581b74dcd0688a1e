"""``status``: the schema revision, a row per stream, then the replicas sharing the store."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from daemon.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    check_streams,
    require_current_store,
    store_where,
)
from daemon.cli.status_view import REPLICA_COLUMNS, STATUS_COLUMNS, replica_rows, stream_rows
from daemon.models import HintStatus, LeaseInfo, ReplicaInfo, StreamKey, StreamState
from daemon.settings import Settings, load_settings


@dataclass(frozen=True)
class Snapshot:
    """What ``status`` read from the store, at ``now``."""

    states: list[StreamState]
    rejected: dict[StreamKey, int]
    leases: dict[StreamKey, LeaseInfo]
    hints: dict[StreamKey, HintStatus]
    replicas: list[ReplicaInfo]
    watcher: str | None
    now: float


def read_snapshot(settings: Settings) -> Snapshot:
    """Everything the tables show, read in one go (the store is closed after)."""
    from daemon.schedule.fleet import WATCHER_LEASE
    from daemon.state import open_store

    store = open_store(settings.state, create=False, auto_migrate=False)
    try:
        states = list(store.states())
        now = time.time()
        return Snapshot(
            states=states,
            # Poison records dead-lettered and still met (distinct contents), per stream.
            rejected={st.key: store.rejected_count(st.key) for st in states},
            leases=store.stream_leases(),
            # Walk spacing and how many changes the hints missed (issue "hinted syncs").
            hints={st.key: store.hint_status(st.key) for st in states},
            replicas=list(store.replicas()),
            watcher=next(
                (lease.owner for lease in store.fleet(now).leases if lease.name == WATCHER_LEASE),
                None,
            ),
            now=now,
        )
    finally:
        store.close()


def cmd_status(args: argparse.Namespace) -> int:
    """A table per stream: watermark, records, last full scan, scan in progress, lease
    holder, next due time, pending resync, rejected items (dead-lettered, still met),
    walk spacing and hints missed, delete guard, error; then the replicas sharing the
    store. Exit 1 when a stream is unhealthy; a missing or unmigrated store is refused
    (StoreMissing, exit 2)."""
    from rich.console import Console
    from rich.table import Table

    from daemon.state import head_revision

    settings = load_settings(args.config)
    revision = require_current_store(settings)
    print(f"schema revision: {revision} (this version: {head_revision()})")
    snap = read_snapshot(settings)
    check_streams(settings, [st.key for st in snap.states], args.connector, args.model)
    states = [
        st
        for st in snap.states
        if (args.connector is None or st.key.connector == args.connector)
        and (args.model is None or st.key.model == args.model)
    ]
    table = Table(title=f"lms-changefeed streams ({store_where(settings)})")
    for column in STATUS_COLUMNS:
        table.add_column(column)
    rows = stream_rows(states, snap.rejected, snap.leases, snap.now, snap.hints)
    for row in rows:
        table.add_row(*row)
    # Not a terminal (a pipe, a log): wide enough that a row stays on one line.
    console = Console(width=1000 if not sys.stdout.isatty() else None)
    console.print(table)
    if not states:
        print("no stream has state yet (the first `poll` or `run` pass records it)")
    if snap.replicas:
        # Every process sharing the store (one for SQLite); the columns say who is alive.
        others = Table(title="replicas")
        for column in REPLICA_COLUMNS:
            others.add_column(column)
        lease_seconds = settings.state.lease_seconds
        for row in replica_rows(snap.replicas, snap.leases, snap.watcher, lease_seconds, snap.now):
            others.add_row(*row)
        console.print(others)
    unhealthy = any(st.delete_guard or st.last_error or st.connector_state for st in states)
    return EXIT_FAILED if unhealthy else EXIT_OK
