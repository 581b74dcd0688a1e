"""One connector's dataset: its five model stores, staged changes, ``expand``, pages."""

from __future__ import annotations

from typing import Any

from bindbee_sim.connectors import Connector
from bindbee_sim.generate import generate_tables
from bindbee_sim.ids import encode_cursor
from bindbee_sim.query import ListQuery, Projection
from bindbee_sim.schema import MODELS
from bindbee_sim.staging import Staging
from bindbee_sim.store import Entry, ModelStore


class Dataset:
    """The records one connector token gives access to."""

    def __init__(self, name: str, token: str, seed: int, enrollments: int) -> None:
        self.name = name
        self.token = token
        self.tables = generate_tables(seed, name, enrollments)
        self.stores = {
            model: ModelStore(table, self.tables) for model, table in self.tables.items()
        }
        self.connector = Connector.derive(seed, name, token)
        self.staging = Staging(self.stores)

    def page(self, model: str, query: ListQuery) -> dict[str, Any]:
        """The list response body for ``query``."""
        store = self.stores[model]
        entries, more = store.page(query)
        items = [self._render(store, entry, query.projection) for entry in entries]
        cursor = encode_cursor(store.entry_id(entries[-1])) if more else None
        return {"cursor": cursor, "page_size": len(items), "items": items}

    def get(self, model: str, record_id: str, projection: Projection) -> dict[str, Any] | None:
        """The get-by-id response body, or None when there is no such record."""
        store = self.stores[model]
        entry = store.locate(record_id)
        return None if entry is None else self._render(store, entry, projection)

    def full(self, model: str, record_id: str) -> dict[str, Any] | None:
        """The complete current record (custom_fields and raw_data included), or None."""
        store = self.stores[model]
        entry = store.locate(record_id)
        return None if entry is None else store.full_record(entry)

    def reset(self) -> None:
        """Every model back to its generated state, nothing staged, freshly seed-synced."""
        for store in self.stores.values():
            store.reset()
        self.staging.clear()
        self.connector.restore()

    def touch(self, epoch_us: int) -> None:
        """A sync rewrote every record's ``modified_at`` at ``epoch_us``."""
        for store in self.stores.values():
            store.touch(epoch_us)

    def _render(self, store: ModelStore, entry: Entry, projection: Projection) -> dict[str, Any]:
        record = store.render(entry, projection)
        for relation, picks in projection.expand.items():
            if relation not in record:  # an unchecked record without the field
                continue
            ref = record[relation]
            record[relation] = (
                None
                if not isinstance(ref, str)  # null, or junk in an unchecked record
                else self._expanded(store.spec.relations[relation], ref, picks)
            )
        return record

    def _expanded(
        self, model: str, ref: str, picks: tuple[str, ...] | None
    ) -> dict[str, Any] | None:
        # A dangling reference (deleted or never existing) expands to null.
        full = self.full(model, ref)
        if full is None:
            return None
        return {name: full[name] for name in picks or MODELS[model].default_expand_fields}
