"""Everything the simulator knows, behind one lock.

The HTTP handlers (event-loop thread) and ``SimServer`` (the test's thread)
both go through ``SimState``; every method takes the lock, and nothing holds
it across an ``await``.
"""

from __future__ import annotations

import hmac
import threading
from bisect import bisect_right
from collections.abc import Mapping
from typing import Any

from bindbee_sim.data import Dataset
from bindbee_sim.faults import Fault, FaultBook
from bindbee_sim.ids import UuidV7Source, encode_cursor
from bindbee_sim.ratelimit import FixedWindowLimiter, RateDecision
from bindbee_sim.schema import MODELS
from bindbee_sim.store import Conflict, ModelStore
from bindbee_sim.times import MonotonicUtc

UNKNOWN_CONNECTOR = "_unknown"
"""Stats key for data requests whose connector token is missing or unknown."""

__all__ = ["UNKNOWN_CONNECTOR", "Conflict", "NotFound", "SimState"]


class NotFound(LookupError):
    """No such connector, model or record."""


class SimState:
    """Connectors' data, faults, rate windows, stats and switches."""

    def __init__(
        self,
        connectors: Mapping[str, str],
        enrollments: int,
        seed: int,
        api_key: str,
        rate_limit: int = 200,
        rate_window_seconds: float = 60.0,
        honor_modified_after: bool = False,
    ) -> None:
        if not connectors:
            raise ValueError("at least one connector is needed")
        if len(set(connectors.values())) != len(connectors):
            raise ValueError("connector tokens must be distinct")
        if enrollments < 0:
            raise ValueError("enrollments must be >= 0")
        if rate_window_seconds <= 0:
            raise ValueError("rate_window_seconds must be positive")
        self.lock = threading.RLock()
        self.api_key = api_key
        self.honor_modified_after = honor_modified_after
        self.datasets = {
            name: Dataset(name, token, seed, enrollments) for name, token in connectors.items()
        }
        self._by_token = {ds.token: ds for ds in self.datasets.values()}
        self.limiter = FixedWindowLimiter(rate_limit, rate_window_seconds)
        self.faults = FaultBook()
        self._stats: dict[str, dict[str, int]] = {}
        self.clock = MonotonicUtc()
        self.new_ids = UuidV7Source()
        if honor_modified_after:
            self._build_modified_indexes()

    def _build_modified_indexes(self) -> None:
        # Sorting a million timestamps takes a moment: do it before the first
        # incremental poll rather than during it.
        for ds in self.datasets.values():
            for table in ds.tables.values():
                table.mod_index()

    # ---- request path ----------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries our API key as a Bearer token."""
        if not authorization:
            return False
        scheme, _, credential = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.api_key.encode()
        )

    def dataset_for_token(self, token: str | None) -> Dataset | None:
        """The dataset a connector token selects, or None."""
        return None if token is None else self._by_token.get(token)

    def attribution(self, token: str | None) -> str:
        """The stats key of a request carrying ``token``."""
        ds = self.dataset_for_token(token)
        return UNKNOWN_CONNECTOR if ds is None else ds.name

    def admit(self, token: str) -> RateDecision | None:
        """Count a request against the token's rate window (None: limiting is off)."""
        with self.lock:
            return self.limiter.hit(token)

    def take_fault(self, connector: str, model: str, is_page: bool) -> Fault | None:
        """Consume the fault this request triggers, if any."""
        with self.lock:
            return self.faults.take(connector, model, is_page)

    def record_status(self, who: str, status: int) -> None:
        """Count one data response."""
        with self.lock:
            per = self._stats.setdefault(who, {})
            key = str(status)
            per[key] = per.get(key, 0) + 1

    # ---- control -----------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Data responses so far: ``{connector name: {status code: count}}``."""
        with self.lock:
            return {who: dict(per) for who, per in self._stats.items()}

    def add_fault(self, description: Mapping[str, Any]) -> dict[str, Any]:
        """Arm a fault (see ``Fault``); raises ``ValueError`` when it is invalid."""
        fault = Fault.from_mapping(description, frozenset(self.datasets))
        with self.lock:
            self.faults.add(fault)
        return fault.as_dict()

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self.lock:
            self.faults.clear()

    def pending_faults(self) -> list[dict[str, Any]]:
        """Faults still armed."""
        with self.lock:
            return self.faults.pending()

    def configure(
        self,
        rate_limit: int | None = None,
        rate_window_seconds: float | None = None,
        honor_modified_after: bool | None = None,
    ) -> dict[str, Any]:
        """Change run-time switches (a rate change restarts every window); returns them all."""
        with self.lock:
            if rate_limit is not None or rate_window_seconds is not None:
                self.limiter.configure(
                    self.limiter.limit if rate_limit is None else rate_limit,
                    self.limiter.window_seconds
                    if rate_window_seconds is None
                    else rate_window_seconds,
                )
            if honor_modified_after is not None:
                self.honor_modified_after = honor_modified_after
                if honor_modified_after:
                    self._build_modified_indexes()
            return {
                "rate_limit": self.limiter.limit,
                "rate_window_seconds": self.limiter.window_seconds,
                "honor_modified_after": self.honor_modified_after,
            }

    def reset(self) -> None:
        """Seed data back, faults cleared, stats and rate windows forgotten."""
        with self.lock:
            for ds in self.datasets.values():
                ds.reset()
            self.faults.clear()
            self._stats.clear()
            self.limiter.reset()

    # ---- records -------------------------------------------------------------------

    def _store(self, connector: str, model: str) -> ModelStore:
        ds = self.datasets.get(connector)
        if ds is None:
            raise NotFound(f"unknown connector {connector!r}")
        if model not in MODELS:
            raise NotFound(f"unknown model {model!r}")
        return ds.stores[model]

    def create(self, connector: str, model: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Add a record; id minted unless given, ``modified_at`` now unless given."""
        with self.lock:
            store = self._store(connector, model)
            return store.create(fields, self.new_ids.new(), self.clock.now_us())

    def update(self, connector: str, model: str, record_id: str, fields: Mapping[str, Any]
               ) -> dict[str, Any]:
        """Merge fields into a record and bump ``modified_at`` unless given."""
        with self.lock:
            store = self._store(connector, model)
            record = store.update(record_id, fields, self.clock.now_us())
            if record is None:
                raise NotFound(f"no {model} with id {record_id}")
            return record

    def delete(self, connector: str, model: str, record_id: str) -> None:
        """Remove a record."""
        with self.lock:
            if not self._store(connector, model).delete(record_id):
                raise NotFound(f"no {model} with id {record_id}")

    def get(self, connector: str, model: str, record_id: str) -> dict[str, Any] | None:
        """The complete current record, or None."""
        with self.lock:
            store = self._store(connector, model)
            entry = store.locate(record_id)
            return None if entry is None else store.full_record(entry)

    def records(self, connector: str, model: str) -> list[dict[str, Any]]:
        """Every current record in full, in id order."""
        with self.lock:
            store = self._store(connector, model)
            return [store.full_record(entry) for entry in store.walk()]

    def ids(self, connector: str, model: str) -> list[str]:
        """Every current id, in order."""
        with self.lock:
            store = self._store(connector, model)
            return [store.entry_id(entry) for entry in store.walk()]

    # ---- connectors -------------------------------------------------------------------

    def connectors_page(
        self, page_size: int, after: str | None, is_active: bool | None, token: str | None
    ) -> dict[str, Any]:
        """The ``GET /connectors`` body: connectors by id, filtered and paged."""
        with self.lock:
            items = sorted((ds.connector for ds in self.datasets.values()),
                           key=lambda c: c["id"])
        if is_active is not None:
            items = [c for c in items if c["is_active"] == is_active]
        if token is not None:
            items = [c for c in items if c["connector_token"] == token]
        start = 0 if after is None else bisect_right([c["id"] for c in items], after)
        chunk = items[start:start + page_size]
        more = start + page_size < len(items)
        return {
            "cursor": encode_cursor(chunk[-1]["id"]) if more else None,
            "page_size": len(chunk),
            "items": [dict(c) for c in chunk],
        }
