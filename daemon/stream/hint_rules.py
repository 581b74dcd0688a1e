"""Pure rules of hinted syncs: when to walk, how far apart, and what a read costs.

    models.<m>.full_scan_every_syncs --spacing_now--> syncs between walks
    syncs since the last walk, spacing, forced  --walk_due-->  walk this sync or not
    a completed walk's hint_missed  --next_spacing-->  the spacing after it (auto)
    hinted ids, the connector's streams  --read_cost / walk_cost-->  read or walk
    a model's params  --unknown_filters-->  read by id, or walk ("unknown")

A sync's changes are read by id when its ``connector_data_modified`` hint names them
(one request per id, per model tried for an id no stream stores); a walk costs
ceil(records/page size) per model. Reading is chosen only while it is the cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from daemon.settings import AUTO_MAX_SPACING
from daemon.timestamps import normalize_time, parse_time

Every = int | Literal["auto"]

PROJECTION_PARAMS = ("include_raw_data", "include_custom_fields", "expand")
"""The list parameters that shape a record (not which records): a read by id sends the
walk's, so a record read by id is byte-identical to the walked one."""
_RELATION_FILTERS = ("user", "course", "content")
_DATE_FILTERS = ("start_date", "end_date")
# Parameters that select no records (how a page is fetched): harmless to a read by id.
_PAGING_PARAMS = ("page_size", "cursor")
_KNOWN_PARAMS = frozenset(
    (
        "remote_id",
        *_RELATION_FILTERS,
        *(f"{name}_{end}" for name in _DATE_FILTERS for end in ("from", "to")),
        *PROJECTION_PARAMS,
        *_PAGING_PARAMS,
    )
)


def spacing_now(every: Every, stored: int) -> int:
    """Syncs between walks now: N for an integer setting; for ``auto`` the stored
    spacing (1 to ``AUTO_MAX_SPACING``)."""
    if every != "auto":
        return int(every)
    return min(max(stored, 1), AUTO_MAX_SPACING)


def next_spacing(every: Every, current: int, hint_missed: int | None) -> int:
    """The spacing after a completed walk that found ``hint_missed`` changes no hint named
    (None: not measured, e.g. an initial sync or webhooks off). ``auto`` returns to every
    sync at the first miss, and doubles after a clean walk, up to ``AUTO_MAX_SPACING``."""
    if every != "auto":
        return int(every)
    current = spacing_now(every, current)
    if hint_missed is None:
        return current
    if hint_missed > 0:
        return 1
    return min(current * 2, AUTO_MAX_SPACING)


def walk_due(*, syncs: int, spacing: int, forced: bool = False) -> bool:
    """Whether the sync just counted is walked: ``spacing`` syncs completed since the last
    walk (``syncs`` counts this one), or a walk was forced (an unreadable hint) and a sync
    has completed since the last walk."""
    return syncs >= spacing or (forced and syncs > 0)


def walk_cost(records: Iterable[int], page_size: int) -> int:
    """Requests of one walk of each stream: ceil(records / page size), at least one page."""
    return sum(max(1, math.ceil(n / page_size)) for n in records)


def read_cost(known: int, unknown: int, models: int) -> int:
    """Requests to read ``known`` ids (stored: one stream each) and ``unknown`` ones (tried
    in each of ``models`` configured models)."""
    return known + unknown * models


def read_instead(reads: int, walks: int) -> bool:
    """Read by id while that costs no more than the walks it replaces."""
    return reads <= walks


def projection(params: Mapping[str, Any]) -> dict[str, Any]:
    """The walk's projection parameters among a model's ``params``."""
    return {k: v for k, v in params.items() if k in PROJECTION_PARAMS}


def _related_id(value: Any) -> Any:
    # A relation is an id, or an object when expanded.
    return value.get("id") if isinstance(value, dict) else value


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(normalize_time(value))
    except ValueError:
        return None


def unknown_filters(params: Mapping[str, Any]) -> str | None:
    """Why ``passes_filters`` cannot judge a record against the walk's ``params`` (the
    "unknown" verdict: the stream walks instead of reading by id), or None when it can.
    ``models.<m>.params`` is free-form: a parameter it does not know (``status: ACTIVE``)
    may filter the list, an ``expand`` whose field selection leaves out ``id`` hides the
    relation's id, and a date bound that does not parse cannot be compared."""
    unknown = sorted(name for name in params if name not in _KNOWN_PARAMS)
    if unknown:
        return f"params the read by id cannot check: {', '.join(unknown)}"
    expand = params.get("expand")
    if expand is not None:
        if not isinstance(expand, str):
            return "expand is not a string"
        for rel, fields in _expanded(expand):
            if fields is not None and "id" not in fields:
                return f"expand {rel}[...] leaves out the relation's id"
    for name in _DATE_FILTERS:
        for end in ("from", "to"):
            bound = params.get(f"{name}_{end}")
            if bound is not None and _time(str(bound)) is None:
                return f"{name}_{end} is not a datetime"
    return None


def _expanded(expand: str) -> list[tuple[str, set[str] | None]]:
    """``user,course[title,id]`` -> [(user, None), (course, {title, id})]."""
    found: list[tuple[str, set[str] | None]] = []
    depth, part = 0, ""
    for char in expand + ",":
        if char == "," and depth == 0:
            part = part.strip()
            if part:
                rel, _, rest = part.partition("[")
                fields = {f.strip() for f in rest.rstrip("]").split(",")} if rest else None
                found.append((rel.strip(), fields))
            part = ""
            continue
        depth += (char == "[") - (char == "]")
        part += char
    return found


def passes_filters(record: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """Whether the walk (the list with the model's ``params``) would list ``record``:
    ``remote_id``, ``user``/``course``/``content`` (the id, expanded or not) and the
    inclusive ``start_date``/``end_date`` ranges. A record outside them is not the
    stream's: a read by id must not make it ``created``. Only meaningful when
    ``unknown_filters(params)`` is None."""
    if "remote_id" in params and record.get("remote_id") != params["remote_id"]:
        return False
    for name in _RELATION_FILTERS:
        if name in params and _related_id(record.get(name)) != params[name]:
            return False
    for name in _DATE_FILTERS:
        low, high = params.get(f"{name}_from"), params.get(f"{name}_to")
        if low is None and high is None:
            continue
        value = _time(record.get(name))
        if value is None:
            return False
        if low is not None and value < (_time(str(low)) or value):
            return False
        if high is not None and value > (_time(str(high)) or value):
            return False
    return True
