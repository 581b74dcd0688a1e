"""Which items of a page the differ can use: ``classify_item(s)``.

An item is rejected (a poison record, dead-lettered by the stream) when it is not an
object, has no usable id, no readable ``modified_at``, or cannot be hashed
(``unhashable``). Pure: no I/O; the client runs it on every page it fetches.
"""

from __future__ import annotations

from typing import Any

import orjson

from daemon.models import Record, RejectedItem, RejectReason
from daemon.timestamps import normalize_time


def unhashable(value: Record | list[Record]) -> str | None:
    """Why ``daemon.diff.content_hash`` cannot hash ``value`` (nesting past orjson's
    limit, say), or None; for a list, None when it can hash every record in it. A third of
    the cost of hashing: the encoder fails alike with or without sorted keys (a parsed JSON
    object's keys are strings), and nothing is digested."""
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return str(exc)
    return None


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
               float: "number", type(None): "null"}  # fmt: skip


def classify_item(position: int, item: Any) -> RejectedItem | None:
    """None for an item the differ can use; otherwise why not, as a RejectedItem."""
    if not isinstance(item, dict):
        kind = _JSON_TYPES.get(type(item), type(item).__name__)
        return RejectedItem(position, item, "not_an_object", f"item {position} is a JSON {kind}")
    remote = item.get("remote_id")
    remote_id = remote if isinstance(remote, str) and remote else None
    if "id" not in item:
        return RejectedItem(position, item, "no_id", f"item {position} has no id", None, remote_id)
    record_id = item["id"]
    if not isinstance(record_id, str) or not record_id:
        return RejectedItem(
            position,
            item,
            "bad_id",
            f"item {position} has an id that is not a non-empty string",
            None,
            remote_id,
        )
    what = f"item {position} (id {record_id})"
    modified_at = item.get("modified_at")
    reason: RejectReason | None = None
    if modified_at is None:
        reason, detail = "no_modified_at", f"{what} has no modified_at"
    elif not isinstance(modified_at, str):
        reason, detail = "bad_modified_at", f"{what} has a modified_at that is not a string"
    elif not _readable_time(modified_at):
        reason, detail = "bad_modified_at", f"{what} has an unreadable modified_at"
    if reason is None:
        problem = unhashable(item)
        if problem is not None:
            reason, detail = "unhashable", f"{what} cannot be hashed ({problem})"
    if reason is None:
        return None
    return RejectedItem(position, item, reason, detail, record_id, remote_id)


def _readable_time(value: str) -> bool:
    try:
        normalize_time(value)
    except ValueError:
        return False
    return True


def classify_items(items: list[Any]) -> tuple[list[Record], list[RejectedItem]]:
    """A page's items split into those the differ can use and the rejected ones (in
    page order); the same verdicts as ``classify_item`` on each.

    On the page walk's critical path, so the common case is cheap: an object with a
    string id and a readable string modified_at is usable unless it cannot be hashed,
    and one encoding of the whole list shows that none of them is unhashable.
    """
    usable: list[tuple[int, Record]] = []
    rejected: list[RejectedItem] = []
    for position, item in enumerate(items):
        if type(item) is dict:
            record_id = item.get("id")
            modified_at = item.get("modified_at")
            if (
                type(record_id) is str
                and record_id
                and type(modified_at) is str
                and _readable_time(modified_at)
            ):
                usable.append((position, item))
                continue
        problem = classify_item(position, item)
        if problem is None:  # a dict subclass, say: not what orjson makes, but usable
            usable.append((position, item))
        else:
            rejected.append(problem)
    good = [item for _, item in usable]
    if good and unhashable(good) is not None:  # rare: find which, item by item
        good = []
        for position, item in usable:
            problem = classify_item(position, item)
            if problem is None:
                good.append(item)
            else:
                rejected.append(problem)
        rejected.sort(key=lambda r: r.position)
    return good, rejected
