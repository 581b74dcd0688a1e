"""What a full scan saw: one row of ids per committed page, and the anti-join for deletes.

Until 0005 every full scan marked each record it saw (one row written per record per
scan: 1.02 rows and 205 WAL bytes per record on PostgreSQL for a scan that changed
nothing). Now a page's ids go into one ``changefeed_scan_ids`` row, and the rows a
complete full scan did not see are the stream's records in none of the scan's rows: one
anti-join (PostgreSQL: the packed UUIDs and ``json_array_elements_text``; SQLite:
``json_each`` behind ``NOT IN``, which SQLite evaluates once into a temporary index).
The scan's rows are dropped when it starts, ends or is abandoned.

``mark_seen`` is the way in for writers other than the walk (targeted reads between
pages): ids it marks count as seen by the scan in progress.

The delete phase runs the anti-join once per scan, not once per batch: at 1,000,000
records (500,000 unseen, PostgreSQL 15) it takes 1-2.5 s, and the phase then loads each
batch of 100 by id. Counting the unseen rows for the delete guard keeps up to 10,000 of
their ids, so a scan with few deletes runs it once in all. The ids are remembered for
the scan and the lease token they were computed under; any write of seen ids or rows
(a page's commit, ``mark_seen``, a targeted read) or a lease taken anew computes them
again.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import bindparam, delete, func, insert, select

from daemon.models import StoredRow, StreamKey
from daemon.state.codec import pack_ids
from daemon.state.leases import LeaseFencing, stream_lease_name
from daemon.state.rows import LoadedRow
from daemon.state.schema import scan_ids, streams
from daemon.state.sql import SID, Tx, select_rows

_SCAN = bindparam("p_scan", type_=sa.Integer)
_INSERT = insert(scan_ids).values(
    sid=SID,
    scan=_SCAN,
    part=bindparam("p_part", type_=sa.Integer),
    uuids=bindparam("p_uuids", type_=sa.LargeBinary),
    ids=bindparam("p_others", type_=sa.Text),
)
# A page's row, numbered from the stream's row as it is before the cursor moves (the
# same transaction moves it by ``p_pages``): no round trip to read them first.
INSERT_PAGE = insert(scan_ids).from_select(
    ["sid", "scan", "part", "uuids", "ids"],
    select(
        streams.c.sid,
        streams.c.scan_number,
        streams.c.scan_pages + bindparam("p_pages", type_=sa.Integer),
        bindparam("p_uuids", type_=sa.LargeBinary),
        bindparam("p_others", type_=sa.Text),
    ).where(streams.c.sid == SID),
)
_FIRST_EXTRA = select(func.coalesce(func.min(scan_ids.c.part), 0)).where(
    scan_ids.c.sid == SID, scan_ids.c.scan == _SCAN, scan_ids.c.part < 0
)
_SELECT_SCAN = select(streams.c.scan_number).where(streams.c.sid == SID)
DROP_SCAN_IDS = delete(scan_ids).where(scan_ids.c.sid == SID)

_CURRENT = "(SELECT scan_number FROM changefeed_streams WHERE sid = :p_sid)"
# Every id the current scan saw, as text.
_SEEN = {
    "postgresql": f"""
        SELECT encode(substring(s.uuids FROM g * 16 + 1 FOR 16), 'hex')::uuid::text AS id
        FROM changefeed_scan_ids s
        CROSS JOIN LATERAL generate_series(0, length(s.uuids) / 16 - 1) AS g
        WHERE s.sid = :p_sid AND s.scan = {_CURRENT} AND s.uuids IS NOT NULL
        UNION ALL
        SELECT j.id FROM changefeed_scan_ids s
        CROSS JOIN LATERAL json_array_elements_text(s.ids::json) AS j(id)
        WHERE s.sid = :p_sid AND s.scan = {_CURRENT} AND s.ids IS NOT NULL""",
    "sqlite": f"""
        SELECT j.value FROM changefeed_scan_ids s, json_each(s.ids) j
        WHERE s.sid = :p_sid AND s.scan = {_CURRENT} AND s.ids IS NOT NULL""",
}
# PostgreSQL plans NOT EXISTS as a hash anti-join (NOT IN would be a hashed subplan only
# while it fits work_mem); SQLite runs a NOT IN subquery once, into a temporary index.
_UNSEEN = {
    "postgresql": f"NOT EXISTS (SELECT 1 FROM ({_SEEN['postgresql']}) seen WHERE seen.id = r.id)",
    "sqlite": f"r.id NOT IN ({_SEEN['sqlite']})",
}


class _Statements(NamedTuple):
    count: sa.TextClause  # (unseen rows, all rows)
    ids: sa.TextClause  # the unseen rows' ids, in byte order
    first_ids: sa.TextClause  # the first :p_limit of them, each with the count of all
    total: sa.TextClause  # all rows


def _statements(dialect: str) -> _Statements:
    unseen = _UNSEEN[dialect]
    total = "SELECT count(*) FROM changefeed_records WHERE sid = :p_sid"
    count = sa.text(
        f"SELECT (SELECT count(*) FROM changefeed_records r WHERE r.sid = :p_sid AND {unseen}),"
        f" ({total})"
    )
    # PostgreSQL: sorted in byte order (COLLATE "C"), the anti-join is a hash join: 2.3 s
    # at 1,000,000 records with 500,000 unseen; in the database's collation it merged
    # after sorting the seen ids, 6.5 s.
    order = 'r.id COLLATE "C"' if dialect == "postgresql" else "r.id"
    where = f"FROM changefeed_records r WHERE r.sid = :p_sid AND {unseen} ORDER BY {order}"
    # The first ids and how many there are in all (counted before the LIMIT applies).
    first = sa.text(f"SELECT r.id, count(*) OVER () {where} LIMIT :p_limit").bindparams(
        bindparam("p_limit", type_=sa.Integer)
    )
    return _Statements(count, sa.text(f"SELECT r.id {where}"), first, sa.text(total))


STATEMENTS = {dialect: _statements(dialect) for dialect in _UNSEEN}
# Unseen rows whose ids ``count_missing`` keeps for the delete phase (~1 MB of ids).
FEW_MISSING = 10_000


def write_seen(tx: Tx, dialect: str, sid: int, scan: int, part: int, ids: Sequence[str]) -> None:
    """Record ``ids`` as seen by scan ``scan`` of stream ``sid``, as row ``part``."""
    if not ids:
        return
    uuids, others = pack_ids(ids, uuids=dialect == "postgresql")
    tx.run(_INSERT, p_sid=sid, p_scan=scan, p_part=part, p_uuids=uuids, p_others=others)


def seen_page_values(dialect: str, ids: Sequence[str]) -> tuple[bytes | None, str | None]:
    """``INSERT_PAGE``'s (``p_uuids``, ``p_others``) for ``ids``."""
    return pack_ids(ids, uuids=dialect == "postgresql")


def write_seen_page(tx: Tx, dialect: str, sid: int, pages: int, ids: Sequence[str]) -> None:
    """Record ``ids`` as seen by the current scan of stream ``sid``, as the row of its
    ``pages`` pages committed next (before ``ADVANCE`` counts them)."""
    if not ids:
        return
    uuids, others = seen_page_values(dialect, ids)
    tx.run(INSERT_PAGE, p_sid=sid, p_pages=pages, p_uuids=uuids, p_others=others)


def write_seen_extra(tx: Tx, dialect: str, sid: int, ids: Sequence[str]) -> None:
    """Record ``ids`` as seen by the stream's current scan, outside the page walk (in the
    caller's fenced transaction). Harmless when no scan is in progress: the next scan
    drops the rows of the one before it when it begins."""
    if not ids:
        return
    scan = tx.one(_SELECT_SCAN, p_sid=sid)[0]
    # Negative parts: the walk numbers its rows by page (1, 2, ...).
    part = int(tx.one(_FIRST_EXTRA, p_sid=sid, p_scan=scan)[0]) - 1
    write_seen(tx, dialect, sid, scan, part, list(dict.fromkeys(ids)))


class SeenIds(LeaseFencing):
    """What the current scan did not see (its deletes); ids seen outside the page walk."""

    def count_missing(self, key: StreamKey) -> tuple[int, int]:
        """(rows the current scan did not see, all rows) of the stream.

        Up to ``FEW_MISSING`` unseen rows, their ids are fetched here and kept for the
        delete phase (``missing_rows``): a scan that deletes few rows, the common case,
        runs the anti-join once (~40 ms at 20,000 records on PostgreSQL, 1-2.5 s at
        1,000,000), not twice. Past that, they are only counted (the guard may withhold
        them), and the delete phase runs it again to list them all."""
        statements = STATEMENTS[self.dialect]
        with self._tx("count missing rows", read=True) as tx:
            sid = self._sid(tx, key)
            tag = self._missing_tag(tx, sid)
            cached = self._missing.get(sid)
            total = int(tx.one(statements.total, p_sid=sid)[0])
            if cached is None or cached[0] != tag:
                found = tx.run(statements.first_ids, p_sid=sid, p_limit=FEW_MISSING).fetchall()
                missing = int(found[0][1]) if found else 0
                if missing > len(found):
                    return missing, total  # too many to keep: missing_rows lists them
                cached = self._missing[sid] = (tag, dict.fromkeys(row[0] for row in found))
            return len(cached[1]), total

    def missing_rows(self, key: StreamKey, limit: int) -> list[StoredRow]:
        """Up to ``limit`` rows the current scan did not see, in id order."""
        found: list[Any] = []
        with self._tx("list missing rows", read=True) as tx:
            sid = self._sid(tx, key)
            pending = self._missing_ids(tx, sid)
            ids = iter(list(pending))
            while len(found) < limit:
                batch = list(itertools.islice(ids, limit - len(found)))
                if not batch:
                    break
                rows = {row[0]: row for row in select_rows(tx, self.dialect, sid, batch)}
                for rid in batch:
                    if rid in rows:
                        found.append(rows[rid])
                    else:  # deleted meanwhile (e.g. by a reset)
                        del pending[rid]
            self._load_dictionaries(tx, [row[3] for row in found])
        loaded = [LoadedRow(*row, self.codec) for row in found]
        return [StoredRow(r.id, r.modified_at, r.content_hash, r.record) for r in loaded]

    def _missing_ids(self, tx: Tx, sid: int) -> dict[str, None]:
        """The ids the current scan did not see and not yet deleted, computed once."""
        tag = self._missing_tag(tx, sid)
        cached = self._missing.get(sid)
        if cached is None or cached[0] != tag:
            found = tx.run(STATEMENTS[self.dialect].ids, p_sid=sid).fetchall()
            cached = self._missing[sid] = (tag, dict.fromkeys(row[0] for row in found))
        return cached[1]

    def _missing_tag(self, tx: Tx, sid: int) -> tuple[int, str | None]:
        """What the kept ids were computed under: the scan, and the lease's token."""
        lease = self._leases.get(stream_lease_name(sid))
        return (tx.one(_SELECT_SCAN, p_sid=sid)[0], lease.token if lease else None)

    def mark_seen(self, key: StreamKey, ids: Sequence[str]) -> None:
        """Count ``ids`` as seen by the stream's current scan, so its delete phase does not
        take them for deleted: for a writer other than the walk (e.g. a record read by id
        between pages). Fenced like every write of a pass: the caller holds the lease."""
        if not ids:
            return
        with self._tx("mark ids seen") as tx:
            sid = self._sid(tx, key)
            self._fence(tx, sid, key)
            write_seen_extra(tx, self.dialect, sid, ids)
        self._missing.pop(sid, None)
