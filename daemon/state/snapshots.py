"""Snapshots: the last published version of each record, written a page at a time.

``commit_page`` is the pass's one transaction per page (or per run of pages that changed
nothing): the changed rows, its messages (the outbox, see ``scans``), the contents it
rejected, one row of the ids it saw (``seen``) and the cursor. The rest reads: stored
rows by id, by ``remote_id``, and the contents already dead-lettered (``rejected``).
Rows are packed by ``codec`` (zstd blobs with a dictionary per stream, 16-byte hashes).
On PostgreSQL a page's commit is one statement (``page_sql``); on SQLite, its statements.
"""

from __future__ import annotations

import functools
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import bindparam, func, select

from daemon.errors import StateStoreError, StoredRowsFound
from daemon.models import Message, RejectWrite, RowWrite, SnapshotRow, StreamKey, StreamState
from daemon.state.codec import pack_hash, pack_messages
from daemon.state.leases import LeaseFencing
from daemon.state.page_sql import ADVANCE, UPSERT_RECORDS_PG, Rows, page_commit
from daemon.state.rows import LoadedRow
from daemon.state.scans import CURRENT_SCAN, write_outbox
from daemon.state.schema import dictionaries, records, rejected
from daemon.state.seen import seen_page_values, write_seen_page
from daemon.state.sql import (
    CHUNK,
    SID,
    Tx,
    id_params,
    row_params,
    select_rows,
)

RECORD_COLUMNS = ("sid", "id", "modified_at", "hash", "record", "remote_id")
REJECTED_COLUMNS = ("sid", "fingerprint", "first_seen", "reason", "record_id", "scan")
_UPSERT_RECORDS_PG = sa.text(UPSERT_RECORDS_PG)  # rows written outside a page's commit
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


def _by_remote(count: int) -> sa.Select[Any]:
    return select(records.c.remote_id, records.c.id).where(
        records.c.sid == SID, records.c.remote_id.in_(id_params(count))
    )


@dataclass(frozen=True, slots=True)
class _PageCommit:
    """What one ``commit_page`` writes (stream ``sid``), for either database's way."""

    key: StreamKey
    sid: int
    writes: Sequence[RowWrite]
    seen_ids: Sequence[str]
    cursor: str | None
    max_modified: str | None
    pages: int
    outbox: Sequence[Message]
    new_rows: bool


def _all_new(written: int, rows: int) -> None:
    """StoredRowsFound unless every one of a page's ``rows`` was inserted as new."""
    if written != rows:
        raise StoredRowsFound(f"{rows - written} of the page's {rows} rows were stored")


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
        with self._tx("commit page") as tx:
            sid = self._sid(tx, key)
            if writes:
                self._prepare_codec(tx, sid)
            commit = self._commit_pg if self.dialect == "postgresql" else self._commit_statements
            page = _PageCommit(
                key, sid, writes, seen_ids, next_cursor, max_modified, pages, outbox, new_rows
            )
            state, trained = commit(tx, page)
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

    def _commit_pg(
        self, tx: Tx, page: _PageCommit
    ) -> tuple[StreamState, tuple[int, bytes] | None]:
        """PostgreSQL: the page's commit as one statement (``page_sql.page_commit``); the
        lease's renewal and the rows written are checked before the transaction commits.
        Returns the new state, and a dictionary trained on the way (``_train``)."""
        sid, writes, seen_ids, outbox = page.sid, page.writes, page.seen_ids, page.outbox
        params: dict[str, Any] = {
            "p_sid": sid, "p_cursor": page.cursor, "p_max": page.max_modified,
            "p_pages": page.pages,
        }  # fmt: skip
        if outbox:
            params["p_messages"] = pack_messages(outbox)
        rows: Rows = "none"
        if writes:
            rows = "new" if page.new_rows else "upsert"
            params["p_rows"] = self._rows_json(sid, writes)
        trained = self._train(tx, sid, writes)
        if seen_ids:
            params["p_uuids"], params["p_others"] = seen_page_values(self.dialect, seen_ids)
        renewal = self._renewal(sid, page.key)  # dated as late as it can be
        if renewal is not None:
            params.update(renewal.params)
        statement = page_commit(
            renew=renewal is not None, outbox=bool(outbox), rows=rows, seen=bool(seen_ids)
        )
        answer = tx.one(statement, **params)
        if renewal is not None:
            renewal.confirm(0 if answer is None else answer[0])
        if answer is None:  # no lease held, and no stream row: the store changed under us
            raise StateStoreError(
                f"state store {self.backend.where}: {page.key} has no stream row"
            )
        _, written, *state = answer
        if page.new_rows:
            _all_new(written, len(writes))
        return StreamState(page.key, *state, records=0), trained

    def _commit_statements(
        self, tx: Tx, page: _PageCommit
    ) -> tuple[StreamState, tuple[int, bytes] | None]:
        """SQLite: the page's commit as its statements, in the caller's transaction."""
        sid, writes = page.sid, page.writes
        fenced = self._fence_sent(tx, sid, page.key)
        write_outbox(tx, sid, page.outbox)
        written = self._write_rows(tx, sid, writes, new_only=page.new_rows) if writes else 0
        trained = self._train(tx, sid, writes)
        write_seen_page(tx, self.dialect, sid, page.pages, page.seen_ids)
        tx.run(
            ADVANCE, p_cursor=page.cursor, p_max=page.max_modified, p_pages=page.pages, p_sid=sid
        )
        state = tx.cursor.fetchall()[0]
        fenced()
        if page.new_rows:
            _all_new(written, len(writes))
        return StreamState(page.key, *state, records=0), trained

    def _rows_json(self, sid: int, writes: Sequence[RowWrite]) -> str:
        """PostgreSQL: the rows as ``page_sql``'s one JSON parameter."""
        dumps, encode = orjson.dumps, self.codec.encode
        return dumps([
            [w.id, w.modified_at, pack_hash(w.content_hash).hex(),
             b2a_base64(encode(sid, dumps(w.record)), newline=False).decode(),
             _remote_id(w.record)]
            for w in writes
        ]).decode()  # fmt: skip

    def _write_rows(
        self, tx: Tx, sid: int, writes: Sequence[RowWrite], *, new_only: bool = False
    ) -> int:
        """Upsert the rows, or (``new_only``) insert them, leaving any stored row alone;
        returns how many were written (``new_only``: inserted)."""
        written = 0
        if self.dialect == "postgresql":  # a page's commit goes through ``_commit_pg``
            assert not new_only
            found = tx.run(_UPSERT_RECORDS_PG, p_sid=sid, p_rows=self._rows_json(sid, writes))
            return int(found.rowcount)
        dumps, encode = orjson.dumps, self.codec.encode
        statement = self._insert_new_records if new_only else self._upsert_records
        for start in range(0, len(writes), CHUNK):
            rows = [(sid, w.id, w.modified_at, pack_hash(w.content_hash),
                     encode(sid, dumps(w.record)), _remote_id(w.record))
                    for w in writes[start : start + CHUNK]]  # fmt: skip
            tx.values(statement, rows)
            written += tx.cursor.rowcount
        return written

    def _train(
        self, tx: Tx, sid: int, writes: Sequence[RowWrite]
    ) -> tuple[int, bytes] | None:
        """Once rows were encoded (collecting samples): a dictionary trained on the
        stream's samples once there are enough, stored in ``tx``; (number, data), to take
        up once committed."""
        if not writes:
            return None
        data = self.codec.train(sid)
        if data is None:
            return None
        number = int(tx.one(_INSERT_DICTIONARY, p_sid=sid, p_data=data)[0])
        # A blob names its dictionary in 2 bytes: past that, the stream stays on plain zstd.
        return (number, data) if number < 1 << 16 else None

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
