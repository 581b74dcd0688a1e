"""The live records of one model for one connector: generated base plus edits.

Layout, chosen so that 1,000,000 records stay small and every page is cheap:

- ``BaseTable``: the generated records, never mutated (index order = id order);
- ``_overrides``: base index -> ``Row`` for generated records edited since;
- ``_deleted``: base indexes removed;
- ``_extra``: id -> ``Row`` for records created at run time, with their ids in
  a ``SortedList``;
- ``_mod_index``: ``(modified_at, id)`` of every ``Row``, sorted;
- ``epoch_us``: the last touch-all sync. A served record's ``modified_at`` is
  ``max(its own, epoch)``, so a sync that "rewrites" every record costs O(1)
  instead of a million dict rewrites (records stored ``unchecked`` excepted).

A plain page bisects the cursor into the base ids and the extra ids, then
walks forward: its cost does not depend on how deep the cursor is. A
selective filter (``remote_id``, a relation id, ``modified_after``) first
collects the matching ids from an index, sorted, and caches that list until
the next write, so walking its pages costs a bisect each.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from sortedcontainers import SortedList

from bindbee_sim.generate import BaseTable
from bindbee_sim.ids import is_uuid
from bindbee_sim.query import ListQuery, Projection
from bindbee_sim.schema import NULL_US
from bindbee_sim.times import format_us, normalize_datetime, parse_us

_MAX_US = 2**63 - 1
_NO_MATCH = -2  # a relation column value no generated record holds
_CACHE_SLOTS = 16
_INDEX_SELECTIVITY = 8  # use an index when it keeps at most 1/8 of the records


@dataclass(slots=True)
class Row:
    """A stored (edited or created) record with the keys filters compare."""

    record: dict[str, Any]
    mod_us: int
    dates: dict[str, int | None]
    unchecked: bool = False
    """Stored exactly as given (maybe invalid): served as is, never touched by a sync."""


Entry = int | Row
"""A live record: a base index (generated, unedited) or a ``Row``."""

_Plan = tuple[Any, ...]


class Conflict(Exception):
    """A record with this id already exists."""


class ModelStore:
    """Reads, pages and edits one model's records (callers hold the state lock)."""

    def __init__(self, table: BaseTable, tables: Mapping[str, BaseTable]) -> None:
        self.table = table
        self.spec = table.spec
        self._tables = tables
        self._overrides: dict[int, Row] = {}
        self._deleted: set[int] = set()
        self._extra: dict[str, Row] = {}
        self._extra_ids: SortedList = SortedList()
        self._mod_index: SortedList = SortedList()
        self._cache: dict[_Plan, tuple[int, list[str]]] = {}
        self.version = 0
        self.epoch_us = 0
        self._epoch_text = ""

    def touch(self, epoch_us: int) -> None:
        """A sync rewrote every record at ``epoch_us`` (content unchanged)."""
        if epoch_us > self.epoch_us:
            self.epoch_us = epoch_us
            self._epoch_text = format_us(epoch_us)
            self.version += 1

    # ---- reading -------------------------------------------------------------

    def live_count(self) -> int:
        """How many records exist now."""
        return self.table.n - len(self._deleted) + len(self._extra)

    def locate(self, record_id: str) -> Entry | None:
        """The live entry with this id, or None."""
        row = self._extra.get(record_id)
        if row is not None:
            return row
        index = self.table.index_of(record_id)
        if index is None or index in self._deleted:
            return None
        return self._overrides.get(index, index)

    def entry_id(self, entry: Entry) -> str:
        """The id of an entry."""
        return self.table.id_of(entry) if isinstance(entry, int) else entry.record["id"]

    def full_record(self, entry: Entry) -> dict[str, Any]:
        """A fresh dict of the complete record (custom_fields and raw_data included)."""
        if isinstance(entry, int):
            return self._touched(self.table.build(entry), self.table.mod_us[entry])
        record = dict(entry.record)
        return record if entry.unchecked else self._touched(record, entry.mod_us)

    def _touched(self, record: dict[str, Any], mod_us: int) -> dict[str, Any]:
        if mod_us < self.epoch_us:
            record["modified_at"] = self._epoch_text
        return record

    def render(self, entry: Entry, projection: Projection) -> dict[str, Any]:
        """A fresh dict of the record as a list/get response shows it (before expand)."""
        if isinstance(entry, int):
            record = self.table.build(
                entry, projection.include_custom_fields, projection.include_raw_data
            )
            return self._touched(record, self.table.mod_us[entry])
        record = dict(entry.record)
        # pop, not del: an unchecked record may lack either field.
        if not projection.include_custom_fields:
            record.pop("custom_fields", None)
        if not projection.include_raw_data:
            record.pop("raw_data", None)
        return record if entry.unchecked else self._touched(record, entry.mod_us)

    def walk(self, after: str | None = None) -> Iterator[Entry]:
        """Every live entry in id order, strictly after ``after`` when given."""
        table = self.table
        start = 0 if after is None else bisect_right(table.ids, after)
        extras: Iterable[str] = (
            self._extra_ids
            if after is None
            else self._extra_ids.irange(minimum=after, inclusive=(False, True))
        )
        for extra_id in extras:
            # Base ids below this extra id come first; bisect instead of comparing each.
            stop = bisect_left(table.ids, extra_id, lo=start)
            yield from self._base_entries(start, stop)
            start = stop
            yield self._extra[extra_id]
        yield from self._base_entries(start, table.n)

    def _base_entries(self, lo: int, hi: int) -> Iterator[Entry]:
        deleted, overrides = self._deleted, self._overrides
        if not deleted and not overrides:
            yield from range(lo, hi)
            return
        for index in range(lo, hi):
            if index in deleted:
                continue
            yield overrides.get(index, index)

    def page(self, query: ListQuery) -> tuple[list[Entry], bool]:
        """Up to ``page_size`` matching entries after the cursor, and whether more follow."""
        if query.modified_after is not None and query.modified_after < self.epoch_us:
            # Every record was touched after the bound: the filter keeps them all.
            query = replace(query, modified_after=None)
        base_ok, row_ok = self._predicates(query)
        limit = query.page_size
        out: list[Entry] = []
        for entry in self._source(query):
            if isinstance(entry, int):
                if base_ok is not None and not base_ok(entry):
                    continue
            elif row_ok is not None and not row_ok(entry):
                continue
            out.append(entry)
            if len(out) > limit:
                return out[:limit], True
        return out, False

    # ---- query planning --------------------------------------------------------

    def _target_index(self, relation: str, ref_id: str) -> int | None:
        return self._tables[self.spec.relations[relation]].index_of(ref_id)

    def _source(self, query: ListQuery) -> Iterator[Entry]:
        plan = self._plan(query)
        if plan is None:
            return self.walk(query.after)
        ids = self._candidates(plan)
        start = 0 if query.after is None else bisect_right(ids, query.after)
        return self._located(ids, start)

    def _located(self, ids: list[str], start: int) -> Iterator[Entry]:
        for k in range(start, len(ids)):
            entry = self.locate(ids[k])
            if entry is not None:
                yield entry

    def _plan(self, query: ListQuery) -> _Plan | None:
        """Which index narrows the query best, or None to walk in id order."""
        if query.remote_id is not None:
            return ("remote_id", query.remote_id)
        options: list[tuple[int, _Plan]] = []
        for field, value in query.equals.items():
            target = self._target_index(field, value)
            size = 0 if target is None else len(self.table.referencing(field, target))
            options.append((size, ("equals", field, value)))
        after = query.modified_after
        if after is not None:
            size = self.table.count_modified_after(after) + (
                len(self._mod_index) - self._mod_index.bisect_left((after + 1, ""))
            )
            # Broad matches are cheaper to find by walking with the predicate.
            if size * _INDEX_SELECTIVITY <= self.live_count():
                options.append((size, ("modified_after", after)))
        return min(options)[1] if options else None

    def _candidates(self, plan: _Plan) -> list[str]:
        """Sorted ids the plan's index yields (a superset of the matches), cached per version."""
        cached = self._cache.get(plan)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        table = self.table
        rows = chain(self._overrides.values(), self._extra.values())
        kind = plan[0]
        if kind == "remote_id":
            found = table.index_of_remote(plan[1])
            base: Iterable[int] = () if found is None else (found,)
            row_ids = [r.record["id"] for r in rows if r.record.get("remote_id") == plan[1]]
        elif kind == "equals":
            _, field, value = plan
            target = self._target_index(field, value)
            base = () if target is None else table.referencing(field, target)
            row_ids = [r.record["id"] for r in rows if r.record.get(field) == value]
        else:
            after = plan[1]
            base = table.modified_after(after)
            row_ids = [rid for _, rid in self._mod_index.irange(minimum=(after + 1, ""))]
        skip = self._deleted.union(self._overrides)
        base_ids = [table.id_of(i) for i in base if i not in skip]
        row_ids.sort()
        ids = list(heapq.merge(base_ids, row_ids)) if row_ids else base_ids
        if len(self._cache) >= _CACHE_SLOTS:
            self._cache.clear()
        self._cache[plan] = (self.version, ids)
        return ids

    def _predicates(
        self, query: ListQuery
    ) -> tuple[Callable[[int], bool] | None, Callable[[Row], bool] | None]:
        """Checks for base indexes and for rows; None when nothing is filtered."""
        table = self.table
        base: list[Callable[[int], bool]] = []
        rows: list[Callable[[Row], bool]] = []
        if query.remote_id is not None:
            base.append(_base_is(table.index_of_remote(query.remote_id)))
            rows.append(_row_field_is("remote_id", query.remote_id))
        for field, value in query.equals.items():
            target = self._target_index(field, value)
            base.append(_column_is(table.rel[field], _NO_MATCH if target is None else target))
            rows.append(_row_field_is(field, value))
        for field, (low, high) in query.ranges.items():
            low_us = -_MAX_US if low is None else low
            high_us = _MAX_US if high is None else high
            base.append(_column_between(table.dates[field], low_us, high_us))
            rows.append(_row_date_between(field, low_us, high_us))
        if query.modified_after is not None:
            base.append(_column_above(table.mod_us, query.modified_after))
            rows.append(_row_modified_above(query.modified_after))
        if not base:
            return None, None
        return _all(base), _all(rows)

    # ---- writing ---------------------------------------------------------------

    def clean(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Validate written fields against the model; datetimes come back normalised.

        Raises ``ValueError`` with a message fit for a 422.
        """
        spec = self.spec
        unknown = sorted(set(fields) - set(spec.fields))
        if unknown:
            raise ValueError(f"unknown fields for {spec.name}: {unknown}")
        out: dict[str, Any] = {}
        for name, value in fields.items():
            if name == "id":
                if not isinstance(value, str) or not is_uuid(value):
                    raise ValueError("id must be a lower-case UUID string")
            elif name == "modified_at" or name in spec.datetimes:
                if value is None and name != "modified_at":
                    pass
                else:
                    try:
                        value = normalize_datetime(value)
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"{name} must be an ISO 8601 datetime") from exc
            elif name == "remote_id" or name in spec.relations:
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{name} must be a string or null")
            elif name == "custom_fields":
                if value is not None and not isinstance(value, dict):
                    raise ValueError("custom_fields must be an object or null")
            elif name == "raw_data" and not isinstance(value, dict):
                raise ValueError("raw_data must be an object")
            out[name] = value
        return out

    def _row(self, record: dict[str, Any]) -> Row:
        dates = {
            name: None if record.get(name) is None else parse_us(record[name])
            for name in self.spec.date_filters
        }
        return Row(record, parse_us(record.get("modified_at")), dates)

    def check(self, record: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless ``record`` can be stored as a checked record."""
        self._row(record)

    def _unchecked_row(self, record: dict[str, Any]) -> Row:
        # Whatever cannot be read sorts as "never modified" / "no date".
        return Row(
            record,
            _lenient_us(record.get("modified_at"), NULL_US),
            {name: _lenient_us(record.get(name), None) for name in self.spec.date_filters},
            unchecked=True,
        )

    def _place(self, record_id: str, row: Row) -> None:
        """Store ``row`` as the record ``record_id``, replacing any live one."""
        entry = self.locate(record_id)
        if isinstance(entry, Row):
            self._mod_index.remove((entry.mod_us, record_id))
        if record_id in self._extra:
            self._extra[record_id] = row
        else:
            index = self.table.index_of(record_id)
            if index is not None and index not in self._deleted:
                self._overrides[index] = row
            else:
                # New, or re-created after its generated twin was deleted.
                self._extra[record_id] = row
                self._extra_ids.add(record_id)
        self._mod_index.add((row.mod_us, record_id))
        self.version += 1

    def create(self, fields: Mapping[str, Any], record_id: str, now_us: int) -> dict[str, Any]:
        """Add a record (``record_id`` unless ``fields`` names one); returns it in full.

        Raises ``Conflict`` when the id exists, ``ValueError`` for invalid fields.
        """
        record = self.new_record(fields, record_id, now_us)
        if self.locate(record["id"]) is not None:
            raise Conflict(record["id"])
        self._place(record["id"], self._row(record))
        return dict(record)

    def new_record(self, fields: Mapping[str, Any], record_id: str, now_us: int) -> dict[str, Any]:
        """The record a create of ``fields`` makes (not stored); raises ``ValueError``."""
        clean = self.clean(fields)
        record = self.spec.blank()
        record["id"] = clean.pop("id", record_id)
        record["modified_at"] = format_us(now_us)
        record.update(clean)
        return record

    def merged(
        self, current: Mapping[str, Any], fields: Mapping[str, Any], now_us: int
    ) -> dict[str, Any]:
        """``current`` with ``fields`` merged in, ``modified_at`` now unless given."""
        clean = self.clean(fields)
        if clean.pop("id", current["id"]) != current["id"]:
            raise ValueError("id cannot be changed")
        record = dict(current)
        record["modified_at"] = format_us(now_us)
        record.update(clean)
        return record

    def update(
        self, record_id: str, fields: Mapping[str, Any], now_us: int
    ) -> dict[str, Any] | None:
        """Merge ``fields`` into a record, bumping ``modified_at`` unless given; None if absent."""
        entry = self.locate(record_id)
        if entry is None:
            return None
        record = self.merged(self.full_record(entry), fields, now_us)
        self._place(record_id, self._row(record))
        return dict(record)

    def put(self, record: Mapping[str, Any], unchecked: bool = False) -> None:
        """Store a complete record (created or replaced); ``unchecked`` keeps it as given."""
        record = dict(record)
        row = self._unchecked_row(record) if unchecked else self._row(record)
        self._place(record["id"], row)

    def delete(self, record_id: str) -> bool:
        """Remove a record; False when there was none."""
        entry = self.locate(record_id)
        if entry is None:
            return False
        if isinstance(entry, Row):
            self._mod_index.remove((entry.mod_us, record_id))
        if record_id in self._extra:
            del self._extra[record_id]
            self._extra_ids.remove(record_id)
        else:
            index = self.table.index_of(record_id)
            assert index is not None  # locate found it in the base
            self._overrides.pop(index, None)
            self._deleted.add(index)
        self.version += 1
        return True

    def reset(self) -> None:
        """Back to the generated state."""
        self._overrides.clear()
        self._deleted.clear()
        self._extra.clear()
        self._extra_ids.clear()
        self._mod_index.clear()
        self._cache.clear()
        self.epoch_us = 0
        self._epoch_text = ""
        self.version += 1


def _lenient_us(value: Any, default: int | None) -> int | None:
    try:
        return parse_us(value)
    except (TypeError, ValueError):
        return default


# Small closures built once per query; factories avoid late-binding surprises.


def _all(checks: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    if len(checks) == 1:
        return checks[0]

    def check(item: Any) -> bool:
        return all(c(item) for c in checks)

    return check


def _base_is(wanted: int | None) -> Callable[[int], bool]:
    return lambda index: index == wanted


def _column_is(column: Any, wanted: int) -> Callable[[int], bool]:
    return lambda index: column[index] == wanted


def _column_between(column: Any, low: int, high: int) -> Callable[[int], bool]:
    # Null dates hold the minimum int64, below every real bound.
    return lambda index: low <= column[index] <= high


def _column_above(column: Any, bound: int) -> Callable[[int], bool]:
    return lambda index: column[index] > bound


def _row_field_is(field: str, wanted: str) -> Callable[[Row], bool]:
    return lambda row: row.record.get(field) == wanted


def _row_date_between(field: str, low: int, high: int) -> Callable[[Row], bool]:
    def check(row: Row) -> bool:
        value = row.dates[field]
        return value is not None and low <= value <= high

    return check


def _row_modified_above(bound: int) -> Callable[[Row], bool]:
    return lambda row: row.mod_us > bound
