"""Snapshots: the last published version of each record, written a page at a time.

``commit_page`` is the pass's one transaction per page: the page's rows, its messages
(the outbox, see ``scans``), the contents it rejected, its ids marked seen by the
current scan, and the cursor. The rest reads: stored rows by id, by ``remote_id``, and
the contents already dead-lettered (``rejected``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import bindparam, case, func, or_, select, update

from daemon.models import Message, RejectWrite, RowWrite, SnapshotRow, StreamKey, StreamState
from daemon.state.leases import LeaseFencing
from daemon.state.rows import LoadedRow
from daemon.state.scans import CURRENT_SCAN, write_outbox
from daemon.state.schema import records, rejected, seen, streams
from daemon.state.sql import CHUNK, SID, id_params, row_params, stream_update

RECORD_COLUMNS = ("sid", "id", "modified_at", "hash", "record")
SEEN_COLUMNS = ("sid", "id", "scan")
REJECTED_COLUMNS = ("sid", "fingerprint", "first_seen", "reason", "record_id", "scan")
_SELECT_SCAN = select(streams.c.scan_number).where(streams.c.sid == SID)
_MAX = bindparam("p_max", type_=sa.Text)
_ADVANCE = stream_update().values(
    scan_cursor=bindparam("p_cursor", type_=sa.Text),
    scan_pages=streams.c.scan_pages + 1,
    scan_max_modified=case(
        (or_(streams.c.scan_max_modified.is_(None), streams.c.scan_max_modified < _MAX), _MAX),
        else_=streams.c.scan_max_modified,
    ),
)
_COUNT_REJECTED = select(func.count()).select_from(rejected).where(rejected.c.sid == SID)
# Rejected items of the current scan that nothing identifies: its deletes are withheld.
_COUNT_UNIDENTIFIED = (
    select(func.count())
    .select_from(rejected)
    .where(rejected.c.sid == SID, rejected.c.scan == CURRENT_SCAN, rejected.c.record_id.is_(None))
)
# A stored row whose record holds ``"remote_id":<value>``: the substring narrows the rows,
# the caller checks each one's decoded record. SQLite's LIKE does not read BLOBs (instr
# does); PostgreSQL's bytea has LIKE.
_PATTERN = bindparam("p_pattern", type_=sa.LargeBinary)
_SELECT_BY_REMOTE = {
    "sqlite": select(records.c.id, records.c.record).where(
        records.c.sid == SID, func.instr(records.c.record, _PATTERN) > 0
    ),
    "postgresql": select(records.c.id, records.c.record).where(
        records.c.sid == SID, records.c.record.op("LIKE")(_PATTERN)
    ),
}


def _select_rows(count: int) -> sa.Select[Any]:
    return select(records.c.id, records.c.modified_at, records.c.hash, records.c.record).where(
        records.c.sid == SID, records.c.id.in_(id_params(count))
    )


def _mark_seen(count: int) -> sa.Update:
    return (
        update(seen)
        .where(seen.c.sid == SID, seen.c.id.in_(id_params(count)))
        .values(scan=bindparam("p_scan", type_=sa.Integer))
    )


def _select_rejected(count: int) -> sa.Select[Any]:
    return select(rejected.c.fingerprint, rejected.c.record_id).where(
        rejected.c.sid == SID, rejected.c.fingerprint.in_(id_params(count))
    )


def _remote_pattern(dialect: str, remote_id: str) -> bytes:
    needle = b'"remote_id":' + orjson.dumps(remote_id)  # orjson writes compact JSON
    if dialect == "sqlite":
        return needle
    # LIKE, without an ESCAPE clause: what LIKE treats specially (PostgreSQL's default
    # escape, backslash, too) matches any one character instead.
    for special in (b"\\", b"%"):
        needle = needle.replace(special, b"_")
    return b"%" + needle + b"%"


class Snapshots(LeaseFencing):
    """The stored rows of each stream, and the contents it dead-lettered."""

    def _upsert(self, table: sa.Table, columns: tuple[str, ...]) -> Callable[[int], sa.Insert]:
        """A builder of ``count``-row upserts into ``table`` (the dialect's ON CONFLICT)."""
        keys = list(table.primary_key.columns)
        changed = [c for c in columns if c not in {k.name for k in keys}]
        insert = self.backend.insert

        def build(count: int) -> sa.Insert:
            stmt = insert(table).values(row_params(table, columns, count))
            return stmt.on_conflict_do_update(
                index_elements=keys, set_={c: stmt.excluded[c] for c in changed}
            )

        return build

    @functools.cached_property
    def _upsert_records(self) -> Callable[[int], sa.Insert]:
        return self._upsert(records, RECORD_COLUMNS)

    @functools.cached_property
    def _upsert_seen(self) -> Callable[[int], sa.Insert]:
        return self._upsert(seen, SEEN_COLUMNS)

    @functools.cached_property
    def _upsert_rejected(self) -> Callable[[int], sa.Insert]:
        insert = self.backend.insert

        def build(count: int) -> sa.Insert:
            # Seen again: a newer scan, and the record it stands for if now known; the
            # first sighting and its reason stay.
            stmt = insert(rejected).values(row_params(rejected, REJECTED_COLUMNS, count))
            return stmt.on_conflict_do_update(
                index_elements=[rejected.c.sid, rejected.c.fingerprint],
                set_={
                    "scan": stmt.excluded.scan,
                    "record_id": func.coalesce(stmt.excluded.record_id, rejected.c.record_id),
                },
            )

        return build

    def load_rows(self, key: StreamKey, ids: Sequence[str]) -> dict[str, SnapshotRow]:
        """Stored rows for these ids (absent ids are simply missing from the result)."""
        rows: dict[str, SnapshotRow] = {}
        with self._tx("load rows", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                found = tx.run_ids(_select_rows, chunk, p_sid=sid)
                for row in found.fetchall():
                    rows[row[0]] = LoadedRow(*row)
        return rows

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
        rejected: Sequence[RejectWrite] = (),
    ) -> StreamState:
        """Write a page's rows, its messages to publish (dead letters included), the
        contents it rejected, mark its ids seen by this scan and move the cursor: one
        transaction."""
        with self._tx("commit page") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            write_outbox(tx, sid, outbox)
            scan = tx.one(_SELECT_SCAN, p_sid=sid)[0]
            if rejected:
                unique = {r.fingerprint: r for r in rejected}.values()
                rows = [(sid, r.fingerprint, r.first_seen, r.reason, r.record_id, scan)
                        for r in unique]  # fmt: skip
                for start in range(0, len(rows), CHUNK):
                    tx.values(self._upsert_rejected, rows[start : start + CHUNK])
            rest: Sequence[str] = seen_ids
            if writes:
                dumps = orjson.dumps
                for start in range(0, len(writes), CHUNK):
                    chunk = writes[start : start + CHUNK]
                    rows = [(sid, w.id, w.modified_at, w.content_hash, dumps(w.record))
                            for w in chunk]  # fmt: skip
                    tx.values(self._upsert_records, rows)
                    tx.values(self._upsert_seen, [(sid, w.id, scan) for w in chunk])
                written = {w.id for w in writes}
                rest = [rid for rid in seen_ids if rid not in written]
            for start in range(0, len(rest), CHUNK):
                chunk = rest[start : start + CHUNK]
                tx.run_ids(_mark_seen, chunk, p_scan=scan, p_sid=sid)
            tx.run(_ADVANCE, p_cursor=next_cursor, p_max=max_modified, p_sid=sid)
            return self._state(tx, key)

    def known_rejections(
        self, key: StreamKey, fingerprints: Sequence[str]
    ) -> dict[str, str | None]:
        """Fingerprint -> record id (or None) of the contents already dead-lettered."""
        known: dict[str, str | None] = {}
        if not fingerprints:
            return known
        with self._tx("read rejected items", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(fingerprints), CHUNK):
                chunk = fingerprints[start : start + CHUNK]
                found = tx.run_ids(_select_rejected, chunk, p_sid=sid).fetchall()
                known.update(found)
        return known

    def find_remote_ids(self, key: StreamKey, remote_ids: Sequence[str]) -> dict[str, str]:
        """remote_id -> id of the stored rows whose record has that ``remote_id``.

        Reads every row of the stream (no index on it): for rejected items only, whose
        answer is remembered with them.
        """
        found: dict[str, str] = {}
        with self._tx("find rows by remote_id", read=True) as tx:
            sid = self._sid(tx, key)
            statement = _SELECT_BY_REMOTE[self.dialect]
            for remote_id in dict.fromkeys(remote_ids):
                pattern = _remote_pattern(self.dialect, remote_id)
                for rid, blob in tx.run(statement, p_pattern=pattern, p_sid=sid).fetchall():
                    record = orjson.loads(bytes(blob))
                    if isinstance(record, dict) and record.get("remote_id") == remote_id:
                        found[remote_id] = rid
                        break
        return found

    def count_unidentified(self, key: StreamKey) -> int:
        """Items the current scan rejected that no stored row is known for."""
        with self._tx("count unidentified rejected items", read=True) as tx:
            return int(tx.one(_COUNT_UNIDENTIFIED, p_sid=self._sid(tx, key))[0])

    def rejected_count(self, key: StreamKey) -> int:
        """Distinct bad contents the stream dead-lettered and still meets (for status)."""
        with self._tx("count rejected items", read=True) as tx:
            return int(tx.one(_COUNT_REJECTED, p_sid=self._sid(tx, key))[0])
