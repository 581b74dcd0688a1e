"""One connector's dataset: its five model stores, rendering with ``expand``, pages."""

from __future__ import annotations

import random
from typing import Any

from bindbee_sim.generate import generate_tables
from bindbee_sim.ids import encode_cursor, stable_key, uuid7
from bindbee_sim.query import ListQuery, Projection
from bindbee_sim.schema import MODELS
from bindbee_sim.store import Entry, ModelStore
from bindbee_sim.times import format_us

_SLUGS = ("docebo", "cornerstone", "workday_learning", "sap_successfactors_learning",
          "talentlms", "absorb", "litmos", "moodle")
_CONNECTOR_EPOCH_MS = 1_700_000_000_000  # connectors were linked in late 2023


class Dataset:
    """The records one connector token gives access to."""

    def __init__(self, name: str, token: str, seed: int, enrollments: int) -> None:
        self.name = name
        self.token = token
        self.tables = generate_tables(seed, name, enrollments)
        self.stores = {
            model: ModelStore(table, self.tables) for model, table in self.tables.items()
        }
        self.connector = _connector_record(seed, name, token)

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
        """Every model back to its generated state."""
        for store in self.stores.values():
            store.reset()

    def _render(self, store: ModelStore, entry: Entry, projection: Projection) -> dict[str, Any]:
        record = store.render(entry, projection)
        for relation, picks in projection.expand.items():
            ref = record[relation]
            record[relation] = (
                None if ref is None else self._expanded(store.spec.relations[relation], ref, picks)
            )
        return record

    def _expanded(self, model: str, ref: str, picks: tuple[str, ...] | None
                  ) -> dict[str, Any] | None:
        # A dangling reference (deleted or never existing) expands to null.
        full = self.full(model, ref)
        if full is None:
            return None
        return {name: full[name] for name in picks or MODELS[model].default_expand_fields}


def _connector_record(seed: int, name: str, token: str) -> dict[str, Any]:
    """The connector as ``GET /connectors`` lists it; deterministic in (seed, name)."""
    key = stable_key(seed, name, "connector")
    rng = random.Random(key)
    created_ms = _CONNECTOR_EPOCH_MS + rng.randrange(30 * 86_400_000)
    last_sync_ms = 1_760_000_000_000 + rng.randrange(86_400_000)
    return {
        "id": uuid7(created_ms, rng.getrandbits(12), rng.getrandbits(62)),
        "is_active": True,
        "status": "ACTIVE",
        "integration_slug": rng.choice(_SLUGS),
        "end_user": {
            "id": uuid7(created_ms, rng.getrandbits(12), rng.getrandbits(62)),
            "name": name.replace("_", " ").title(),
            "email": f"it-admin@{name}.example",
            "origin_id": name,
        },
        "sync_status": "COMPLETED",
        "last_sync_start_time": format_us(last_sync_ms * 1000),
        "next_sync_start_time": format_us((last_sync_ms + 3_600_000) * 1000),
        "completed_at": format_us((last_sync_ms + rng.randrange(60_000, 900_000)) * 1000),
        "created_at": format_us(created_ms * 1000),
        "connector_token": token,
        "category": "LMS",
        "is_test_connector": False,
    }
