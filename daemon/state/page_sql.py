"""A page's commit as SQL: the cursor's move, the rows' upsert, and on PostgreSQL the
whole commit as one statement.

``commit_page`` writes up to five things: the lease's renewal (fencing), the outbox, the
page's rows, its seen ids and the cursor. On SQLite they are statements in one
transaction. On PostgreSQL they are one statement of data-modifying CTEs (``page_commit``)
whose answer carries the renewal's and the rows' counts (checked before COMMIT) and the
stream's new state. Sent as a pipeline of five statements they cost ~1 ms of psycopg's
CPU per page and a parse, plan and execute each on the server; as one, a fifth of that.

The sub-statements of one statement all see the snapshot taken before it: the seen ids'
row is numbered from the stream's page count before the cursor moves, as it must be. The
lease's row is locked before the stream's, as ``reset`` locks them (see ``page_commit``).
"""

from __future__ import annotations

import functools
from typing import Literal

import sqlalchemy as sa
from sqlalchemy import bindparam, case, func, or_, select

from daemon.state.leases import RENEW
from daemon.state.scans import CLEAR_OUTBOX, PUT_OUTBOX
from daemon.state.schema import STATE_COLUMNS, streams
from daemon.state.seen import INSERT_PAGE
from daemon.state.sql import stream_update

_MAX = bindparam("p_max", type_=sa.Text)
# The stream's state after the move comes back with it: its scan number and page count
# name the page's rows, and the pass gets its new state, with no SELECT before or after.
ADVANCE = (
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

# PostgreSQL: the page's rows as one JSON array of [id, modified_at, hash (hex), blob
# (base64), remote_id]. A 100-row VALUES is 600 parameters and a statement too long for
# psycopg's query cache (2.6 ms of CPU per page, more than the server took to run it); a
# bytea[]/text[] per column is dumped element by element in Python (0.8 ms); orjson
# dumps the whole page at once (0.2 ms). As jsonb, parsed once: the server then takes
# ~1.1 ms for 100 rows, against ~1.5 ms as json (each ``->>`` parses the element again).
_INSERT_RECORDS_PG = (
    "INSERT INTO changefeed_records (sid, id, modified_at, hash, record, remote_id)"
    " SELECT :p_sid, k->>0, k->>1, decode(k->>2, 'hex'), decode(k->>3, 'base64'), k->>4"
    " FROM jsonb_array_elements(CAST(:p_rows AS jsonb)) AS k ON CONFLICT (sid, id) DO "
)
UPSERT_RECORDS_PG = (
    _INSERT_RECORDS_PG + "UPDATE SET modified_at = excluded.modified_at,"
    " hash = excluded.hash, record = excluded.record, remote_id = excluded.remote_id"
)
# A page diffed without loading its rows (``commit_page(new_rows=True)``): a row already
# there is left alone, and not counted among the rows written, so the commit can refuse.
INSERT_NEW_RECORDS_PG = _INSERT_RECORDS_PG + "NOTHING"

Rows = Literal["none", "upsert", "new"]


@functools.lru_cache(maxsize=32)
def page_commit(*, renew: bool, outbox: bool, rows: Rows, seen: bool) -> sa.Select[tuple]:
    """PostgreSQL: a page's commit as one statement. Its one row: (leases renewed, rows
    written, *STATE_COLUMNS after the move); no row when the lease was not renewed.
    ``renew``: the stream's lease is held here (``RENEW``'s parameters); ``outbox``:
    messages to keep (``p_messages``), else the outbox is emptied; ``rows``: the page's
    rows (``p_rows``), upserted or inserted as new; ``seen``: the ids it saw
    (``p_uuids``, ``p_others``)."""
    ctes = [(PUT_OUTBOX.columns() if outbox else CLEAR_OUTBOX).cte("outbox_put")]
    renewed: sa.ColumnElement[int] = sa.literal_column("1")
    advance_sql = ADVANCE
    if renew:
        renewal = RENEW.returning(sa.literal_column("1")).cte("renewal")
        renewed = select(func.count()).select_from(renewal).scalar_subquery()
        # The lease's row is locked before the stream's (the move runs only once the
        # renewal has), as in every write of a pass and in ``reset``, which takes the
        # lease first and the stream's row last: the other order deadlocks with it.
        # A lease not renewed moves nothing, and the statement answers no row.
        advance_sql = ADVANCE.where(sa.exists(select(sa.literal_column("1")).select_from(renewal)))
    written: sa.ColumnElement[int] = sa.literal_column("0")
    if rows != "none":
        sql = {"upsert": UPSERT_RECORDS_PG, "new": INSERT_NEW_RECORDS_PG}[rows]
        inserted = sa.text(sql + " RETURNING 1").columns().cte("rows_written")
        written = select(func.count()).select_from(inserted).scalar_subquery()
    if seen:
        ctes.append(INSERT_PAGE.cte("seen_ids"))
    advance = advance_sql.cte("advance")
    return select(renewed, written, *advance.c).add_cte(*ctes)
