"""Changes made in ``scheduled`` sync mode, waiting for a sync to make them visible.

Each staged change is the complete record a create or patch leads to (or a
deletion), keyed by (model, id): a later change to the same record builds on
the staged copy and replaces it, so applying is an upsert per key. A sync
*takes* the pending changes when it starts; changes made meanwhile collect
anew and join the next sync. A failed sync puts what it took back underneath
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bindbee_sim.ids import is_uuid
from bindbee_sim.store import Conflict, ModelStore
from bindbee_sim.times import format_us

Key = tuple[str, str]
"""(model, record id)."""


@dataclass(slots=True)
class StagedChange:
    """What the next sync does to one record."""

    record: dict[str, Any] | None
    """The record it will hold; None deletes it."""
    stamp: bool = True
    """Set ``modified_at`` to the sync's completion time (False: the change pinned it)."""
    unchecked: bool = False
    """Store ``record`` as given (see ``ModelStore.put``)."""


class Staging:
    """One connector's staged changes over its model stores (callers hold the state lock)."""

    def __init__(self, stores: Mapping[str, ModelStore]) -> None:
        self._stores = stores
        self._pending: dict[Key, StagedChange] = {}
        self._taken: dict[Key, StagedChange] | None = None

    def __len__(self) -> int:
        taken = self._taken or {}
        return len(self._pending) + sum(1 for key in taken if key not in self._pending)

    def clear(self) -> None:
        """Forget every staged change, taken ones too."""
        self._pending.clear()
        self._taken = None

    # ---- the staged view -------------------------------------------------------

    def _change(self, key: Key) -> StagedChange | None:
        change = self._pending.get(key)
        if change is None and self._taken is not None:
            change = self._taken.get(key)
        return change

    def record(self, model: str, record_id: str) -> dict[str, Any] | None:
        """The record as it will be once every staged change is applied, or None."""
        change = self._change((model, record_id))
        if change is not None:
            return None if change.record is None else dict(change.record)
        store = self._stores[model]
        entry = store.locate(record_id)
        return None if entry is None else store.full_record(entry)

    # ---- staging ---------------------------------------------------------------

    def create(
        self,
        model: str,
        fields: Mapping[str, Any],
        new_id: str,
        now_us: int,
        unchecked: bool = False,
    ) -> dict[str, Any]:
        """Stage a new record; returns the staged copy. Raises Conflict or ValueError."""
        if unchecked:
            record = unchecked_record(fields, new_id)
            stamp = False
        else:
            record = self._stores[model].new_record(fields, new_id, now_us)
            stamp = "modified_at" not in fields
        if self.record(model, record["id"]) is not None:
            raise Conflict(record["id"])
        self._pending[(model, record["id"])] = StagedChange(record, stamp, unchecked)
        return dict(record)

    def update(
        self, model: str, record_id: str, fields: Mapping[str, Any], now_us: int
    ) -> dict[str, Any] | None:
        """Stage a patch on the staged copy; returns the new copy, None when there is none."""
        current = self.record(model, record_id)
        if current is None:
            return None
        store = self._stores[model]
        record = store.merged(current, fields, now_us)
        store.check(record)  # refuse now (422) what the sync could not store
        self._pending[(model, record_id)] = StagedChange(record, "modified_at" not in fields)
        return dict(record)

    def delete(self, model: str, record_id: str) -> bool:
        """Stage a deletion; False when the staged view has no such record."""
        if self.record(model, record_id) is None:
            return False
        self._pending[(model, record_id)] = StagedChange(None)
        return True

    # ---- syncing ---------------------------------------------------------------

    def take(self) -> int:
        """A sync starts: it will apply what is pending now. Returns how many changes."""
        if self._taken is not None:
            raise RuntimeError("a sync already holds staged changes")
        self._taken, self._pending = self._pending, {}
        return len(self._taken)

    def give_back(self) -> None:
        """The sync failed: its changes are pending again, under any made since."""
        if self._taken is not None:
            self._pending = {**self._taken, **self._pending}
            self._taken = None

    def apply_taken(self, done_us: int) -> dict[str, list[str]]:
        """The sync completed: write what it took. Returns the ids it changed, per model."""
        taken, self._taken = self._taken or {}, None
        stamp_text = format_us(done_us)
        affected: dict[str, list[str]] = {}
        for (model, record_id), change in taken.items():
            store = self._stores[model]
            if change.record is None:
                if not store.delete(record_id):
                    continue
            else:
                record = change.record
                if change.stamp:
                    record = {**record, "modified_at": stamp_text}
                store.put(record, unchecked=change.unchecked)
            affected.setdefault(model, []).append(record_id)
        return affected


def unchecked_record(fields: Mapping[str, Any], new_id: str) -> dict[str, Any]:
    """The body of an unchecked create, with an id (``new_id`` unless the body has one)."""
    record = dict(fields)
    record_id = record.setdefault("id", new_id)
    # The id stays a real UUID: pages are ordered and cursored by it.
    if not isinstance(record_id, str) or not is_uuid(record_id):
        raise ValueError("id must be a lower-case UUID string")
    return {"id": record_id, **{k: v for k, v in record.items() if k != "id"}}
