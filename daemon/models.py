"""Small typed objects that cross module boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

Record = dict[str, Any]
EventType = Literal["created", "updated", "deleted"]
ScanKind = Literal["full", "incremental"]
ScanPhase = Literal["pages", "deletes"]


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One (connector, model) pair: the unit of polling, watermarks and state."""

    connector: str
    model: str

    def __str__(self) -> str:
        return f"{self.connector}/{self.model}"


RejectReason = Literal[
    "not_an_object", "no_id", "bad_id", "no_modified_at", "bad_modified_at", "unhashable"
]


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """An item of a well-formed page that cannot be diffed (a poison record).

    ``raw`` is the item as the API returned it; ``reason`` one of a few codes (a metric
    label), ``detail`` says it for people. ``record_id`` is the item's id when usable,
    ``remote_id`` its ``remote_id`` when it has one: either may identify a stored row.
    """

    position: int
    raw: Any
    reason: RejectReason
    detail: str
    record_id: str | None = None
    remote_id: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One list response: its items and the cursor of the next page (None on the last).

    ``items`` are the good items; ``rejected`` the items that stayed malformed after the
    page was fetched ``max_attempts`` times (the rest of the page goes on without them).
    """

    number: int
    items: list[Record]
    cursor: str | None
    next_cursor: str | None
    requests: int = 1  # HTTP requests it took, retries included
    rejected: tuple[RejectedItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka record, ready to send: the sink knows nothing about events."""

    topic: str
    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRow:
    """What the snapshot store remembers of one record."""

    id: str
    modified_at: str
    content_hash: str
    record: Record

    @property
    def blob(self) -> bytes:
        """The record as the store keeps it: its ``orjson.dumps``."""
        return orjson.dumps(self.record)


class SnapshotRow(Protocol):
    """What the differ reads of a stored row: ``models.StoredRow``, or the snapshot
    store's own row type, which decodes ``record`` only when it is read."""

    @property
    def id(self) -> str: ...
    @property
    def modified_at(self) -> str: ...
    @property
    def content_hash(self) -> str: ...
    @property
    def record(self) -> Record: ...
    @property
    def blob(self) -> bytes:
        """``orjson.dumps(record)``: equal to a new record's encoding only when the
        record is the same, key order included (the differ's shortcut)."""
        ...


@dataclass(frozen=True, slots=True)
class RowWrite:
    """A snapshot row to write, committed in the same transaction as the page's events."""

    id: str
    modified_at: str
    content_hash: str
    record: Record


@dataclass(frozen=True, slots=True)
class RejectWrite:
    """A rejected item's content to remember (dead-lettered once), committed with its page.

    ``record_id`` is the stored record it stands for (its id, or a stored row with its
    ``remote_id``); None when nothing identifies it.
    """

    fingerprint: str
    reason: str
    record_id: str | None
    first_seen: float


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change to publish; ``record`` is the API's record (the last known one for deletes)."""

    type: EventType
    stream: StreamKey
    record_id: str
    record: Record
    modified_at: str
    content_hash: str
    changes: dict[str, dict[str, Any]] | None = None
    initial_sync: bool = False
    previous_hash: str | None = None


@dataclass(slots=True)
class ScanStats:
    """Counters of one pass over a stream."""

    pages: int = 0
    items: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    stale: int = 0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class StreamState:
    """Durable per-stream state: watermark, the scan in progress, the last full scan."""

    key: StreamKey
    watermark: str | None = None
    scan_number: int = 0
    scan_kind: ScanKind | None = None
    scan_phase: ScanPhase | None = None
    scan_cursor: str | None = None
    scan_pages: int = 0
    scan_since: str | None = None
    scan_started_at: float | None = None
    scan_max_modified: str | None = None
    last_full_scan_started_at: float | None = None
    last_full_scan_at: float | None = None
    last_scan_at: float | None = None
    delete_guard: str | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    # Sync-triggered streams: the last_sync_start_time of the Bindbee sync the last
    # completed full scan covered, and the one the scan in progress covers.
    sync_bookmark: str | None = None
    scan_sync: str | None = None
    # Why the sync watcher holds this stream's scans (relink needed, inactive), or None.
    connector_state: str | None = None
    # Shared by the replicas: when the stream is next due (None: now), the last request
    # for a scan and the Bindbee sync it was for, an operator's pending resync.
    due_at: float | None = None
    requested_at: float | None = None
    requested_sync: str | None = None
    resync_requested_at: float | None = None
    records: int = 0

    @property
    def in_progress(self) -> bool:
        """True when a scan was started and not finished (a restart resumes it)."""
        return self.scan_kind is not None


@dataclass(frozen=True, slots=True)
class DueStream:
    """A stream due now that no live lease holds."""

    key: StreamKey
    due_at: float | None
    connector_state: str | None  # why the sync watcher holds its scans, if it does
    resync_requested_at: float | None


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who holds a lease (``stream:<sid>``, ``sync-watcher``) since when, until when."""

    name: str
    owner: str
    acquired_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One process sharing the state store, as its last heartbeat described it."""

    replica: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    workers: int
    busy: int


@dataclass(frozen=True, slots=True)
class FleetView:
    """One read of the shared schedule: what is due, who holds what, who is alive."""

    due: list[DueStream]
    next_due: float | None
    leases: list[LeaseInfo]
    replicas: list[ReplicaInfo]


@dataclass(frozen=True, slots=True)
class Hint:
    """A verified ``connector_data_modified`` delivery, as the store keeps it.

    ``walk``: its ids cannot be read by id (over ``webhook.max_hint_ids``, or an id that
    is not a safe path segment): the sync is walked instead.
    """

    hid: int
    connector_id: str  # Bindbee's id of the connector
    sync_id: str | None
    ids: tuple[str, ...]
    walk: bool
    received_at: float


@dataclass(frozen=True, slots=True)
class WalkState:
    """A stream's walk spacing (``full_scan_every_syncs``), shared by the replicas.

    ``syncs``: syncs completed since the last completed walk (each counted once, by its
    ``last_sync_start_time``: ``counted_sync`` is the last one); ``spacing``: syncs between
    walks now (auto moves it); ``forced_at``: when a hint that could not be read (413) last
    asked for a walk (None: none asked for); ``hint_missed``: changes the last walk found
    that no hint named (None: not measured); ``hint_missed_total``: over every walk.
    """

    syncs: int = 0
    counted_sync: str | None = None
    spacing: int = 1
    forced_at: float | None = None
    hint_missed: int | None = None
    hint_missed_total: int = 0

    @property
    def forced(self) -> bool:
        """A walk is asked for by a hint that could not be read (413)."""
        return self.forced_at is not None


@dataclass(frozen=True, slots=True)
class HintStatus:
    """What ``status`` shows of a stream's hints and walk spacing."""

    spacing: int  # syncs between walks now
    syncs_since_walk: int
    hint_missed: int | None  # the last walk's count (None: not measured)
    hint_missed_total: int
    hints_unread: int  # hints received since the last walk that this stream has not read
