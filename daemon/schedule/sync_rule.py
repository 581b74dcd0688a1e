"""When a sync-triggered stream needs a full scan: a pure rule over the connectors list.

Bindbee's data only changes when a sync of the connector completes, so a stream keeps
a *sync bookmark*: the ``last_sync_start_time`` of the sync its last completed full
scan covered. ``decide`` compares the connector's state with that bookmark:

    connector missing from the list         -> unknown  (nothing to go on)
    is_active false / status RELINK_NEEDED  -> blocked  (no scans)
    sync_status Syncing                     -> wait     (data is being rewritten)
    sync_status Failed                      -> failed   (no scan; log and count it)
    sync_status null                        -> wait     (never synced: no data yet)
    sync_status Done, start == bookmark     -> up_to_date
    sync_status Done, start != bookmark     -> scan, covering that start time
    Done without a start time, or a status this rule does not know -> unknown

The scan records ``Decision.sync_start_time`` when it starts; the bookmark moves to it
only after the scan completed and its events are on Kafka.

A request that arrives while the stream's pass runs keeps the stream due (its shared
``due_at`` in the store), so exactly one trailing pass follows (see ``scheduler``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from daemon.source.connectors import ConnectorInfo

DONE = ("Done",)
SYNCING = ("Syncing",)
FAILED = ("Failed",)
BLOCKED_STATUSES = ("RELINK_NEEDED",)


class Action(StrEnum):
    """What to do about one stream now."""

    SCAN = "scan"
    WAIT = "wait"
    FAILED = "failed"
    BLOCKED = "blocked"
    UP_TO_DATE = "up_to_date"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Decision:
    """The rule's answer. ``sync_start_time`` is the sync it is about (for SCAN: the one
    the scan covers and the bookmark moves to on success); ``reason`` is for people."""

    action: Action
    sync_start_time: str | None
    reason: str

    @property
    def should_scan(self) -> bool:
        return self.action is Action.SCAN


def _folded(values: Collection[str]) -> frozenset[str]:
    return frozenset(v.casefold() for v in values)


def decide(
    info: ConnectorInfo | None,
    bookmark: str | None,
    *,
    done: Collection[str] = DONE,
    syncing: Collection[str] = SYNCING,
    failed: Collection[str] = FAILED,
    blocked_statuses: Collection[str] = BLOCKED_STATUSES,
) -> Decision:
    """Decide for one stream from its connector's listed state and its sync bookmark.

    Status names match case-insensitively; the keyword sets let a deployment accept
    other spellings (e.g. a simulator's ``COMPLETED``) without a code change.
    ``bookmark`` and ``info.last_sync_start_time`` must both be normalised times.
    """
    if info is None:
        return Decision(Action.UNKNOWN, None, "connector not in the connectors list")
    start = info.last_sync_start_time
    if not info.is_active:
        return Decision(Action.BLOCKED, start, "connector is inactive (is_active false)")
    status = (info.status or "").casefold()
    if status in _folded(blocked_statuses):
        return Decision(
            Action.BLOCKED, start, f"connector status is {info.status}: the customer must relink"
        )
    sync_status = info.sync_status
    if sync_status is None:
        return Decision(Action.WAIT, start, "connector has not synced yet")
    folded = sync_status.casefold()
    if folded in _folded(syncing):
        return Decision(Action.WAIT, start, f"sync started {start or '(unknown)'} is running")
    if folded in _folded(failed):
        return Decision(Action.FAILED, start, f"sync started {start or '(unknown)'} failed")
    if folded not in _folded(done):
        return Decision(Action.UNKNOWN, start, f"unknown sync_status {sync_status!r}")
    if start is None:
        return Decision(Action.UNKNOWN, None, "sync is Done but last_sync_start_time is missing")
    if start == bookmark:
        return Decision(Action.UP_TO_DATE, start, f"sync started {start} already scanned")
    if bookmark is None:
        return Decision(Action.SCAN, start, f"sync started {start} is Done; no sync scanned yet")
    return Decision(
        Action.SCAN, start, f"sync started {start} is Done; last scanned sync started {bookmark}"
    )
