"""The pass's pure rules: values in, a decision out (no store, no broker, no clock).

Each is what a pass decides from what the store and the settings say: whether a scan is
begun, which kind of scan is due, what the next page request asks for, how far the
watermark may move, and whether a full scan's deletes may go ahead.
"""

from __future__ import annotations

from datetime import timedelta

from daemon.models import StreamState
from daemon.settings import ModelSettings
from daemon.timestamps import format_epoch, parse_time

DELETE_BATCH_MIN = 100
"""The fewest missing rows a delete batch takes (a batch is at least a page)."""


def scan_begun(state: StreamState) -> bool:
    """True when the scan in ``state`` already committed a page or entered its deletes:
    a pass meeting it resumes it, and what came before was published by an earlier pass."""
    return state.scan_pages > 0 or state.scan_phase == "deletes"


def pages_left(state: StreamState) -> bool:
    """True while the scan still has pages to walk (a begun scan without a cursor has
    committed its last page)."""
    return state.scan_phase == "pages" and not (state.scan_pages > 0 and state.scan_cursor is None)


def full_scan_due(
    model: ModelSettings, state: StreamState, now: float, *, force_full: bool = False
) -> bool:
    """Whether a new scan of ``state``'s stream must be full (else incremental)."""
    return (
        force_full
        # Bindbee's LMS lists have no incremental filter: a sync is followed by a walk.
        or model.trigger == "sync"
        or state.watermark is None
        or state.last_full_scan_started_at is None
        or model.incremental_param is None
        or now - state.last_full_scan_started_at >= model.full_scan_interval_seconds
    )


def incremental_since(watermark: str, lookback_seconds: float) -> str:
    """What an incremental scan asks for: changes from ``lookback_seconds`` before the
    watermark (the lookback absorbs clock skew and changes behind a scan's cursor)."""
    since = parse_time(watermark) - timedelta(seconds=lookback_seconds)
    # isoformat, not the stored normal form: this is what the API has always been sent.
    return since.isoformat().replace("+00:00", "Z")


def page_params(model: ModelSettings, state: StreamState) -> dict[str, str | int | float | bool]:
    """The list request's query parameters: the model's own, plus the incremental filter
    for an incremental scan."""
    params: dict[str, str | int | float | bool] = dict(model.params)
    if state.scan_kind == "incremental" and model.incremental_param and state.scan_since:
        params[model.incremental_param] = state.scan_since
    return params


def is_baseline(model: ModelSettings, initial: bool) -> bool:
    """True for an initial sync that records a baseline instead of emitting ``created``:
    its records are not on the topic."""
    return initial and model.initial_sync == "baseline"


def watermark_ceiling(scan_started_at: float | None) -> str | None:
    """The most a scan may move the watermark to: the moment it started.

    Pages come in id order, so a record changed while the scan runs, behind its cursor, is
    not seen, although a later page may carry a newer ``modified_at``. A watermark past the
    scan's start would make the next incremental pass skip that change (and a record dated
    in the future would make every later one skip everything). Capped, the next pass asks
    from the scan's start (minus ``lookback_seconds``, which also absorbs clock skew).
    """
    if scan_started_at is None:
        return None
    return format_epoch(scan_started_at)


def capped_watermark(max_modified: str | None, ceiling: str | None) -> str | None:
    """A page's newest ``modified_at``, no later than ``ceiling`` (None: no cap)."""
    # Both are normalised timestamps: fixed width, so text order is time order.
    if max_modified is None or ceiling is None:
        return max_modified
    return min(max_modified, ceiling)


def unidentified_guard(unidentified: int) -> str | None:
    """Why a full scan's deletes are withheld when it rejected items nothing identifies."""
    if not unidentified:
        return None
    # An item nothing identifies may be any stored record: none of the rows this scan
    # did not see can be taken for deleted.
    return (
        f"the full scan rejected {unidentified} item(s) it cannot identify (no usable id, "
        "no stored remote_id); withholding deletes until they are fixed (see the "
        "dead-letter topic)"
    )


def delete_guard(missing: int, total: int, max_delete_fraction: float) -> str | None:
    """Why a full scan's deletes are withheld (None: they go ahead).

    ``missing`` of the ``total`` stored records were not seen by the scan. Seeing none of
    them looks like a broken source, not an emptied one; losing more than
    ``max_delete_fraction`` of them at once is held for a person to look at.
    """
    if missing == 0:
        return None
    if missing == total:
        return f"the full scan saw none of the {total} stored records; deleting nothing"
    fraction = missing / total
    if fraction > max_delete_fraction:
        return (
            f"{missing} of {total} records ({fraction:.0%}) vanished in one full scan, over "
            f"max_delete_fraction {max_delete_fraction:.0%}; deleting nothing"
        )
    return None


def delete_batch_size(page_size: int) -> int:
    """How many missing rows one delete transaction takes."""
    return max(page_size, DELETE_BATCH_MIN)


def marker_consistent(*, full: bool, delete_guard: str | None, baseline: bool) -> bool:
    """Whether a completed scan's marker vouches that the topic now matches the source:
    only a full scan whose deletes went ahead, and not a baseline (its records are not on
    the topic)."""
    return full and delete_guard is None and not baseline
