"""What a stream pass (``daemon.stream``) needs from a state store, and nothing more.

The scheduler, the CLI and the probes use ``StateStore`` itself (release, due times,
heartbeat, ``states``, ``reset``, ``ping``...): only the pass is written against this
Protocol, so that is all it lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from daemon.models import (
    Hint,
    Message,
    RejectWrite,
    RowWrite,
    ScanKind,
    SnapshotRow,
    StoredRow,
    StreamKey,
    StreamState,
    WalkState,
)


class SnapshotStore(Protocol):
    """Per-record snapshots, stream checkpoints, the outbox and the pass's lease.

    Every method that changes state runs in one transaction, so a crash leaves the
    store at a page boundary; once the pass's lease (``claim``) is gone, each such write
    raises LeaseLost and changes nothing.
    """

    def state(self, key: StreamKey, *, count: bool = True) -> StreamState: ...
    def begin_scan(
        self,
        key: StreamKey,
        kind: ScanKind,
        since: str | None,
        now: float,
        sync: str | None = None,
    ) -> StreamState: ...
    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, SnapshotRow]: ...
    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
        rejected: Sequence[RejectWrite] = (),
        pages: int = 1,
        *,
        new_rows: bool = False,
    ) -> StreamState: ...
    def mark_seen(self, key: StreamKey, ids: Sequence[str]) -> None: ...
    def known_rejections(
        self, key: StreamKey, fingerprints: Sequence[str]
    ) -> dict[str, str | None]: ...
    def find_remote_ids(self, key: StreamKey, remote_ids: Sequence[str]) -> dict[str, str]: ...
    def count_unidentified(self, key: StreamKey) -> int: ...
    def pending(self, key: StreamKey) -> list[Message]: ...
    def clear_pending(self, key: StreamKey, *, at: tuple[int, int] | None = None) -> None: ...
    def claim(
        self, key: StreamKey, *, now: float | None = None, due_only: bool = False
    ) -> bool: ...
    def check_lease(self, key: StreamKey) -> None: ...
    def begin_deletes(self, key: StreamKey) -> StreamState: ...
    def count_missing(self, key: StreamKey) -> tuple[int, int]: ...
    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]: ...
    def commit_deletes(
        self, key: StreamKey, ids: Sequence[str], outbox: Sequence[Message] = ()
    ) -> None: ...
    def finish_scan(
        self,
        key: StreamKey,
        now: float,
        delete_guard: str | None,
        outbox: Sequence[Message] = (),
        walked: tuple[int, int | None] | None = None,
    ) -> StreamState: ...
    def abandon_scan(self, key: StreamKey) -> None: ...
    # Hints (targeted reads) and the walk's hint_missed measure.
    def unread_hints(self, key: StreamKey, connector_id: str) -> list[Hint]: ...
    def hinted_ids(self, connector_id: str, since: float) -> set[str]: ...
    def hinted_ids_after(
        self, connector_id: str, since: float, after: int
    ) -> tuple[set[str], int]: ...
    def locate(self, connector: str, ids: Sequence[str]) -> dict[str, str]: ...
    def commit_reads(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        deleted: Sequence[str],
        outbox: Sequence[Message],
        rejected: Sequence[RejectWrite] = (),
        read_hints: Sequence[int] = (),
        now: float = 0.0,
    ) -> None: ...
    def walk_state(self, key: StreamKey) -> WalkState: ...
    def force_walk(self, keys: Sequence[StreamKey], now: float) -> None: ...
    def hints_unreadable(self, key: StreamKey, connector_id: str, since: float) -> bool: ...
