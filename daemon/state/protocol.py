"""What the stream needs from a state store, whichever database holds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from daemon.models import (
    Message,
    RejectWrite,
    RowWrite,
    ScanKind,
    SnapshotRow,
    StoredRow,
    StreamKey,
    StreamState,
)


class SnapshotStore(Protocol):
    """Per-record snapshots, stream checkpoints and the outbox.

    Every method that changes state runs in one transaction, so a crash leaves the
    store at a page boundary.
    """

    def state(self, key: StreamKey) -> StreamState: ...
    def states(self) -> list[StreamState]: ...
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
    ) -> StreamState: ...
    def known_rejections(
        self, key: StreamKey, fingerprints: Sequence[str]
    ) -> dict[str, str | None]: ...
    def find_remote_ids(self, key: StreamKey, remote_ids: Sequence[str]) -> dict[str, str]: ...
    def count_unidentified(self, key: StreamKey) -> int: ...
    def rejected_count(self, key: StreamKey) -> int: ...
    def pending(self, key: StreamKey) -> list[Message]: ...
    def clear_pending(self, key: StreamKey) -> None: ...
    def claim(
        self, key: StreamKey, *, now: float | None = None, due_only: bool = False
    ) -> bool: ...
    def check_lease(self, key: StreamKey) -> None: ...
    def release(
        self,
        key: StreamKey,
        *,
        next_due: float | None = None,
        seen_request: float | None = None,
    ) -> bool: ...
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
    ) -> StreamState: ...
    def record_error(self, key: StreamKey, message: str, now: float) -> None: ...
    def set_connector_state(self, key: StreamKey, state: str | None) -> None: ...
    def abandon_scan(self, key: StreamKey) -> None: ...
    def reset(self, key: StreamKey) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...
