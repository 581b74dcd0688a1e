"""A ``connector_data_modified`` delivery's ids: what may be read by id, and its dedupe key.

An id goes into ``/api/lms/v1/{model}/{id}`` only if it is a safe path segment; a list
longer than the cap is not truncated. Either way the hint then asks for a walk instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

MAX_HINT_IDS = 10_000
"""Default cap on the ids one delivery may list (``webhook.max_hint_ids``); over it the
sync is walked instead."""
# A record id that may go into ``/api/lms/v1/{model}/{id}`` as it is: no slash, no dot
# segment, no percent sign or query character; Bindbee's ids are UUIDs.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,199}$")
_MAX_FIELD = 200  # a sync id longer than this is not kept


@dataclass(frozen=True, slots=True)
class IdsHint:
    """A verified ``connector_data_modified``: whose ids, for which sync, and whether they
    can be read by id (``walk_reason`` None) or the sync must be walked instead."""

    connector_id: str
    sync_id: str | None
    ids: tuple[str, ...]
    dedupe: str  # sync id + digest of the body: a replayed delivery has the same
    walk_reason: str | None = None


def safe_id(value: object) -> bool:
    """True for an id that is a safe URL path segment (see ``SAFE_ID``)."""
    return isinstance(value, str) and SAFE_ID.match(value) is not None


def parse_ids_hint(body: bytes, connector_id: str, max_ids: int = MAX_HINT_IDS) -> IdsHint:
    """The ids hint of a ``connector_data_modified`` body (already a verified envelope);
    ValueError when ``data`` is not a list."""
    data = orjson.loads(body)
    ids = data.get("data")
    if not isinstance(ids, list):
        raise ValueError("data of connector_data_modified is not a list of ids")
    sync = data.get("sync")
    sync_id = sync.get("sync_id") if isinstance(sync, dict) else None
    if not isinstance(sync_id, str) or len(sync_id) > _MAX_FIELD:
        sync_id = None
    dedupe = f"{sync_id or '-'}:{hashlib.sha256(body).hexdigest()[:32]}"
    if len(ids) > max_ids:
        reason = f"{len(ids)} ids, over webhook.max_hint_ids {max_ids}"
        return IdsHint(connector_id, sync_id, (), dedupe, reason)
    if not all(safe_id(rid) for rid in ids):
        return IdsHint(connector_id, sync_id, (), dedupe, "an id is not a safe path segment")
    return IdsHint(connector_id, sync_id, tuple(dict.fromkeys(ids)), dedupe)
