"""Measuring the hints: which changes a walk found that no hint had named.

A walk covers the syncs completed since the previous walk started; the hints received
since then named what those syncs changed. A change the walk finds (created, updated,
deleted) whose id none of them named is a ``hint_missed``: a lost delivery, or a change
Bindbee did not report. Hints received while the walk runs count too (the set is read
again before an id is called missed), so a sync completing mid-walk is not blamed.

A window with a hint that could not be read by id (stored as "walk instead": over
``max_hint_ids`` or an unsafe id; or a 413 that forced the walk) is not measured: the
changes of that sync were received but not named, so the walk's ``hint_missed`` is None.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from daemon.models import StreamKey


class HintedIds(Protocol):
    def hinted_ids_after(
        self, connector_id: str, since: float, after: int
    ) -> tuple[set[str], int]: ...
    def hints_unreadable(self, key: StreamKey, connector_id: str, since: float) -> bool: ...


class HintMeasure:
    """Counts a walk's changes that no hint of Bindbee connector ``connector_id`` received
    at or after ``since`` (the previous walk's start) named."""

    def __init__(self, store: HintedIds, key: StreamKey, connector_id: str, since: float) -> None:
        self._store = store
        self.key = key
        self.connector_id = connector_id
        self.since = since
        self._ids: set[str] = set()
        self._last = -1  # the highest hint id read: later reads fetch only newer hints
        self._read = False

    def missed(self, changed: Iterable[str]) -> int:
        """How many of the ``changed`` ids no hint named."""
        changed = list(changed)
        if not changed:
            return 0
        if not self._read:
            self._fetch()
            self._read = True
        unnamed = [rid for rid in changed if rid not in self._ids]
        if unnamed:
            # A hint may have arrived since the set was read: fetch the newer ones before
            # blaming (only hints above the last id read, not every one again).
            self._fetch()
            unnamed = [rid for rid in unnamed if rid not in self._ids]
        return len(unnamed)

    def _fetch(self) -> None:
        ids, self._last = self._store.hinted_ids_after(self.connector_id, self.since, self._last)
        self._ids |= ids

    def result(self, missed: int, *, partial: bool = False) -> int | None:
        """The walk's ``hint_missed`` from the ``missed`` it counted: None (not measured)
        when a hint of the window could not be read by id, or when the walk was resumed
        from an earlier process (``partial``: the misses it counted are lost) and counted
        none since (a miss counted is a miss all the same)."""
        if self._store.hints_unreadable(self.key, self.connector_id, self.since):
            return None
        if partial and missed == 0:
            return None
        return missed
