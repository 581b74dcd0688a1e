"""Snapshots: the last published version of each record, written a page at a time.

``commit_page`` is the pass's one transaction per page (or per run of pages that changed
nothing): the changed rows, its messages (the outbox, see ``scans``), the contents it
rejected, one row of the ids it saw (``seen``) and the cursor. The rest reads: stored
rows by id, by ``remote_id``, and the contents already dead-lettered (``rejected``).
Rows are packed by ``codec`` (zstd blobs with a dictionary per stream, 16-byte hashes).
"""

from __future__ import annotations

import functools
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import bindparam, case, func, or_, select

from daemon.errors import StoredRowsFound
from daemon.models import Message, RejectWrite, RowWrite, SnapshotRow, StreamKey, StreamState
from daemon.state.codec import pack_hash
from daemon.state.leases import LeaseFencing
from daemon.state.rows import LoadedRow
from daemon.state.scans import CURRENT_SCAN, write_outbox
from daemon.state.schema import STATE_COLUMNS, dictionaries, records, rejected, streams
from daemon.state.seen import write_seen_page
from daemon.state.sql import (
    CHUNK,
    SID,
    Tx,
    id_params,
    row_params,
    select_rows,
    stream_update,
)

RECORD_COLUMNS = ("sid", "id", "modified_at", "hash", "record", "remote_id")
REJECTED_COLUMNS = ("sid", "fingerprint", "first_seen", "reason", "record_id", "scan")
_MAX = bindparam("p_max", type_=sa.Text)
# The stream's state after the move comes back with it: its scan number and page count
# name the page's rows, and the pass gets its new state, with no SELECT before or after.
_ADVANCE = (
    stream_update()
    .values(
        scan_cursor=bindparam("p_cursor", type_=sa.Text),
        scan_pages=streams.c.scan_pages + bindparam("p_pages", type_=sa.Integer),
        scan_max_modified=case(
            (or_(streams.c.scan_max_modified.is_(None), streams.c.scan_max_modified < _MAX), _MAX),
            else_=streams.c.scan_max_modified,
        ),
    )
    .returning(*STATE_COLUMNS)
)
_COUNT_REJECTED = select(func.count()).select_from(rejected).where(rejected.c.sid == SID)
# Rejected items of the current scan that nothing identifies: its deletes are withheld.
_COUNT_UNIDENTIFIED = (
    select(func.count())
    .select_from(rejected)
    .where(rejected.c.sid == SID, rejected.c.scan == CURRENT_SCAN, rejected.c.record_id.is_(None))
)
_LATEST_DICTIONARY = (
    select(dictionaries.c.num, dictionaries.c.data)
    .where(dictionaries.c.sid == SID)
    .order_by(dictionaries.c.num.desc())
    .limit(1)
)


_INSERT_DICTIONARY = (
    sa.insert(dictionaries)
    .values(sid=SID, data=bindparam("p_data", type_=sa.LargeBinary))
    .returning(dictionaries.c.num)
)


# PostgreSQL: the page's rows as one JSON array of [id, modified_at, hash (hex), blob
# (base64), remote_id]. A 100-row VALUES is 600 parameters and a statement too long for
# psycopg's query cache (2.6 ms of CPU per page, more than the server took to run it); a
# bytea[]/text[] per column is dumped element by element in Python (0.8 ms); orjson
# dumps the whole page at once (0.2 ms).
_INSERT_RECORDS_PG = (
    "INSERT INTO changefeed_records (sid, id, modified_at, hash, record, remote_id)"
    " SELECT :p_sid, k->>0, k->>1, decode(k->>2, 'hex'), decode(k->>3, 'base64'), k->>4"
    " FROM json_array_elements(CAST(:p_rows AS json)) AS k ON CONFLICT (sid, id) DO "
)
_UPSERT_RECORDS_PG = sa.text(
    _INSERT_RECORDS_PG + "UPDATE SET modified_at = excluded.modified_at,"
    " hash = excluded.hash, record = excluded.record, remote_id = excluded.remote_id"
)
# A page diffed without loading its rows (``commit_page(new_rows=True)``): a row already
# there is left alone, and counted (rowcount) so the commit can refuse.
_INSERT_NEW_RECORDS_PG = sa.text(_INSERT_RECORDS_PG + "NOTHING")


def _by_remote(count: int) -> sa.Select[Any]:
    return select(records.c.remote_id, records.c.id).where(
        records.c.sid == SID, records.c.remote_id.in_(id_params(count))
    )


def _nothing_to_check() -> None:
    return None


def _remote_id(record: Any) -> str | None:
    value = record.get("remote_id") if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def _select_rejected(count: int) -> sa.Select[Any]:
    return select(rejected.c.fingerprint, rejected.c.record_id).where(
        rejected.c.sid == SID, rejected.c.fingerprint.in_(id_params(count))
    )


class Snapshots(LeaseFencing):
    """The stored rows of each stream, and the contents it dead-lettered."""

    def _upsert(
        self, table: sa.Table, columns: tuple[str, ...], *, update: bool = True
    ) -> Callable[[int], sa.Insert]:
        """A builder of ``count``-row upserts into ``table`` (the dialect's ON CONFLICT);
        ``update=False``: a row already there is left alone (ON CONFLICT DO NOTHING)."""
        keys = list(table.primary_key.columns)
        changed = [c for c in columns if c not in {k.name for k in keys}]
        insert = self.backend.insert

        def build(count: int) -> sa.Insert:
            stmt = insert(table).values(row_params(table, columns, count))
            if not update:
                return stmt.on_conflict_do_nothing(index_elements=keys)
            return stmt.on_conflict_do_update(
                index_elements=keys, set_={c: stmt.excluded[c] for c in changed}
            )

        return build

    @functools.cached_property
    def _upsert_records(self) -> Callable[[int], sa.Insert]:
        return self._upsert(records, RECORD_COLUMNS)

    @functools.cached_property
    def _insert_new_records(self) -> Callable[[int], sa.Insert]:
        return self._upsert(records, RECORD_COLUMNS, update=False)

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
        codec = self.codec
        with self._tx("load rows", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                found = select_rows(tx, self.dialect, sid, chunk)
                self._load_dictionaries(tx, [row[3] for row in found])
                for rid, modified_at, digest, blob in found:
                    rows[rid] = LoadedRow(rid, modified_at, digest, blob, codec)
        return rows

    def _prepare_codec(self, tx: Tx, sid: int) -> None:
        """First write of stream ``sid`` in this process: take up its dictionary, or start
        collecting samples for one."""
        if sid in self._codec_ready:
            return
        row = tx.one(_LATEST_DICTIONARY, p_sid=sid)
        if row is not None:
            self.codec.add(int(row[0]), bytes(row[1]), sid)
        else:
            self.codec.want_samples(sid)
        self._codec_ready.add(sid)

    def commit_page(
        self,
        key: StreamKey,
        writes: Sequence[RowWrite],
        seen_ids: Sequence[str],
        next_cursor: str | None,
        max_modified: str | None,
        outbox: Sequence[Message] = (),
        rejected: Sequence[RejectWrite] = (),
        pages: int = 1,
        *,
        new_rows: bool = False,
    ) -> StreamState:
        """Write a page's rows, its messages to publish (dead letters included), the
        contents it rejected, the ids it saw (a full scan) and move the cursor: one
        transaction. ``pages``: how many pages this commit covers (a run of pages that
        changed nothing is committed at once, ``seen_ids`` holding all their ids).

        ``new_rows``: the page was diffed without loading its rows, as if none were
        stored (an initial sync's pages). Should one be stored after all, nothing is
        committed and StoredRowsFound is raised: the caller loads the rows and diffs the
        page again."""
        trained: tuple[int, bytes] | None = None
        inserted: Callable[[], None] = _nothing_to_check
        with self._tx("commit page") as tx:
            sid = self._sid(tx, key)
            # PostgreSQL: one round trip for the lot (the renewal's answer is checked
            # before anything commits), not one per statement.
            with tx.pipeline(self.dialect):
                fenced = self._fence_sent(tx, sid, key)
                write_outbox(tx, sid, outbox)
                if writes:
                    trained, inserted = self._write_rows(tx, sid, writes, new_only=new_rows)
                write_seen_page(tx, self.dialect, sid, pages, seen_ids)
                tx.run(_ADVANCE, p_cursor=next_cursor, p_max=max_modified, p_pages=pages, p_sid=sid)
            fenced()
            inserted()
            state = StreamState(key, *tx.cursor.fetchall()[0], records=0)
            if rejected:
                unique = {r.fingerprint: r for r in rejected}.values()
                rows = [(sid, r.fingerprint, r.first_seen, r.reason, r.record_id,
                         state.scan_number) for r in unique]  # fmt: skip
                for start in range(0, len(rows), CHUNK):
                    tx.values(self._upsert_rejected, rows[start : start + CHUNK])
        if trained is not None:  # only once committed: blobs name it from now on
            self.codec.add(*trained, sid)
        if seen_ids:
            self._missing.pop(sid, None)  # the unseen ids kept for deletes are fewer now
        return state

    def _write_rows(
        self, tx: Tx, sid: int, writes: Sequence[RowWrite], *, new_only: bool = False
    ) -> tuple[tuple[int, bytes] | None, Callable[[], None]]:
        """Upsert the rows (``new_only``: insert them, leaving any stored row alone).
        Returns a newly trained dictionary (number, data) if there is one, and the check
        to run once the statements are answered: with ``new_only``, StoredRowsFound
        unless every row was inserted."""
        self._prepare_codec(tx, sid)
        dumps, encode = orjson.dumps, self.codec.encode
        counted: list[Any] = []  # PostgreSQL: the cursor whose rowcount is rows inserted
        counted_rows = 0  # SQLite: rows inserted, counted as the chunks run
        if self.dialect == "postgresql":
            rows_json = dumps([
                [w.id, w.modified_at, pack_hash(w.content_hash).hex(),
                 b2a_base64(encode(sid, dumps(w.record)), newline=False).decode(),
                 _remote_id(w.record)]
                for w in writes
            ]).decode()  # fmt: skip
            if new_only:  # its own cursor: the rowcount is known once the pipeline ends
                counted.append(tx.fresh().run(_INSERT_NEW_RECORDS_PG, p_sid=sid, p_rows=rows_json))
            else:
                tx.run(_UPSERT_RECORDS_PG, p_sid=sid, p_rows=rows_json)
        else:
            statement = self._insert_new_records if new_only else self._upsert_records
            for start in range(0, len(writes), CHUNK):
                rows = [(sid, w.id, w.modified_at, pack_hash(w.content_hash),
                         encode(sid, dumps(w.record)), _remote_id(w.record))
                        for w in writes[start : start + CHUNK]]  # fmt: skip
                tx.values(statement, rows)
                counted_rows += tx.cursor.rowcount

        def check() -> None:
            if not new_only:
                return
            done = sum(c.rowcount for c in counted) if counted else counted_rows
            for cursor in counted:  # (unchecked, as the fence's, it goes with the object)
                cursor.close()
            if done != len(writes):
                raise StoredRowsFound(
                    f"{len(writes) - done} of the page's {len(writes)} rows were stored"
                )

        data = self.codec.train(sid)
        if data is None:
            return None, check
        number = int(tx.one(_INSERT_DICTIONARY, p_sid=sid, p_data=data)[0])
        # A blob names its dictionary in 2 bytes: past that, the stream stays on plain zstd.
        return ((number, data) if number < 1 << 16 else None), check

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
        """remote_id -> id of the stored rows whose record has that ``remote_id``."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(remote_ids))
        with self._tx("find rows by remote_id", read=True) as tx:
            sid = self._sid(tx, key)
            for start in range(0, len(unique), CHUNK):
                chunk = unique[start : start + CHUNK]
                for remote_id, rid in tx.run_ids(_by_remote, chunk, p_sid=sid).fetchall():
                    found.setdefault(remote_id, rid)
        return found

    def count_unidentified(self, key: StreamKey) -> int:
        """Items the current scan rejected that no stored row is known for."""
        with self._tx("count unidentified rejected items", read=True) as tx:
            return int(tx.one(_COUNT_UNIDENTIFIED, p_sid=self._sid(tx, key))[0])

    def rejected_count(self, key: StreamKey) -> int:
        """Distinct bad contents the stream dead-lettered and still meets (for status)."""
        with self._tx("count rejected items", read=True) as tx:
            return int(tx.one(_COUNT_REJECTED, p_sid=self._sid(tx, key))[0])
