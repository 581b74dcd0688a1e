"""The tables ``status`` prints: one row per stream, one per replica sharing the store.

Pure: rows are built from what the store returned and a clock reading, so they can be
checked without a store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from daemon.cli.common import age, ts
from daemon.models import HintStatus, LeaseInfo, ReplicaInfo, StreamKey, StreamState

STATUS_COLUMNS = (
    "stream",
    "watermark",
    "records",
    "last full scan",
    "scan in progress",
    "lease",
    "next due",
    "resync",
    "sync scanned",
    "rejected",
    "walks",
    "delete guard",
    "last error",
)

REPLICA_COLUMNS = ("replica", "host", "pid", "started", "heartbeat", "busy/workers", "holds")


def lease_cell(lease: LeaseInfo | None, now: float) -> str:
    """Who scans the stream and for how long; an expired lease is free for any replica
    (its holder died or stalled), so it says so rather than pass for a scan in progress."""
    if lease is None:
        return "-"
    held = f"{lease.owner} {age(now - lease.acquired_at)}"
    return f"{held} (expired)" if lease.expires_at < now else held


def due_cell(due_at: float | None, now: float) -> str:
    """When the stream is next due: ``now`` or ``in 5m``."""
    return "now" if due_at is None or due_at <= now else f"in {age(due_at - now)}"


def walks_cell(hints: HintStatus | None) -> str:
    """How often the stream is walked and how well hints did: ``every 4 syncs (1 since),
    missed 0 (total 2), 3 hints unread``. A walk that was not measured has no ``missed``."""
    if hints is None:
        return "-"
    every = "every sync" if hints.spacing == 1 else f"every {hints.spacing} syncs"
    parts = [f"{every} ({hints.syncs_since_walk} since)"]
    if hints.hint_missed is not None or hints.hint_missed_total:
        last = "-" if hints.hint_missed is None else str(hints.hint_missed)
        parts.append(f"missed {last} (total {hints.hint_missed_total})")
    if hints.hints_unread:
        parts.append(f"{hints.hints_unread} hints unread")
    return ", ".join(parts)


def _error_cell(st: StreamState) -> str:
    parts = (
        f"{st.last_error} ({ts(st.last_error_at)})" if st.last_error else "",
        f"no scans: {st.connector_state}" if st.connector_state else "",
    )
    return "; ".join(part for part in parts if part) or "-"


def stream_row(
    st: StreamState,
    rejected: int,
    lease: LeaseInfo | None,
    now: float,
    hints: HintStatus | None = None,
) -> tuple[str, ...]:
    """One stream, in the order of ``STATUS_COLUMNS``."""
    progress = (
        f"{st.scan_kind} #{st.scan_number} {st.scan_phase}, {st.scan_pages} pages"
        if st.in_progress
        else "-"
    )
    resync = (
        f"requested {age(now - st.resync_requested_at)} ago"
        if st.resync_requested_at is not None
        else "-"
    )
    scanned = (st.sync_bookmark or "-") + (
        f" (scanning {st.scan_sync})" if st.in_progress and st.scan_sync else ""
    )
    return (
        str(st.key),
        st.watermark or "-",
        str(st.records),
        ts(st.last_full_scan_at),
        progress,
        lease_cell(lease, now),
        due_cell(st.due_at, now),
        resync,
        scanned,
        str(rejected),
        walks_cell(hints),
        st.delete_guard or "-",
        _error_cell(st),
    )


def stream_rows(
    states: Sequence[StreamState],
    rejected: Mapping[StreamKey, int],
    leases: Mapping[StreamKey, LeaseInfo],
    now: float,
    hints: Mapping[StreamKey, HintStatus] | None = None,
) -> list[tuple[str, ...]]:
    """One row per stream, in the order of ``STATUS_COLUMNS``."""
    hints = hints or {}
    return [
        stream_row(st, rejected[st.key], leases.get(st.key), now, hints.get(st.key))
        for st in states
    ]


def replica_rows(
    replicas: Sequence[ReplicaInfo],
    leases: Mapping[StreamKey, LeaseInfo],
    watcher: str | None,
    lease_seconds: float,
    now: float,
) -> list[tuple[str, ...]]:
    """One row per replica row in the store: a replica silent for longer than a lease is
    dead or stalled (its leases are free), and the row says so until it is pruned."""
    rows = []
    for r in replicas:
        held = sum(
            1 for lease in leases.values() if lease.owner == r.replica and lease.expires_at >= now
        )
        holds = [f"{held} stream(s)"] if held else []
        if watcher == r.replica:
            holds.append("sync watcher")
        silent = now - r.heartbeat_at > lease_seconds
        rows.append(
            (
                r.replica,
                r.host,
                str(r.pid),
                ts(r.started_at),
                f"{age(now - r.heartbeat_at)} ago" + (" (silent)" if silent else ""),
                f"{r.busy}/{r.workers}",
                ", ".join(holds) or "-",
            )
        )
    return rows
